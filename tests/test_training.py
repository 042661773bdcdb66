"""Our use of pytorch-metric-learning's triplet loss and miners, on hand-computed cases, and a tiny train-base run."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from pam_faceid.model.training import augment, triplet_loss_and_miner
from tests.conftest import REPO, fill_image_folder


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
    x = torch.rand(8, 3, 112, 112) * 2 - 1
    a = augment(x, torch.Generator().manual_seed(1))
    b = augment(x, torch.Generator().manual_seed(1))
    c = augment(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    same_input = augment(x[:1].expand(4, -1, -1, -1).contiguous(), torch.Generator().manual_seed(3))
    assert not torch.allclose(same_input[0], same_input[1])  # each face gets its own draw


@pytest.mark.slow
def test_train_base_small_run_writes_model_resumes_and_is_deterministic(tmp_path, shared_faces):
    root = tmp_path / "data"
    for identity in sorted((shared_faces / "train" / "glint").iterdir())[:6]:
        fill_image_folder(sorted(identity.iterdir())[:16], root / identity.name)
    common = [sys.executable, "-m", "pam_faceid.cli", "train-base", str(root), "--steps-per-epoch", "2",
              "--cache-dir", str(tmp_path / "cache"), "--workers", "1"]

    def run(out, *extra):
        done = subprocess.run(common + ["--out", str(out), *extra], capture_output=True, text=True, cwd=REPO,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads((out / "report.json").read_text())

    first = run(tmp_path / "a", "--epochs", "1")
    assert first["data"]["identities"] == 6 and first["data"]["faces"] >= 90
    for name in ("embedder.onnx", "embedder.pt", "model.json", "training.png", "checkpoint.pt"):
        assert (tmp_path / "a" / name).exists(), name
    again = run(tmp_path / "b", "--epochs", "1")
    wa = torch.load(tmp_path / "a" / "embedder.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "embedder.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "same seed, same data: same weights"
    assert again["history"][0]["loss"] == first["history"][0]["loss"]
    resumed = run(tmp_path / "a", "--epochs", "2", "--resume")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]

    from pam_faceid.embedder import Embedder
    from pam_faceid.faces import FacePipeline
    from pam_faceid.images import read_image

    pipeline = FacePipeline(policy="centre")
    crops = np.stack([pipeline.process(read_image(p))[0] for p in sorted(root.glob("*/*"))[:6]])
    onnx = Embedder(tmp_path / "a", backend="onnx").embed(crops)
    torch_ = Embedder(tmp_path / "a", backend="torch").embed(crops)
    assert np.all((onnx * torch_).sum(1) >= 0.9999)
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1, atol=1e-5)
    assert float((onnx @ onnx.T).min()) < 0.99, "inference must not map every face to one vector"
