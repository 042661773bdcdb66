"""MiniFASNet read from the source's state dicts: the shipped ONNX file is exactly what the export writes,
it equals the torch network, and it separates the source's own samples and the real replays as the source says.

The import needs torch and ../shared/models/minifasnet; the checks on real captures need ../shared/spoof.
Each test skips saying which is missing. The run-time path (vision.antispoof) needs neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from faces_support import REPO

from pam_faceid.common.images import read_image
from pam_faceid.vision import antispoof
from pam_faceid.camera import encode_jpeg
from pam_faceid.vision.faces import FacePipeline, FaceRefused

SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "models" / "minifasnet"
SPOOF = SHARED / "spoof"


def require(folder: Path) -> Path:
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (it ships beside the repo, not in it)")
    return folder


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("torch", reason="torch is not installed (./install.sh --dev)")
    from pam_faceid.model import minifasnet

    return minifasnet.load_pair(require(WEIGHTS))


def test_the_export_regenerates_the_shipped_files_byte_for_byte(pair, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.minifasnet", "export", "--source", str(WEIGHTS),
                           "--out", str(tmp_path)], check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shipped = antispoof.model_dir()
    for name in ("minifasnet.onnx", "minifasnet.json", "LICENSE", "NOTICE"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name
    meta = json.loads((shipped / "minifasnet.json").read_text())
    assert meta["source"]["commit"] == "b6d5f04ad78778917853b25c778acef6d5626d15"
    assert [i["sha256"][:8] for i in meta["inputs"].values()] == ["a5eb02e1", "84ee1d37"]
    assert (shipped / "minifasnet.onnx").stat().st_size < 4_000_000


def test_both_networks_take_every_weight_and_the_onnx_file_equals_torch(pair):
    import torch

    assert sum(p.numel() for p in pair.first.parameters()) == 434_560  # MiniFASNetV2
    assert sum(p.numel() for p in pair.second.parameters()) == 433_586  # MiniFASNetV1SE, with its SE gates
    batch = np.random.default_rng(0).uniform(0, 255, (3, 2, 3, 80, 80)).astype(np.float32)
    with torch.inference_mode():
        reference = pair(torch.from_numpy(batch[:, 0]), torch.from_numpy(batch[:, 1])).numpy()
    assert np.abs(antispoof.AntiSpoof().probabilities(batch) - reference).max() < 1e-5


def test_a_fine_tuned_export_keeps_the_imported_heads_beside_the_tuned_ones(pair, tmp_path):
    """``export --finetuned`` (for measuring, never shipped): imported heads unchanged on the shared trunks, the
    tuned heads from pair.pt; a pair.pt of other networks is refused in one line."""
    import torch

    from pam_faceid.model import minifasnet

    run = tmp_path / "run"
    run.mkdir()
    tuned = minifasnet.load_pair(WEIGHTS)
    with torch.no_grad():
        for name in tuned.first.head_parameters("conv_5"):
            param = dict(tuned.first.named_parameters())[name]
            param.mul_(1.5)
    torch.save({"first": tuned.first.state_dict(), "second": tuned.second.state_dict()}, run / "pair.pt")
    (run / "training.json").write_text(json.dumps({
        "command": "test", "commit": "test", "sets": [], "live": [], "frames": {}, "settings": {"learn_from": "conv_5"},
        "history": [{"epoch": 0, "balanced_error": 0.3}, {"epoch": 1, "balanced_error": 0.1}]}))
    export("--finetuned", str(run), "--out", str(tmp_path / "both"))
    export("--finetuned", str(run), "--heads", "tuned", "--out", str(tmp_path / "tuned"))
    batch = np.random.default_rng(1).uniform(0, 255, (3, 2, 3, 80, 80)).astype(np.float32)
    with torch.inference_mode():
        alone = pair(torch.from_numpy(batch[:, 0]), torch.from_numpy(batch[:, 1])).numpy()
        changed = tuned(torch.from_numpy(batch[:, 0]), torch.from_numpy(batch[:, 1])).numpy()
    both = antispoof.AntiSpoof(tmp_path / "both").probabilities(batch)
    assert both.shape == (3, 4, 3)
    assert np.abs(both[:, [0, 2]] - alone).max() < 1e-5 and np.abs(both[:, [1, 3]] - changed).max() < 1e-5
    assert np.abs(antispoof.AntiSpoof(tmp_path / "tuned").probabilities(batch) - changed).max() < 1e-5
    meta = json.loads((tmp_path / "both" / "minifasnet.json").read_text())
    assert meta["finetuned"]["heads"] == "both" and meta["finetuned"]["epoch"] == 1
    assert "fine-tuned by pam_faceid" in (tmp_path / "both" / "NOTICE").read_text()
    torch.save({"first": {}, "second": {}}, run / "pair.pt")
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.minifasnet", "export", "--source", str(WEIGHTS),
                           "--finetuned", str(run), "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"minifasnet: {run}/pair.pt: not the fine-tuned pair of these "
                                                "networks: Error(s) in loading state_dict for MiniFASNet:"]


def test_the_shipped_model_cannot_be_overwritten_by_a_fine_tuned_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.minifasnet", "export", "--finetuned", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert done.returncode == 2 and "--finetuned needs --out" in done.stderr


def export(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pam_faceid.model.minifasnet", "export", "--source", str(WEIGHTS),
                           *args], check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_state_dict_of_another_network_is_refused_in_one_line(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (./install.sh --dev)")
    from pam_faceid.model import minifasnet

    state = minifasnet.read_state_dict(require(WEIGHTS) / "2.7_80x80_MiniFASNetV2.pth")
    del state["conv_6_sep.conv.weight"]
    with pytest.raises(minifasnet.FormatError, match="no conv_6_sep.conv.weight in the state dict"):
        minifasnet.from_state_dict(state)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(minifasnet.FormatError, match="sha256 .* is not the expected"):
        minifasnet.read_state_dict(other, minifasnet.WEIGHTS["crop_2_7"][1])


def test_a_changed_model_file_is_refused_at_load(tmp_path):
    for name in ("minifasnet.onnx", "minifasnet.json"):
        (tmp_path / name).write_bytes((antispoof.model_dir() / name).read_bytes())
    with open(tmp_path / "minifasnet.onnx", "r+b") as fh:
        fh.seek(5000)
        fh.write(b"\x00\x01")
    with pytest.raises(antispoof.AntiSpoofError, match="is not the .* its minifasnet.json records"):
        antispoof.AntiSpoof(tmp_path)


def test_the_context_box_keeps_its_size_inside_the_frame():
    # Room around the face: 2.7 times the box, centred.
    assert antispoof.context_box((300, 200, 100, 100), 2.7, 1000, 800) == (215, 115, 485, 385)
    # Near the left edge the box slides right instead of being cut.
    assert antispoof.context_box((0, 200, 100, 100), 2.7, 1000, 800) == (0, 115, 270, 385)
    # A scale that cannot fit shrinks to the frame: the whole 640x480 frame, less one pixel.
    x0, y0, x1, y1 = antispoof.context_box((245, 165, 150, 150), 4.0, 640, 480)
    assert (y0, y1 - y0) == (0, 479) and x1 - x0 == 479


def test_any_box_in_any_frame_gives_in_bounds_crops():
    """Boxes a detector could report at the edge, past it, tiny or larger than the frame: never an empty slice."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = (int(v) for v in rng.integers(2, 700, 2))
        box = (rng.uniform(-2 * width, 2 * width), rng.uniform(-2 * height, 2 * height),
               rng.uniform(0, 3 * width), rng.uniform(0, 3 * height))
        for scale in antispoof.SCALES:
            x0, y0, x1, y1 = antispoof.context_box(box, scale, width, height)
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, (box, scale, width, height)
        frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        assert antispoof.crops(frame, box).shape == (2, 3, 80, 80)
    assert antispoof.crops(np.zeros((50, 60), np.uint8), (10, 10, 20, 20)).shape == (2, 3, 80, 80)  # IR, grey


def sent(frame: np.ndarray) -> np.ndarray:
    """The frame as faceidd decodes it: through the helper's JPEG (long side 640)."""
    return cv2.imdecode(np.frombuffer(encode_jpeg(frame), np.uint8), cv2.IMREAD_COLOR)


def frames_of(path: Path, limit: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    out = []
    while len(out) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        out.append(sent(frame))
    return out


def mean_real(frames: list[np.ndarray]) -> float:
    model, pipeline = antispoof.AntiSpoof(), FacePipeline()
    scores = []
    for frame in frames:
        try:
            scores.append(model.score(frame, pipeline.find(frame).box))
        except FaceRefused:
            continue
    assert scores and len(scores) >= len(frames) // 2, "the detector lost the face"
    return float(np.mean(scores))


@pytest.mark.parametrize("person, real_above, replay_below", [("apfol", 0.95, 0.05), ("zubair", 0.5, 0.3)])
def test_real_video_scores_real_and_its_replay_on_a_phone_does_not(person, real_above, replay_below):
    """The source-independent figures of ../shared/spoof/README.md: apfol 0.996 vs 0.017, zubair 0.591 vs 0.093."""
    videos = require(SPOOF) / "videos"
    real = mean_real(frames_of(next((videos / "real").glob(f"{person}.*")), 30))
    replay = mean_real(frames_of(next((videos / "replay").glob(f"{person}.*")), 30))
    assert real > real_above and replay < replay_below, (real, replay)


def test_the_sources_own_samples_separate():
    """Its live samples score real (0.66-1.0); its prints and screen photos do not (0.0-0.36)."""
    stills = require(SPOOF) / "stills"
    real = [mean_real([sent(read_image(p))]) for p in sorted((stills / "real").glob("*.jpg"))]
    attack = [mean_real([sent(read_image(p))]) for p in sorted((stills / "attack").glob("*.jpg"))]
    assert min(real) > 0.5 > max(attack), (real, attack)
