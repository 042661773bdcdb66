"""Fine-tuning the anti-spoofing heads: only the layers from the split up learn, people never straddle the
train/validation split, and the data of the measurement is refused as training data.

Needs torch and ../shared/models/minifasnet (each test skips saying which is missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from cli_support import FACEID
from faces_support import REPO

from pam_faceid.cli.demo import camera_frames
from pam_faceid.common.images import read_image
from pam_faceid.model import pad

WEIGHTS = REPO.parent / "shared" / "models" / "minifasnet"


@pytest.fixture(scope="module")
def training():
    pytest.importorskip("torch", reason="torch is not installed (./install.sh --dev)")
    if not WEIGHTS.is_dir():
        pytest.skip(f"{WEIGHTS} is absent (it ships beside the repo, not in it)")
    from pam_faceid.model import pad_training

    return pad_training


def crops_of(kinds: list[str], seed: int, pad_training):
    """Crops whose class a head can learn: bright for bona fide kinds, dark for attacks (plus noise)."""
    rng = np.random.default_rng(seed)
    labels = np.array([pad_training.REAL if pad.is_bona_fide(k) else pad_training.ATTACK for k in kinds])
    base = np.where(labels == pad_training.REAL, 200, 40)[:, None, None, None, None]
    x = np.clip(base + rng.integers(-30, 30, (len(kinds), 2, 3, 80, 80)), 0, 255).astype(np.uint8)
    return pad_training.Crops(x, labels, kinds, [f"person{i % 4}" for i in range(len(kinds))])


def test_only_the_heads_learn_and_the_trunks_keep_the_imported_weights(training):
    import torch

    from pam_faceid.model import minifasnet

    pair = minifasnet.load_pair(WEIGHTS)
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    kinds = ["genuine_head", "photo_still"] * 16
    data, val = crops_of(kinds, 0, training), crops_of(kinds, 1, training)
    tuned, history = training.train(pair, data, val, epochs=2, lr=1e-2, pull=0.0, batch=16, seed=0,
                                    learn_from="conv_5")
    assert [row["epoch"] for row in history] == [0, 1, 2]
    # the classes are learnable, so a trained epoch beats the imported weights and is the one kept
    assert min(row["balanced_error"] for row in history[1:]) < history[0]["balanced_error"]
    heads = {f"{net}.{name}" for net in ("first", "second") for name in getattr(pair, net).head_parameters("conv_5")}
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= heads, sorted(changed - heads)[:3]
    # batch norm statistics are buffers, never learned: the imported ones stay everywhere
    assert all(torch.equal(before[k], after[k]) for k in before if "running_" in k)


def test_a_person_is_on_one_side_of_the_validation_split_only(training):
    names = [f"person{i}" for i in range(400)]
    held = [training.is_validation(n, 0.15) for n in names]
    assert held == [training.is_validation(n, 0.15) for n in names]
    assert 0.08 < sum(held) / len(held) < 0.22
    folder = pad.Session(Path("/x/photo_still/0007_Jane_Doe"), "photo_still", still=False)
    photo = pad.Session(Path("/faces/train/lfw/Jane_Doe/Jane_Doe_0001.jpg"), "real_lfw", still=True)
    assert training.identity_of(folder) == training.identity_of(photo) == "Jane_Doe"


def test_the_measured_captures_are_refused_as_training_data(training, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.pad_training", "--sets",
                           str(REPO.parent / "shared" / "spoof" / "videos"), "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 2
    assert "never trained on" in done.stderr.strip().splitlines()[-1]


def test_a_set_rendered_from_dev_is_refused_too(training, tmp_path):
    (tmp_path / "manifest.json").write_text('{"split": "dev/lfw", "sessions": []}')
    assert "rendered it from dev/lfw" in training.measured(tmp_path)
    (tmp_path / "manifest.json").write_text('{"split": "train/celeba", "sessions": []}')
    assert training.measured(tmp_path) is None


def test_a_run_writes_weights_a_measurable_export_and_its_report(training, tmp_path):
    """Capture folders in, pair.pt and training.json out, then an export faceid liveness --model can measure."""
    samples = Path(str(resources.files("pam_faceid") / "data" / "samples"))
    photos = sorted(p for p in samples.rglob("*.jpg"))[:2]
    for kind in ("real", "print"):
        for n, photo in enumerate(photos):
            folder = tmp_path / "sets" / kind / f"{n:04d}_{photo.stem}"
            folder.mkdir(parents=True)
            for i, frame in enumerate(camera_frames(read_image(photo), 3, seed=n)):
                cv2.imwrite(str(folder / f"{i}.jpg"), frame)
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.pad_training", "--sets", str(tmp_path / "sets"),
                           "--out", str(run), "--epochs", "1", "--batch", "4", "--learn-from", "conv_5",
                           "--validation", "0.5"], capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run / "training.json").read_text())
    assert [row["epoch"] for row in report["history"]] == [0, 1]
    assert report["frames"]["train"] + report["frames"]["validation"] == 12
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.minifasnet", "export", "--source", str(WEIGHTS),
                           "--finetuned", str(run), "--out", str(tmp_path / "model")], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([FACEID, "liveness", str(tmp_path / "sets"), "--model", str(tmp_path / "model"), "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    measured = json.loads(done.stdout)
    assert measured["model"] == json.loads((tmp_path / "model" / "minifasnet.json").read_text())["output"]["sha256"]
    assert sorted(measured["modes"]["basic"]["kinds"]) == ["print", "real"]
