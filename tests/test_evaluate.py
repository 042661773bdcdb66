"""faceid evaluate: metrics on hand-computed score sets, pairs parsing, the enrol-K protocol, hostile folders.

The protocol tests use ``pixel_embed``, a deterministic embedding of real
pixels (a 16x16 grey thumbnail, centred, unit length; None for a flat image),
so they check the evaluation code without depending on the trained model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pam_faceid.model import evaluate as ev
from pam_faceid.cli import main as cli_main
from faces_support import OTHER_PERSON, PERSON, REPO


def pixel_embed(image: np.ndarray) -> np.ndarray | None:
    """A stand-in for the face model: same picture -> same vector, flat picture -> no face."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    norm = float(np.linalg.norm(small))
    return None if norm < 1.0 else small / norm


# ------------------------------------------------------------------------------------------ metrics


def test_separable_scores_are_perfect():
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.1, 0.2, 0.3, 0.0])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    folds = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    m = ev.pair_metrics(scores, labels, folds)
    assert m["accuracy"] == 1.0 and m["accuracy_std"] == 0.0
    assert m["auc"] == 1.0
    assert m["eer"] == 0.0
    assert m["tar_at_far_1e-2"] == 1.0 and m["tar_at_far_1e-3"] == 1.0
    # Fitted on fold 1 (genuine 0.7, 0.95; impostor 0.3, 0.0): midway between 0.3 and 0.7.
    assert m["fold_thresholds"][0] == pytest.approx(0.5)


def test_per_fold_accuracy_uses_threshold_from_other_folds():
    # Fold A: genuine .9 .52 .54, impostor .58 .1 .3.  Fold B: genuine .8 .7 .6, impostor .45 .5 .1.
    # Fit on B: separable, threshold (0.5+0.6)/2 = 0.55.  On A at 0.55: .9 right, .52 .54 rejected,
    #   .58 accepted, .1 .3 rejected -> 3/6.
    # Fit on A: sorted .1i .3i .52g .54g .58i .9g; cutting between .3 and .52 (0.41) gets 3g + 2i = 5/6,
    #   every other cut fewer.  On B at 0.41: all genuine accepted, .45 .5 accepted, .1 rejected -> 4/6.
    scores = np.array([.9, .52, .54, .58, .1, .3, .8, .7, .6, .45, .5, .1])
    labels = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0], bool)
    folds = np.array([0] * 6 + [1] * 6)
    m = ev.pair_metrics(scores, labels, folds)
    assert m["fold_thresholds"] == pytest.approx([0.55, 0.41])
    assert m["fold_accuracies"] == pytest.approx([3 / 6, 4 / 6])
    assert m["accuracy"] == pytest.approx(7 / 12)
    assert m["accuracy_std"] == pytest.approx(1 / 12)
    assert m["folds"] == 2 and not m["threshold_fitted_on_test"]


def test_best_threshold_ties_take_lowest_and_match_means_at_or_above():
    # .2i .3g .4i .8g: cutting at .25 or at .6 both get 3/4; the lower one wins.
    threshold, accuracy = ev.best_threshold(np.array([.2, .3, .4, .8]), np.array([0, 1, 0, 1], bool))
    assert threshold == pytest.approx(0.25) and accuracy == 0.75
    # All genuine: accept everything, threshold = the lowest score itself (>=).
    assert ev.best_threshold(np.array([.5, .7]), np.array([1, 1], bool)) == (0.5, 1.0)
    assert ev.accuracy_at(np.array([.5, .7]), np.array([1, 0], bool), 0.5) == 0.5


def test_auc_and_eer_by_hand():
    # genuine .9 .8 .3, impostor .7 .2 .1: genuine beats impostor in 3 + 3 + 2 of 9 pairs -> AUC 8/9.
    # At threshold .7: FAR 1/3 (.7 accepted), FRR 1/3 (.3 rejected) -> EER 1/3.
    scores = np.array([.9, .8, .3, .7, .2, .1])
    labels = np.array([1, 1, 1, 0, 0, 0], bool)
    m = ev.roc_metrics(scores, labels)
    assert m["auc"] == pytest.approx(8 / 9)
    assert m["eer"] == pytest.approx(1 / 3)


def test_eer_interpolates_between_roc_points():
    # genuine .9 .8 .3, impostor .7 .2. ROC: (0,2/3) then (1/2,2/3): FPR - FNR goes -1/3 -> +1/6, crossing
    # two thirds of the way along, at FPR = 1/3 (= FNR = 1 - 2/3).
    m = ev.roc_metrics(np.array([.9, .8, .3, .7, .2]), np.array([1, 1, 1, 0, 0], bool))
    assert m["eer"] == pytest.approx(1 / 3)


def test_tar_at_far_by_hand():
    # 100 impostors: one at 0.9, 99 below 0.5.  8 genuine.
    # FAR <= 1e-2 allows the one at 0.9: threshold just above 0.49 accepts genuine .95 .8 .7 .6 -> 4/8.
    # FAR <= 1e-3 allows none: threshold above 0.9 accepts only .95 -> 1/8.
    impostor = np.concatenate([[0.9], np.linspace(0.0, 0.49, 99)])
    genuine = np.array([.95, .8, .7, .6, .4, .3, .2, .1])
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(8, bool), np.zeros(100, bool)])
    m = ev.roc_metrics(scores, labels)
    assert m["tar_at_far_1e-2"] == pytest.approx(0.5)
    assert m["tar_at_far_1e-3"] == pytest.approx(0.125)


def test_one_class_gives_no_roc_metrics_and_one_fold_fits_on_itself():
    m = ev.roc_metrics(np.array([.5, .6]), np.array([1, 1], bool))
    assert m["auc"] is None and m["eer"] is None and m["tar_at_far_1e-2"] is None
    m = ev.pair_metrics(np.array([.9, .1, .8, .2]), np.array([1, 0, 1, 0], bool), np.zeros(4))
    assert m["accuracy"] == 1.0 and m["threshold_fitted_on_test"]


# ------------------------------------------------------------------------------------------ pairs files


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_parse_pairs_one_fold(tmp_path):
    p = ev.parse_pairs(write(tmp_path / "p.txt", "2\nAnn 1 2\nAnn 2 3\nAnn 1 Bob 1\nBob 2 Cy 4\n"))
    assert p.folds == 1
    assert [x.same for x in p.pairs] == [True, True, False, False]
    assert p.pairs[0] == ev.Pair("Ann", 1, "Ann", 2, 0, 2)
    assert p.pairs[3] == ev.Pair("Bob", 2, "Cy", 4, 0, 5)


def test_parse_pairs_three_folds_by_position(tmp_path):
    lines = ["3\t1"] + ["Ann 1 2", "Ann 1 Bob 1"] * 3 + [""]
    p = ev.parse_pairs(write(tmp_path / "p.txt", "\n".join(lines)))
    assert p.folds == 3
    assert [x.fold for x in p.pairs] == [0, 0, 1, 1, 2, 2]
    assert [x.line for x in p.pairs] == [2, 3, 4, 5, 6, 7]


def test_parse_pairs_without_header_is_one_fold(tmp_path):
    p = ev.parse_pairs(write(tmp_path / "p.txt", "Ann 1 2\nAnn 1 Bob 1\n"))
    assert p.folds == 1 and len(p.pairs) == 2


@pytest.mark.parametrize("text, line, words", [
    ("1 1\nAnn 1 2\nAnn one Bob 1\n", 3, "expected 'name i j'"),
    ("1 1\nAnn 1 2\nAnn 1 Bob\n", 3, "expected 'name i j'"),
    ("1 1\nAnn 0 2\nAnn 1 Bob 1\n", 2, "start at 1"),
    ("2 1\nAnn 1 2\nAnn 1 Bob 1\n", 1, "header promises 2 fold(s)"),
    ("1 2 3\nAnn 1 2\n", 1, "header must be"),
    ("\n\n", None, "empty"),
])
def test_parse_pairs_errors_name_the_line(tmp_path, text, line, words):
    path = write(tmp_path / "pairs.txt", text)
    with pytest.raises(ev.EvaluateError) as err:
        ev.parse_pairs(path)
    message = str(err.value)
    assert words in message and "\n" not in message
    if line is not None:
        assert f"pairs.txt:{line}:" in message


# ------------------------------------------------------------------------------------------ enrol-K


def test_enrol_scores_by_hand():
    # 2-D unit vectors given by angle (degrees); k = 2, threshold cos = 0.9 (about 25.8 degrees).
    # id0 (0, 10 | 5): enrolled; genuine 5 is 5 degrees from both templates -> accepted.
    # id1 (90, 92): only 2 images, not more than k -> not enrolled, only an impostor.
    # id2 (180, 170 | 175, 100, 178*): enrolled; 175 accepted, 100 is 70 degrees from 170 -> rejected,
    #   178* has no face -> rejected.
    # Impostors are all >= 78 degrees from the other identity's templates -> none accepted.
    def at(*degrees):
        r = np.radians(degrees)
        return np.stack([np.cos(r), np.sin(r)], 1).astype(np.float32)

    groups = [at(0, 10, 5), at(90, 92), at(180, 170, 175, 100, 178)]
    found = [np.ones(3, bool), np.ones(2, bool), np.array([1, 1, 1, 1, 0], bool)]
    res = ev.enrol_scores(groups, found, k=2, threshold=0.9)
    assert res.enrolled_identities == 2
    assert res.genuine_attempts == (3 - 2) + (5 - 2) == 4
    assert res.impostor_attempts == (10 - 3) + (10 - 5) == 12
    assert res.genuine_accepted == 2 and res.frr == pytest.approx(0.5)
    assert res.impostor_accepted == 0 and res.far == 0.0
    finite = np.sort(res.genuine_scores[np.isfinite(res.genuine_scores)])
    assert finite == pytest.approx(np.cos(np.radians([70, 5, 5])), abs=1e-6)


def test_enrol_scores_false_accept_and_blocking():
    # One vector shared by two identities: a false accept, found the same with tiny blocks.
    v = np.array([[1.0, 0.0]], np.float32)
    groups = [np.concatenate([v, v]), np.concatenate([v, v])]
    found = [np.ones(2, bool), np.ones(2, bool)]
    for block in (1, 1 << 20):
        res = ev.enrol_scores(groups, found, k=1, threshold=0.5, max_block=block)
        assert (res.genuine_attempts, res.impostor_attempts) == (2, 4)
        assert (res.genuine_accepted, res.impostor_accepted) == (2, 4)
        assert res.far == 1.0 and res.frr == 0.0


def make_identity_images(folder: Path, seed: int, count: int, blank_at: int | None = None) -> list[Path]:
    """``count`` PNGs of one synthetic 'identity': a fixed coarse pattern plus per-image noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    base = cv2.resize(base, (64, 64), interpolation=cv2.INTER_NEAREST)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        noisy = np.clip(base.astype(int) + rng.integers(-10, 11, base.shape), 0, 255).astype(np.uint8)
        if i == blank_at:
            noisy[:] = 128
        path = folder / f"img_{i:03d}.png"
        cv2.imwrite(str(path), noisy)
        paths.append(path)
    return paths


def test_enrol_protocol_counts_on_a_folder(tmp_path):
    sizes = {"A": 5, "B": 3, "C": 1, "D": 4}
    for seed, (name, n) in enumerate(sizes.items()):
        make_identity_images(tmp_path / name, seed, n, blank_at=4 if name == "A" else None)
    k = 3
    r = ev.evaluate(tmp_path, pixel_embed, enroll=k, threshold=0.5)
    total = sum(sizes.values())
    enrolled = [n for n in sizes.values() if n > k]
    assert r["enrolled_identities"] == 2
    assert r["genuine_attempts"] == sum(n - k for n in enrolled) == 3
    assert r["impostor_attempts"] == sum(total - n for n in enrolled) == 17
    assert r["images"] == 13 and r["identities"] == 4 and r["no_face"] == 1
    # The blank (no face) image of A is one of its two genuine attempts: a rejection.
    assert r["frr"] == pytest.approx(1 / 3)
    assert r["far"] == 0.0
    assert r["threshold"] == 0.5
    assert r["accuracy"] is None and r["auc"] is None
    json.loads(ev.to_json(r))


def test_enrol_needs_a_threshold_and_k(tmp_path):
    make_identity_images(tmp_path / "A", 0, 2)
    with pytest.raises(ev.EvaluateError, match=r"^the enrol protocol needs a threshold$"):
        ev.evaluate(tmp_path, pixel_embed, enroll=2)
    with pytest.raises(ev.EvaluateError, match=r"^--enroll needs K >= 1, got 0$"):
        ev.evaluate(tmp_path, pixel_embed, enroll=0, threshold=0.5)


# ------------------------------------------------------------------------------------------ datasets


def test_missing_or_empty_dataset_is_one_line(tmp_path):
    with pytest.raises(ev.DatasetError, match="does not exist"):
        ev.scan_dataset(tmp_path / "nope")
    (tmp_path / "loose.jpg").write_bytes(b"x")
    with pytest.raises(ev.DatasetError, match="no identity folders"):
        ev.scan_dataset(tmp_path)


def test_pairs_embed_each_image_once_and_count_missing(tmp_path, person_images):
    # Each real image gets a 2-D unit vector at a chosen angle (degrees), so every pair's score is a known cosine.
    # P = PERSON, O = OTHER_PERSON; P1 0, P2 40, P3 -80, O1 90, O2 150, O3 100.
    angles = {(PERSON, 1): 0, (PERSON, 2): 40, (PERSON, 3): -80,
              (OTHER_PERSON, 1): 90, (OTHER_PERSON, 2): 150, (OTHER_PERSON, 3): 100}
    known: list[tuple[np.ndarray, np.ndarray]] = []
    for name in (PERSON, OTHER_PERSON):
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for number, src in enumerate(person_images(name, limit=3), 1):
            os.symlink(src, folder / src.name)
            r = np.radians(angles[name, number])
            known.append((ev.load_image(src), np.array([np.cos(r), np.sin(r)], np.float32)))
    pairs = write(tmp_path / "pairs.txt", "\n".join([
        "2 2",
        f"{PERSON} 1 2", f"{PERSON} 1 3",
        f"{PERSON} 1 {OTHER_PERSON} 1", f"{PERSON} 2 {OTHER_PERSON} 1",
        f"{OTHER_PERSON} 1 2", f"{OTHER_PERSON} 2 9",
        f"{PERSON} 3 {OTHER_PERSON} 3", f"Nobody_Here 1 {OTHER_PERSON} 2",
    ]) + "\n")
    calls: list[int] = []
    lock = threading.Lock()

    def counting_embed(image):
        with lock:
            calls.append(1)
        return next(vector for pixels, vector in known if np.array_equal(pixels, image))

    r = ev.evaluate(tmp_path / "data", counting_embed, pairs=pairs, threshold=0.3, workers=2)
    assert len(calls) == 6 == r["images"]  # 3 + 3 distinct images, each once though used in several pairs
    assert r["pairs"] == 8 and r["pairs_missing_image"] == 2 and r["pairs_scored"] == 6
    assert r["folds"] == 2 and r["identities"] == 2
    # Scored: fold 0 genuine P1-P2 cos40 = .766, P1-P3 cos80 = .174; impostor P1-O1 cos90 = 0, P2-O1 cos50 = .643.
    #         fold 1 genuine O1-O2 cos60 = .5; impostor P3-O3 cos180 = -1.
    # Genuine beat impostors in 3 + 2 + 2 of 9 pairs: AUC 7/9.
    # ROC points (FPR, TPR) down the scores: (0,1/3) (1/3,1/3) (1/3,2/3): FPR = FNR = 1/3 there, the EER.
    # 3 impostors allow none at FAR 1e-2 or 1e-3: threshold above .643 accepts .766 only, TAR 1/3.
    # Fold 0 tested at fold 1's threshold, midway between -1 and .5 (-0.25): all accepted, 2 of 4 right.
    # Fold 1 tested at fold 0's: the lowest cut with 3 of 4 right, midway between 0 and .174; .5 in, -1 out: 2/2.
    # At threshold 0.3: .766 .5 accepted, 0 -1 refused right; .174 refused, .643 accepted wrong: 4/6.
    assert r["auc"] == pytest.approx(7 / 9) and r["eer"] == pytest.approx(1 / 3)
    assert r["tar_at_far_1e-2"] == pytest.approx(1 / 3) and r["tar_at_far_1e-3"] == pytest.approx(1 / 3)
    assert r["fold_thresholds"] == pytest.approx([-0.25, np.cos(np.radians(80)) / 2], abs=1e-6)
    assert r["fold_accuracies"] == [0.5, 1.0] and r["accuracy"] == 0.75 and r["accuracy_std"] == 0.25
    assert r["pairs_accuracy_at_threshold"] == pytest.approx(4 / 6)
    assert r["genuine_attempts"] is None and r["far"] is None
    assert set(ev.RESULT_KEYS) <= set(json.loads(ev.to_json(r)))
    from pam_faceid.cli.evaluate import format_table

    table = format_table(r)
    assert "accuracy (2 folds)" in table and "ROC AUC" in table and "genuine attempts" not in table


def test_no_face_pair_scores_minus_one(tmp_path):
    make_identity_images(tmp_path / "A", 0, 2, blank_at=1)
    make_identity_images(tmp_path / "B", 1, 1)
    pairs = write(tmp_path / "pairs.txt", "1\nA 1 2\nA 1 B 1\n")
    (tmp_path / "A" / "img_000.png").rename(tmp_path / "A" / "A_0001.png")
    (tmp_path / "A" / "img_001.png").rename(tmp_path / "A" / "A_0002.png")
    (tmp_path / "B" / "img_000.png").rename(tmp_path / "B" / "B_1.png")
    r = ev.evaluate(tmp_path, pixel_embed, pairs=pairs)
    assert r["pairs_no_face"] == 1 and r["no_face"] == 1 and r["pairs_scored"] == 2
    # The genuine pair scored -1 (a rejection) and sits below the impostor: AUC 0.
    assert r["auc"] == 0.0


def test_load_image_downscales_and_converts(tmp_path):
    big = np.zeros((2000, 3000), np.uint16)
    big[500:1500, 1000:2000] = 65535
    cv2.imwrite(str(tmp_path / "big.png"), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    image = ev.load_image(tmp_path / "big.png")
    assert image.dtype == np.uint8 and image.shape == (853, 1280, 3)
    assert image[426, 640].tolist() == [255, 255, 255] and image[10, 10].tolist() == [0, 0, 0]
    twelve_bit = np.zeros((40, 40), np.uint16)
    twelve_bit[10:30, 10:30] = 4095
    cv2.imwrite(str(tmp_path / "d12.png"), twelve_bit)
    assert ev.load_image(tmp_path / "d12.png")[20, 20].tolist() == [255, 255, 255]


@pytest.fixture
def hostile_dataset(tmp_path, person_images) -> tuple[Path, dict]:
    """A dataset of real faces in every awkward form, plus junk; returns it and the expected counts."""
    faces = person_images(PERSON, limit=9)
    root = tmp_path / "hostile set"
    good = root / PERSON
    good.mkdir(parents=True)
    for src in faces[:3]:
        shutil.copyfile(src, good / src.name)
    odd = root / "Odd Person"
    odd.mkdir()
    face = cv2.imread(str(faces[3]))
    data = faces[4].read_bytes()
    (odd / "notes.jpg").write_text("this is not a picture\n")
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "truncated.jpg").write_bytes(data[: len(data) // 2])
    from PIL import Image
    Image.fromarray(cv2.cvtColor(cv2.imread(str(faces[5])), cv2.COLOR_BGR2RGB)).save(odd / "anim.gif")
    cv2.imwrite(str(odd / "deep16.png"), cv2.imread(str(faces[6])).astype(np.uint16) * 257)
    cv2.imwrite(str(odd / "grey.pgm"), cv2.cvtColor(cv2.imread(str(faces[7])), cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(odd / "huge.jpg"), cv2.resize(face, (6000, 4000), interpolation=cv2.INTER_LINEAR))
    shutil.copyfile(faces[8], odd / "José Ñ 顔 photo.jpg")
    with open(os.fsencode(odd) + b"/caf\xe9 latin-1.jpg", "wb") as fh:  # a name that is not UTF-8
        fh.write(faces[1].read_bytes())
    locked = odd / "locked.jpg"
    shutil.copyfile(faces[0], locked)
    locked.chmod(0)
    cv2.imwrite(str(odd / "flat.png"), np.full((100, 100, 3), 128, np.uint8))
    os.mkfifo(odd / "pipe.jpg")
    os.symlink("loop.jpg", odd / "loop.jpg")
    os.symlink("/nonexistent/face.jpg", odd / "dangling.jpg")
    os.symlink("..", odd / "up")  # directory loop: a nested folder, never walked
    (odd / "junk" / "deeper").mkdir(parents=True)
    (odd / "junk" / "deeper" / "x.jpg").write_bytes(data)
    (odd / ".DS_Store").write_bytes(b"\0\1")
    (root / "README.txt").write_text("about this set\n")
    os.symlink("spin", root / "spin")
    (root / "empty identity").mkdir()
    root_can_read = os.geteuid() == 0
    expected = {
        # 3 good + gif, 16-bit png, pgm, huge, unicode name, latin-1 name, flat (no face) [+ locked if root]
        "images": 10 + root_can_read,
        "no_face": 1,
        "identities": 2,
        "skipped": {
            "not an image": 2,  # text named .jpg, truncated JPEG
            "empty file": 1,
            "not a regular file": 1,  # the FIFO
            "broken or looping symlink": 3,  # loop.jpg, dangling.jpg, top-level spin
            "nested folder": 2,  # junk/, up -> ..
            "hidden entry": 1,
            "file outside an identity folder": 1,
        },
    }
    if not root_can_read:
        expected["skipped"]["unreadable (Permission denied)"] = 1
    return root, expected


def test_hostile_folder_is_skipped_and_counted(hostile_dataset):
    root, expected = hostile_dataset
    r = ev.evaluate(root, pixel_embed, enroll=1, threshold=0.9)
    assert r["images"] == expected["images"]
    assert r["no_face"] == expected["no_face"]
    assert r["identities"] == expected["identities"]
    assert r["skipped_reasons"] == expected["skipped"]
    assert r["skipped_files"] == sum(expected["skipped"].values())
    n_good, n_odd = 3, expected["images"] - 3
    assert r["genuine_attempts"] == (n_good - 1) + (n_odd - 1)
    assert r["impostor_attempts"] == n_odd + n_good
    json.loads(ev.to_json(r))


def test_odd_formats_decode_like_the_original(person_images, tmp_path):
    src = person_images(PERSON, limit=1)[0]
    original = cv2.imread(str(src))
    from PIL import Image
    Image.fromarray(cv2.cvtColor(original, cv2.COLOR_BGR2RGB)).save(tmp_path / "a.gif")
    cv2.imwrite(str(tmp_path / "a16.png"), original.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "a.pgm"), cv2.cvtColor(original, cv2.COLOR_BGR2GRAY))
    for name in ("a.gif", "a16.png", "a.pgm"):
        image = ev.load_image(tmp_path / name)
        assert image.shape == original.shape and image.dtype == np.uint8
        assert float(pixel_embed(image) @ pixel_embed(original)) > 0.98, name


# ------------------------------------------------------------------------------------------ the command


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["evaluate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("faceid evaluate: dataset folder") and "\n" not in err and "Traceback" not in err
    make_identity_images(tmp_path / "data" / "A", 0, 2)
    bad = write(tmp_path / "pairs.txt", "1\nA 1 2\nA x B 1\n")
    assert cli_main(["evaluate", str(tmp_path / "data"), "--pairs", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pairs.txt:3:" in err and "\n" not in err


FACEID = [sys.executable, "-c", "import sys; from pam_faceid.cli import main; sys.exit(main())"]


TEST_MODEL = os.environ.get("FACEID_TEST_MODEL")
"""A model folder to use instead of the bundled one (to try a candidate model)."""


def test_faceid_evaluate_end_to_end(tmp_path, shared_faces, person_images, hostile_dataset):
    """The real command on a few real identities: JSON keys, the figures known for them, the hostile folder calmly."""
    data = tmp_path / "lfw"
    names = [PERSON, OTHER_PERSON, "Abel_Pacheco"]
    for name in names:
        (data / name).mkdir(parents=True)
        for src in person_images(name, limit=4):
            os.symlink(src, data / name / src.name)
    pairs = write(tmp_path / "pairs.txt", "\n".join([
        "2 2",
        f"{PERSON} 1 2", f"{OTHER_PERSON} 1 2", f"{PERSON} 1 {OTHER_PERSON} 1", f"{PERSON} 2 Abel_Pacheco 1",
        f"{PERSON} 3 4", "Abel_Pacheco 1 3", f"{OTHER_PERSON} 3 Abel_Pacheco 2", f"{PERSON} 4 Abel_Pacheco 4",
    ]) + "\n")
    model = ["--model", TEST_MODEL] if TEST_MODEL else []
    cmd = FACEID + ["evaluate", str(data), "--pairs", str(pairs), "--enroll", "2", "--json", "--flip"] + model
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert set(ev.RESULT_KEYS) <= set(r)
    assert r["images"] == 12 and r["identities"] == 3 and r["no_face"] == 0  # a face in each photo
    assert r["genuine_attempts"] == 3 * 2 and r["impostor_attempts"] == 3 * 8
    # Three people the model tells apart: every genuine pair outscores every impostor pair, and at the model's
    # own threshold enrol-2 lets every genuine attempt in and no impostor.
    assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["tar_at_far_1e-2"] == r["tar_at_far_1e-3"] == 1.0
    model_dir = Path(TEST_MODEL) if TEST_MODEL else REPO / "pam_faceid" / "data" / "model"
    assert r["threshold"] == json.loads((model_dir / "model.json").read_text())["threshold"]
    assert (r["far"], r["frr"], r["false_accepts"], r["false_rejects"]) == (0.0, 0.0, 0, 0)
    assert r["seconds"] > 0 and r["faces_per_second"] > 0

    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    out = subprocess.run(FACEID + ["evaluate", str(data), "--enroll", "2", "--json", "--model", str(copy),
                                   "--set-threshold"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    meta = json.loads((copy / "model.json").read_text())
    exact = json.loads(out.stdout)["enroll_threshold_at_far_1e-3"]
    assert exact <= meta["threshold"] < exact + 1e-4  # rounded up: never accepts the impostor it refuses
    assert meta["threshold_source"]["data"] == str(data) and meta["threshold_source"]["metrics"]["enroll_k"] == 2
    refused = subprocess.run(FACEID + ["evaluate", str(data), "--enroll", "2", "--set-threshold"],
                             capture_output=True, text=True, timeout=60, cwd=REPO)
    assert refused.returncode == 2 and "--set-threshold needs" in refused.stderr

    root, expected = hostile_dataset
    out = subprocess.run(FACEID + ["evaluate", str(root), "--enroll", "1", "--json"] + model,
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["images"] == expected["images"] and r["skipped_reasons"] == expected["skipped"]
    assert r["no_face"] == 1  # the flat grey image; the real face is found in every odd format
