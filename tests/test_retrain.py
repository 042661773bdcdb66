"""faceid retrain: per-user heads trained on real enrolled captures, the keep/reject rule, revert, model ids, atomicity.

Real faces from ../shared/faces (skipped with the reason when absent). The
model is $FACEID_TEST_MODEL, else the bundled one, else the lead's candidate
runs/base1 once it has model.json; skipped when there is none. The negative
bank is the one shipped beside that model, or, when it has none yet, a small
one built by `python -m pam_faceid.model.negatives build` into a temporary copy of
the model (train/ identities only).

The keep/reject rule is pinned on hand-made metrics and on synthetic
embeddings whose scores are worked out by hand. The commands on real faces
assert what is known for that data with the bundled model: the base model
alone already passes all 3 held-out captures of this person (FRR 0), so a
new head is refused against it and kept against a head that refuses everyone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from faces_support import PERSON, REPO, images_of, require_shared_faces

from pam_faceid.common import scaffold

FACEID = str(scaffold.script("faceid"))
TRAIN_ROOTS = ["train/lfw", "train/celeba", "train/glint", "train/yaleb"]
SMALL_BANK = 800


def _candidate_model() -> Path:
    env = os.environ.get("FACEID_TEST_MODEL")
    candidates = [Path(env)] if env else [REPO / "pam_faceid" / "data" / "model", REPO / "runs" / "base1"]
    for folder in candidates:
        if (folder / "model.json").is_file() and (folder / "embedder.onnx").is_file():
            return folder
    pytest.skip(f"no face model in {', '.join(map(str, candidates))} (train one, or set FACEID_TEST_MODEL)")


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, np.ndarray]:
    """(model folder with a current negative bank, model id, bank as float32 unit vectors)."""
    from pam_faceid.model import negatives
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.vision.embedder import Embedder

    faces = require_shared_faces()
    folder = _candidate_model()
    model_id = model_id_of(Embedder(folder))
    try:
        return folder, model_id, negatives.load_shipped(folder, model_id)
    except negatives.NegativesError:
        pass
    copy = tmp_path_factory.mktemp("model")
    for name in ("embedder.onnx", "model.json"):
        shutil.copyfile(folder / name, copy / name)
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.negatives", "build", str(copy),
                           *(str(faces / r) for r in TRAIN_ROOTS), "--limit", str(SMALL_BANK)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return copy, model_id, negatives.load_shipped(copy, model_id)


@pytest.fixture(scope="session")
def captures(model: tuple[Path, str, np.ndarray]) -> np.ndarray:
    """Base embeddings of 10 real photos of one dev/lfw person, as `faceid enroll --from` stores them."""
    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.common.images import read_image

    pipeline = FacePipeline(policy="centre", min_size=20)
    crops = []
    for path in images_of(PERSON, limit=16):
        crop, _ = pipeline.process(read_image(path))
        if crop is not None:
            crops.append(crop)
    assert len(crops) >= 10, f"only {len(crops)} faces found in {PERSON}'s photos"
    return Embedder(model[0]).embed(np.stack(crops[:10]))


def _config(tmp: Path, model_dir: Path) -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"daemon:\n  socket: {tmp / 'none.sock'}\n  state_dir: {tmp / 'state'}\n"
                    f"model:\n  path: {model_dir}\n")
    path.chmod(0o600)
    return path


def _faceid(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"}
    return subprocess.run([FACEID, "--config", str(config), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def _enrol(state: Path, vectors: np.ndarray, model_id: str, user: str = "root") -> None:
    from pam_faceid.common.store import Store

    Store(state).add_templates(user, vectors, label="test", model_id=model_id)


def _head(model_id: str, seed: int, threshold: float = 0.5):
    from pam_faceid.common.userhead import UserHead

    rng = np.random.default_rng(seed)
    return UserHead(np.eye(128, dtype=np.float32) + rng.normal(0, 0.01, (128, 128)).astype(np.float32),
                    np.zeros(128, np.float32), threshold, model_id, {"seed": seed})


def test_head_starts_as_identity(captures: np.ndarray, model: tuple[Path, str, np.ndarray]) -> None:
    from pam_faceid.model.retrain import RetrainConfig, fit_head
    from pam_faceid.common.userhead import UserHead

    np.testing.assert_allclose(UserHead.identity().apply(captures), captures, atol=1e-6)
    untrained, _ = fit_head(captures[:7], model[2][:200], RetrainConfig(epochs=0), progress=False)
    np.testing.assert_array_equal(untrained.weight, np.eye(128, dtype=np.float32))
    np.testing.assert_allclose(untrained.apply(captures), captures, atol=1e-6)


def test_runtime_module_does_not_import_torch() -> None:
    code = "import sys, pam_faceid.common.userhead; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def _collapsed(model_id: str):
    """A head that maps every face to one vector: every score ties, so it refuses every genuine probe (FRR 1)."""
    from pam_faceid.common.userhead import UserHead

    return UserHead(np.zeros((128, 128), np.float32), np.eye(128, dtype=np.float32)[0], 0.5, model_id)


def _enrolled_root(tmp_path: Path, model: tuple[Path, str, np.ndarray], captures: np.ndarray,
                   head=None) -> Path:
    """The config of a tmp_path/state where root is enrolled from ``captures`` (and holds ``head``, if given)."""
    from pam_faceid.common.userhead import save_head

    if os.geteuid() != 0:
        pytest.skip("faceid retrain needs root")
    model_dir, model_id, _bank = model
    _enrol(tmp_path / "state", captures, model_id)
    if head is not None:
        save_head(tmp_path / "state", "root", head)
    return _config(tmp_path, model_dir)


def test_retrain_command_on_10_real_captures_under_60s(tmp_path: Path, model: tuple[Path, str, np.ndarray],
                                                       captures: np.ndarray) -> None:
    """With the base model alone every held-out capture of this person already passes: no new head can do better."""
    from pam_faceid.common.userhead import HEAD_FILE, head_dir, load_head

    model_id = model[1]
    config = _enrolled_root(tmp_path, model, captures)
    started = time.monotonic()
    done = _faceid(config, "retrain", "root")
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"retrain took {elapsed:.1f} s"
    assert done.returncode == 3, done.stdout + done.stderr
    before = next(line for line in done.stdout.splitlines() if line.startswith("before (the base model alone)"))
    assert "FRR 0.000 on 3 held-out captures" in before, done.stdout
    assert "after  (new head, 100 steps" in done.stdout
    assert "kept the base model alone: FRR on the held-out captures did not fall (0.000 before" in done.stdout
    assert load_head(tmp_path / "state", "root", model_id) is None
    assert not (head_dir(tmp_path / "state", "root") / HEAD_FILE).exists()


def test_retrain_command_replaces_a_head_that_refuses_everyone(tmp_path: Path, model: tuple[Path, str, np.ndarray],
                                                               captures: np.ndarray) -> None:
    """Against a current head with FRR 1 the trained head (FRR 0 on this person's held-out captures) is kept."""
    from pam_faceid.common.userhead import load_head, read_head

    model_id, state = model[1], tmp_path / "state"
    done = _faceid(_enrolled_root(tmp_path, model, captures, head=_collapsed(model_id)), "retrain", "root")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept the new head: FRR at FAR 0.001 fell from 1.000 to 0.000" in done.stdout
    assert "daemon not reloaded" in done.stderr  # no daemon runs: said, not fatal
    head = load_head(state, "root", model_id)
    assert head is not None and (head.meta["before"]["frr"], head.meta["after"]["frr"]) == (1.0, 0.0)
    np.testing.assert_array_equal(read_head(state, "root", previous=True).weight, np.zeros((128, 128)))


# Synthetic embeddings whose scores are known by hand. The user's enrolled captures are u = (e0 + 2 e1)/sqrt5;
# a genuine probe is either u itself (score 1 against u) or v = (e0 - 2 e1)/sqrt5 (score -0.6: the user, seen
# with a nuisance flipped). Every bank face is (e1 + 0.5 ek)/sqrt1.25 with k >= 2, scoring 0.8 against u.
# - identity (the base model): threshold just above 0.8; u passes, v is refused.
# - _drop_e1(), the head that zeroes e1: u and v both map to e0, bank faces to ek: impostors score 0, probes 1.
# - the collapsed head maps everything to e0: all scores 1, threshold above 1, every probe refused.
E0, E1 = np.eye(128, dtype=np.float32)[:2]
U = (E0 + 2 * E1) / np.sqrt(5)
V = (E0 - 2 * E1) / np.sqrt(5)


def _bank_faces(count: int) -> np.ndarray:
    eye = np.eye(128, dtype=np.float32)
    return np.stack([(E1 + 0.5 * eye[2 + i % 126]) / np.sqrt(1.25) for i in range(count)]).astype(np.float32)


def _drop_e1(model_id: str = ""):
    from pam_faceid.common.userhead import UserHead

    weight = np.eye(128, dtype=np.float32)
    weight[1, 1] = 0.0
    return UserHead(weight, np.zeros(128, np.float32), 0.5, model_id)


def _metrics(frr: float, threshold: float = 0.9):
    from pam_faceid.model.retrain import Metrics

    return Metrics(threshold=threshold, far=0.0, frr=frr, genuine=4, impostor=1000)


@pytest.mark.parametrize("before, after, kept", [
    (0.75, 0.0, True),  # the base model refuses 3 of 4 genuine frames, the head none
    (0.5, 0.25, True),
    (0.25, 0.25, False),  # a tie keeps the current head
    (0.0, 0.0, False),
    (0.25, 0.5, False),  # the head refuses more genuine frames at the FAR target
    (0.0, 1.0, False),
])
def test_decide_keeps_only_a_lower_frr(before: float, after: float, kept: bool) -> None:
    from pam_faceid.model.retrain import decide

    assert decide(_metrics(before), _metrics(after, threshold=0.7)) is kept


def test_measure_scores_synthetic_heads_as_worked_out() -> None:
    from pam_faceid.model.retrain import decide, measure
    from pam_faceid.common.userhead import UserHead

    enrolled, probes, bank = np.stack([U, U]), np.stack([U, V, V, V]), _bank_faces(500)
    base = measure(UserHead.identity(), enrolled, probes, bank, 1e-3)
    assert base.threshold == pytest.approx(0.8, abs=1e-6) and base.frr == 0.75 and base.far == 0.0
    assert (base.genuine, base.impostor) == (4, 500)
    dropped = measure(_drop_e1(), enrolled, probes, bank, 1e-3)
    assert dropped.threshold == pytest.approx(0.0, abs=1e-6) and dropped.frr == 0.0 and dropped.far == 0.0
    collapsed = measure(_collapsed(""), enrolled, probes, bank, 1e-3)
    assert collapsed.frr == 1.0
    assert decide(base, dropped) is True
    assert decide(dropped, base) is False  # worse on impostors: they outscore 3 of 4 genuine probes
    assert decide(base, base) is False and decide(base, collapsed) is False
    assert decide(collapsed, base) is True


@pytest.mark.parametrize("current, before, kept, reason", [
    (None, 2 / 3, False, "did not fall (0.667 before, 0.667 with the new head)"),
    ("drop_e1", 0.0, False, "did not fall (0.000 before, 0.667 with the new head)"),
    ("collapsed", 1.0, True, "FRR at FAR 0.001 fell from 1.000 to 0.667"),
])
def test_retrain_decides_on_the_held_out_captures(current: str | None, before: float, kept: bool,
                                                  reason: str) -> None:
    """With 0 training steps the new head is the identity (the base model), so both sides are known by hand."""
    from pam_faceid.model.retrain import RetrainConfig, retrain, split_bank, split_captures

    cfg = RetrainConfig(epochs=0)
    train, held = split_captures(10, cfg)
    captures = np.tile(U, (10, 1))
    captures[held[1:]] = V  # held out: one u (passes the base model), two v (refused by it)
    bank = _bank_faces(400)
    heads = {None: None, "drop_e1": _drop_e1("m"), "collapsed": _collapsed("m")}
    outcome = retrain(captures, bank, "m", heads[current], cfg, progress=False)
    assert (len(train), len(held)) == (7, 3)
    assert outcome.before.frr == pytest.approx(before) and outcome.after.frr == pytest.approx(2 / 3)
    assert outcome.kept is kept
    assert reason in outcome.reason
    assert outcome.before.genuine == 3 and outcome.before.impostor == len(split_bank(400, cfg)[1]) == 200
    assert outcome.head.model_id == "m" and outcome.head.meta["held_out"] == 3


def test_rejected_head_leaves_current_head_untouched(tmp_path: Path, model: tuple[Path, str, np.ndarray],
                                                     captures: np.ndarray) -> None:
    """A saved head that passes every held-out capture (the identity does, for this person) cannot be beaten."""
    from pam_faceid.common.userhead import HEAD_FILE, PREV_FILE, UserHead, head_dir

    config = _enrolled_root(tmp_path, model, captures, head=UserHead.identity(threshold=0.9, model_id=model[1]))
    folder = head_dir(tmp_path / "state", "root")
    before = (folder / HEAD_FILE).read_bytes()
    done = _faceid(config, "retrain", "root")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "before (the head saved" in done.stdout and "FRR 0.000 on 3 held-out captures" in done.stdout
    assert "kept the head saved" in done.stdout
    assert (folder / HEAD_FILE).read_bytes() == before
    assert not (folder / PREV_FILE).exists()


def test_revert_swaps_with_previous_head(tmp_path: Path) -> None:
    from pam_faceid.common.userhead import HeadError, read_head, revert_head, save_head

    state = tmp_path / "state"
    with pytest.raises(HeadError, match="no per-user head"):
        revert_head(state, "alice")
    first, second = _head("m1", 1), _head("m1", 2)
    save_head(state, "alice", first)
    save_head(state, "alice", second)
    assert read_head(state, "alice").meta["seed"] == 2
    assert read_head(state, "alice", previous=True).meta["seed"] == 1
    now, replaced = revert_head(state, "alice")
    assert now.meta["seed"] == 1 and replaced.meta["seed"] == 2
    np.testing.assert_array_equal(read_head(state, "alice").weight, first.weight)
    revert_head(state, "alice")  # a second revert undoes the first
    assert read_head(state, "alice").meta["seed"] == 2


def test_revert_command_back_to_base_model(tmp_path: Path, model: tuple[Path, str, np.ndarray]) -> None:
    from pam_faceid.common.userhead import read_head, save_head

    if os.geteuid() != 0:
        pytest.skip("faceid retrain needs root")
    state = tmp_path / "state"
    save_head(state, "root", _head(model[1], 3))
    config = _config(tmp_path, model[0])
    done = _faceid(config, "retrain", "root", "--revert")
    assert done.returncode == 0, done.stderr
    assert "root now uses the base model alone" in done.stdout
    assert read_head(state, "root") is None and read_head(state, "root", previous=True).meta["seed"] == 3
    done = _faceid(config, "retrain", "root", "--revert")
    assert done.returncode == 0 and read_head(state, "root").meta["seed"] == 3


def test_head_for_another_model_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pam_faceid.common.userhead import load_head, save_head

    save_head(tmp_path, "alice", _head("old-model", 4))
    assert load_head(tmp_path, "alice", "old-model") is not None
    with caplog.at_level(logging.WARNING, logger="pam_faceid.common.userhead"):
        assert load_head(tmp_path, "alice", "new-model") is None
    assert "made for base model 'old-model'" in caplog.text


def test_unsafe_or_corrupt_head_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pam_faceid.common.userhead import HEAD_FILE, head_dir, load_head, save_head

    save_head(tmp_path, "alice", _head("m", 5))
    path = head_dir(tmp_path, "alice") / HEAD_FILE
    with caplog.at_level(logging.WARNING, logger="pam_faceid.common.userhead"):
        path.chmod(0o644)
        assert load_head(tmp_path, "alice", "m") is None
        path.chmod(0o600)
        assert load_head(tmp_path, "alice", "m") is not None
        path.write_bytes(path.read_bytes()[:100])
        assert load_head(tmp_path, "alice", "m") is None
    assert "lets other users in" in caplog.text and "corrupt head file" in caplog.text


def test_atomic_writes_leave_no_temp_files(tmp_path: Path) -> None:
    from pam_faceid.common.userhead import HEAD_FILE, HeadError, head_dir, read_head, revert_head, save_head

    for seed in range(3):
        save_head(tmp_path, "alice", _head("m", seed))
    revert_head(tmp_path, "alice")
    folder = head_dir(tmp_path, "alice")
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.npz", "head.prev.json", "head.prev.npz"]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())
    meta = json.loads((folder / "head.json").read_text())
    assert meta["base_model_id"] == "m" and meta["seed"] == 1
    # A write that fails (here: the target is a folder) raises one line, keeps the head, leaves no temp file.
    before = (folder / HEAD_FILE).read_bytes()
    for name in ("head.prev.npz", "head.prev.json"):
        (folder / name).unlink()
    (folder / "head.prev.npz").mkdir()
    with pytest.raises(HeadError, match="cannot write"):
        save_head(tmp_path, "alice", _head("m", 9))
    assert sorted(p.name for p in folder.iterdir()) == ["head.json", "head.npz", "head.prev.npz"]
    assert (folder / HEAD_FILE).read_bytes() == before and read_head(tmp_path, "alice").meta["seed"] == 1


def test_bank_refuses_dev_and_stale_models(tmp_path: Path, model: tuple[Path, str, np.ndarray]) -> None:
    from pam_faceid.model import negatives

    faces = require_shared_faces()
    with pytest.raises(negatives.NegativesError, match="train/ identities only"):
        negatives.identity_folders([faces / "dev" / "lfw"], 10)
    model_dir, model_id, bank = model
    assert bank.dtype == np.float32 and bank.shape[1] == 128 and len(bank) >= 100
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-3)
    meta = json.loads((model_dir / negatives.SHIPPED_META).read_text())
    assert meta["one_face_per_identity"] and all(s.startswith("train/") for s in meta["sources"])
    with pytest.raises(negatives.NegativesError, match="build it again"):
        negatives.load_shipped(model_dir, "another-model")
    with pytest.raises(negatives.NegativesError, match="no negative bank"):
        negatives.load_shipped(tmp_path, model_id)
