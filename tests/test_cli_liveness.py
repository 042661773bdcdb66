"""faceid liveness: APCER per attack kind and BPCER from labelled captures, and the metric code under it.

The metric tests use hand-written per-frame scores (pam_faceid.model.pad's
rules, no model); the command tests run the real command on a folder built
from the bundled sample photographs and on ../shared/spoof's stills (skipped
when absent: real captures are never copied into the repo).
"""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path

import cv2
import pytest
from cli_support import FACEID, REPO

from pam_faceid.cli.demo import camera_frames
from pam_faceid.common.images import read_image
from pam_faceid.model import pad

SAMPLES = Path(str(resources.files("pam_faceid") / "data" / "samples"))
STILLS = REPO.parent / "shared" / "spoof" / "stills"


def faceid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FACEID, "liveness", *args], capture_output=True, text=True, timeout=300, check=False)


def test_wilson_interval_matches_the_textbook_values():
    low, high = pad.wilson(0, 10)
    assert low == 0.0 and abs(high - 0.2775) < 1e-4
    low, high = pad.wilson(5, 10)
    assert abs(low - 0.2366) < 1e-4 and abs(high - 0.7634) < 1e-4
    assert pad.wilson(0, 0) == (0.0, 1.0)


def test_apcer_per_kind_and_bpcer_count_sessions_live_at_any_frame():
    """A replay live only in its first two frames still counts as accepted: faceidd stops at the first live verdict."""
    sessions = [
        pad.Session(Path("r1"), "real", still=False, scores=[0.9, 0.8, 0.7]),
        pad.Session(Path("r2"), "real", still=False, scores=[0.2, 0.3, 0.1]),  # refused: a BPCER error
        pad.Session(Path("r3"), "genuine_head", still=True, scores=[0.6]),  # a still, shown for min_frames frames
        pad.Session(Path("p1"), "replay", still=False, scores=[0.7, 0.6, 0.0, 0.0]),  # live at frame 2: accepted
        pad.Session(Path("p2"), "replay", still=False, scores=[0.7, 0.1, 0.9]),  # means .4, .57: accepted at frame 3
        pad.Session(Path("p3"), "replay", still=False, scores=[0.1, 0.2]),
        pad.Session(Path("m1"), "mask", still=True, scores=[0.4]),
        pad.Session(Path("m2"), "mask", still=True),  # no face found: not scored
    ]
    result = pad.measure(sessions, min_frames=2, threshold=0.5)
    assert result["apcer"]["replay"]["errors"] == 2 and result["apcer"]["replay"]["trials"] == 3
    assert result["apcer"]["mask"]["errors"] == 0 and result["kinds"]["mask"]["no_face"] == 1
    assert result["bpcer"]["session"]["errors"] == 1 and result["bpcer"]["session"]["trials"] == 3
    assert result["kinds"]["real"]["frame"]["errors"] == 3  # 0.2, 0.3, 0.1 each below 0.5
    assert set(result["apcer"]) == {"replay", "mask"}


def test_kinds_and_sessions_come_from_the_folders(tmp_path):
    photo = read_image(SAMPLES / "sample_person" / "eileen_collins.jpg")
    (tmp_path / "real").mkdir()
    cv2.imwrite(str(tmp_path / "real" / "a.jpg"), photo)
    frames = tmp_path / "print" / "session1"
    frames.mkdir(parents=True)
    for i, frame in enumerate(camera_frames(photo, 3, seed=0)):
        cv2.imwrite(str(frames / f"{i}.jpg"), frame)
    (tmp_path / "print" / "notes.txt").write_text("not a capture")
    found = {(s.kind, s.path.name, s.still, s.bona_fide) for s in pad.scan([tmp_path])}
    assert found == {("real", "a.jpg", True, True), ("print", "session1", False, False)}
    with pytest.raises(ValueError, match="not a folder"):
        pad.scan([tmp_path / "absent"])


def test_the_command_measures_a_photo_moved_about_as_an_attack(tmp_path):
    photo = read_image(SAMPLES / "sample_person" / "eileen_collins.jpg")
    frames = tmp_path / "print" / "moved"
    frames.mkdir(parents=True)
    for i, frame in enumerate(camera_frames(photo, 4, seed=2)):
        cv2.imwrite(str(frames / f"{i}.jpg"), frame)
    done = faceid(str(tmp_path), "--mode", "basic", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["modes"]["basic"]["apcer"]["print"]["errors"] == 0
    assert result["modes"]["basic"]["apcer"]["print"]["trials"] == 1
    assert len(result["sessions"][0]["scores"]) == 4 and result["sessions"][0]["frames"] == 4


def test_the_command_on_the_sources_stills(tmp_path):
    if not STILLS.is_dir():
        pytest.skip(f"{STILLS} is absent (real captures ship beside the repo, not in it)")
    done = faceid(str(STILLS))
    assert done.returncode == 0, done.stderr
    assert "| attack | APCER | 5 (0) | 0/5 = 0.0 % | 0.0-43.5 % |" in done.stdout
    assert done.stdout.count("| attack | APCER | 5 (0) | 0/5 = 0.0 % | 0.0-43.5 % |") == 2  # basic and strict
    assert done.stdout.count("| real | BPCER | 4 (0) | 0/4 = 0.0 % | 0.0-49.0 % |") == 2
    assert "liveness.mode strict" in done.stdout


def test_bad_input_is_one_line(tmp_path):
    done = faceid(str(tmp_path / "absent"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "absent: not a folder" in done.stderr
    done = faceid(str(tmp_path), "--threshold", "1.5")
    assert done.returncode == 2 and "--threshold 1.5: must be from 0 to 1" in done.stderr


def test_another_model_folder_is_measured_and_a_wrong_one_named(tmp_path):
    """--model scores with the folder's model: the shipped files copied give the shipped scores; a folder whose
    ONNX file is not the one its minifasnet.json records is refused in one line."""
    from pam_faceid.vision.antispoof import META_FILE, ONNX_FILE, model_dir

    photo = read_image(SAMPLES / "sample_person" / "eileen_collins.jpg")
    captures = tmp_path / "captures" / "print" / "one"
    captures.mkdir(parents=True)
    for i, frame in enumerate(camera_frames(photo, 2, seed=3)):
        cv2.imwrite(str(captures / f"{i}.jpg"), frame)
    model = tmp_path / "model"
    model.mkdir()
    for name in (ONNX_FILE, META_FILE):
        (model / name).write_bytes((model_dir() / name).read_bytes())
    shipped = json.loads(faceid(str(tmp_path / "captures"), "--json").stdout)
    copied = faceid(str(tmp_path / "captures"), "--json", "--model", str(model))
    assert copied.returncode == 0, copied.stderr
    assert len(shipped["sessions"][0]["scores"]) == 2
    assert json.loads(copied.stdout)["sessions"][0]["scores"] == shipped["sessions"][0]["scores"]
    (model / ONNX_FILE).write_bytes(b"not a model")
    done = faceid(str(tmp_path / "captures"), "--model", str(model))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert f"{model / ONNX_FILE}: sha256" in done.stderr and "minifasnet export" in done.stderr
