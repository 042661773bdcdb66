"""Our use of pytorch-metric-learning's triplet loss and miners, on hand-computed cases, and a tiny train-base run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pam_faceid.model.training import TrainConfig, augment, pk_batches, triplet_loss_and_miner, warmup_cosine
from faces_support import REPO, fill_image_folder


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def chord(deg: float) -> float:
    """L2 distance between unit vectors `deg` degrees apart."""
    return 2 * math.sin(math.radians(deg) / 2)


def triplets(mined) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in t) for t in zip(*mined)}


def test_triplet_loss_is_the_facenet_formula():
    loss_fn, _ = triplet_loss_and_miner(margin=0.2, miner="hard")
    emb = torch.tensor([unit(0), unit(90), unit(45)])
    labels = torch.tensor([0, 0, 1])
    one = (torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    expected = chord(90) - chord(45) + 0.2  # max(d(A,P) - d(A,N) + alpha, 0) = 0.8488
    assert float(loss_fn(emb, labels, one)) == pytest.approx(expected, abs=1e-5)
    easy = torch.tensor([unit(0), unit(10), unit(120)])
    assert float(loss_fn(easy, labels, one)) == 0.0  # d(A,N) beyond d(A,P) + alpha: no loss


def test_batch_hard_miner_picks_farthest_positive_and_nearest_negative():
    _, miner = triplet_loss_and_miner(margin=0.2, miner="hard")
    emb = torch.tensor([unit(0), unit(20), unit(100), unit(50), unit(170)])
    labels = torch.tensor([0, 0, 0, 1, 1])
    mined = triplets(miner(emb, labels))
    assert (0, 2, 3) in mined  # anchor 0: hardest positive at 100 deg, hardest negative at 50 deg
    assert not any(a == 0 and (p, n) != (2, 3) for a, p, n in mined)


def test_semihard_miner_keeps_only_negatives_inside_the_margin():
    _, miner = triplet_loss_and_miner(margin=0.2, miner="semihard")
    # d(0,1) = 0.347; negative 2 at 28 deg: 0.484 lies in (0.347, 0.547) -> semihard;
    # negative 3 at 90 deg: 1.414 is beyond the margin -> not mined.
    emb = torch.tensor([unit(0), unit(20), unit(28), unit(90)])
    labels = torch.tensor([0, 0, 1, 1])
    mined = triplets(miner(emb, labels))
    assert (0, 1, 2) in mined
    assert (0, 1, 3) not in mined


def test_augment_is_per_face_deterministic_and_bounded():
    x = torch.rand(8, 3, 150, 150) - 0.5
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    same_input = augment(x[:1].expand(4, -1, -1, -1).contiguous(), torch.Generator().manual_seed(3))
    assert not torch.allclose(same_input[0], same_input[1])  # each face gets its own draw


def test_top_of_the_network_gives_the_whole_networks_descriptor():
    """Cached activations + Top = the full network, for every split point train-base offers."""
    pytest.importorskip("pam_faceid.model.dlib_format")
    from pam_faceid.model import dlib_format
    from pam_faceid.vision import resnet
    from pam_faceid.model.training import Top

    try:
        path, _ = dlib_format.package_dat()
    except dlib_format.DlibFormatError as exc:
        pytest.skip(f"dlib's network file is not available: {exc}")
    model = resnet.from_dlib(dlib_format.read(path))
    x = torch.rand(2, 3, 150, 150) - 0.5
    with torch.inference_mode():
        whole = model(x)
        for levels in (1, 2, 3):
            start = resnet.level_start(levels)
            h = model.blocks[:start](torch.nn.functional.max_pool2d(torch.relu(model.aff(model.conv(x))), 3, 2))
            assert torch.allclose(Top(model, start)(h), whole, atol=1e-5)


def _tiny_set(tmp_path, shared_faces):
    """12 train/lfw people with 8 photos each: 8 to train on, 2 + 2 held out."""
    root = tmp_path / "data"
    people = [p for p in sorted((shared_faces / "train" / "lfw").iterdir()) if len(list(p.iterdir())) >= 8][:12]
    for identity in people:
        fill_image_folder(sorted(identity.iterdir())[:8], root / identity.name)
    return root


@pytest.mark.slow
def test_train_base_small_run_is_deterministic_and_keeps_the_better_network(tmp_path, shared_faces):
    """A few steps at a high rate and no pull to the imported weights make it worse on the held-out
    people who decide: the report says the imported network wins."""
    root = _tiny_set(tmp_path, shared_faces)
    common = [sys.executable, "-m", "pam_faceid.cli", "train-base", str(root), "--steps-per-epoch", "2",
              "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--workers", "1", "--views", "2",
              "--optimizer", "adamw", "--lr", "3e-4", "--anchor", "0", "--miner", "hard"]

    def run(out):
        done = subprocess.run(common + ["--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "report.json").read_text()), done.stdout

    first, stdout = run(tmp_path / "a")
    assert first["data"]["identities"] == 12 and first["data"]["faces"] >= 90
    assert first["data"]["held_out_identities"] == 4
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert (tmp_path / "a" / "training.png").exists()
    decide = first["decide"]
    worse = decide["fine_tuned"]["tar_at_far_1e-3"] + decide["fine_tuned"]["auc"] / 100 <= \
        decide["imported"]["tar_at_far_1e-3"] + decide["imported"]["auc"] / 100
    assert worse and first["decision"] == "imported"
    assert first["best"]["epoch"] in (1, 2) and (tmp_path / "a" / "weights.pt").exists()
    assert "imported network wins" in stdout
    again, _ = run(tmp_path / "b")
    assert again["history"][0]["loss"] == first["history"][0]["loss"], "same seed, same data: same run"


def test_train_base_refuses_dev(tmp_path):
    dev = tmp_path / "dev" / "lfw"
    dev.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "pam_faceid.cli", "train-base", str(dev)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0 and "dev/ is for measuring only" in done.stderr


def test_pk_batches_hold_p_identities_of_k_faces_from_training_identities_only():
    """MPerClassSampler's batches: P identities x K faces, never a held-out face (-1) or a one-face identity."""
    cfg = TrainConfig(roots=[], ids_per_batch=4, images_per_id=3, steps_per_epoch=5)
    labels = np.array([0] * 5 + [1] * 2 + [2] * 1 + [3] * 4 + [-1] * 3 + [4] * 6 + [5] * 2)
    batches = pk_batches(labels, cfg, seed=0)
    for _ in range(12):  # more than one pass of the sampler
        batch = next(batches)
        ids, counts = np.unique(labels[batch], return_counts=True)
        assert len(batch) == 12 and len(ids) == 4 and set(counts) == {3}, labels[batch]
        assert not {-1, 2} & set(ids.tolist())


def test_the_learning_rate_warms_up_linearly_then_decays_as_a_cosine():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = warmup_cosine(opt, total=100)  # 5 warm-up steps
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert seen[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert seen[5:] == pytest.approx([0.5 * (1 + math.cos(math.pi * j / 95)) for j in range(95)])
