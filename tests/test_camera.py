"""Frame sources on real face images: folders, videos, greyscale/IR, rotation, dark frames, failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from faces_support import PERSON
from pam_faceid import camera
from pam_faceid.common import protocol
from pam_faceid.camera import CameraError, FrameSource, open_source


def _grey(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2GRAY)


def test_folder_yields_every_image_in_name_order(person_images, make_image_folder):
    paths = person_images(PERSON, limit=8)
    folder = make_image_folder(list(reversed(paths)))
    with open_source(str(folder)) as source:
        frames = list(source)
    assert len(frames) == 8
    assert source.frames_read == 8 and source.dark_frames == 0 and source.skipped_files == 0
    for frame, path in zip(frames, paths):
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert np.array_equal(frame, cv2.imread(str(path)))


def test_video_file_yields_its_frames(person_images, make_video):
    paths = person_images(PERSON, limit=12)
    video = make_video(paths, fps=10)
    with open_source(str(video)) as source:
        assert source.kind == "video"
        frames = list(source)
    assert len(frames) == 12 == source.frames_read
    first = cv2.imread(str(paths[0]))
    assert frames[0].shape == first.shape and frames[0].dtype == np.uint8
    # MJPG is lossy: the decoded frame is close to, not equal to, the photograph.
    assert np.abs(frames[0].astype(int) - first.astype(int)).mean() < 8


def test_single_image_file_is_a_one_frame_source(person_images):
    path = person_images(PERSON, limit=1)[0]
    with open_source(str(path)) as source:
        assert len(list(source)) == 1


def test_greyscale_ir_images_come_out_as_three_channel_bgr(shared_faces, make_image_folder):
    yale = shared_faces / "train" / "yaleb" / "yaleB01"
    if not yale.is_dir():
        pytest.skip(f"greyscale set {yale} absent")
    paths = sorted(yale.iterdir())[:5]
    assert cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED).ndim == 2, "yaleb should be single-channel"
    with open_source(str(make_image_folder(paths)), dark_threshold=0) as source:
        frames = list(source)
    assert len(frames) == 5
    for frame in frames:
        assert frame.shape[2] == 3 and frame.dtype == np.uint8
        assert np.array_equal(frame[..., 0], frame[..., 1]) and np.array_equal(frame[..., 1], frame[..., 2])


def test_pgm_and_single_channel_png_and_16_bit_png(person_images, tmp_path):
    paths = person_images(PERSON, limit=3)
    folder = tmp_path / "ir"
    folder.mkdir()
    greys = [_grey(p) for p in paths]
    cv2.imwrite(str(folder / "a.pgm"), greys[0])
    cv2.imwrite(str(folder / "b.png"), greys[1])
    cv2.imwrite(str(folder / "c.png"), greys[2].astype(np.uint16) * 257)
    with open_source(str(folder)) as source:
        frames = list(source)
    assert len(frames) == 3 and source.skipped_files == 0
    for frame, grey in zip(frames, greys):
        assert frame.shape == grey.shape + (3,) and frame.dtype == np.uint8
        assert np.abs(frame[..., 0].astype(int) - grey.astype(int)).max() <= 1


def test_greyscale_video_comes_out_as_bgr(person_images, make_video):
    greys = [_grey(p) for p in person_images(PERSON, limit=4)]
    video = make_video([cv2.cvtColor(g, cv2.COLOR_GRAY2BGR) for g in greys])
    with open_source(str(video)) as source:
        frames = list(source)
    assert len(frames) == 4 and all(f.shape == greys[0].shape + (3,) for f in frames)


@pytest.mark.parametrize("degrees, k", [(90, -1), (180, 2), (270, 1)])
def test_rotation_is_clockwise_degrees(person_images, degrees, k, tmp_path):
    path = person_images(PERSON, limit=1)[0]
    original = cv2.imread(str(path))
    cropped = original[:, :200]  # not square, so a wrong rotation shows in the shape
    cv2.imwrite(str(tmp_path / "face.png"), cropped)
    with open_source(str(tmp_path / "face.png"), rotate=degrees) as source:
        (frame,) = list(source)
    assert np.array_equal(frame, np.rot90(cropped, k=k))


def test_bad_rotation_is_refused(person_images):
    with pytest.raises(CameraError, match="rotate"):
        open_source(str(person_images(PERSON, limit=1)[0]), rotate=45)


def _darkened(paths: list[Path], out: Path, factor: float) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        dark = (cv2.imread(str(path)).astype(np.float32) * factor).astype(np.uint8)
        target = out / f"{path.stem}_dark.png"
        cv2.imwrite(str(target), dark)
        written.append(target)
    return written


def test_dark_frames_are_skipped_and_counted(person_images, make_image_folder, tmp_path):
    paths = person_images(PERSON, limit=6)
    dark = _darkened(paths[:3], tmp_path / "dark", 0.05)
    folder = make_image_folder(paths[3:] + dark)
    with open_source(str(folder), dark_threshold=10.0) as source:
        frames = list(source)
    assert len(frames) == 3
    assert source.dark_frames == 3 and source.frames_read == 6
    assert all(camera.brightness_percent(f) >= 10.0 for f in frames)
    with open_source(str(folder), dark_threshold=0.0) as source:
        assert len(list(source)) == 6 and source.dark_frames == 0


def test_dark_frames_in_a_video_are_skipped(person_images, make_video, tmp_path):
    paths = person_images(PERSON, limit=4)
    frames = [cv2.imread(str(p)) for p in paths]
    dark = [(f * 0.04).astype(np.uint8) for f in frames[:2]]
    video = make_video(dark + frames[2:])
    with open_source(str(video)) as source:
        assert len(list(source)) == 2
    assert source.dark_frames == 2 and source.frames_read == 4


def test_really_dark_yale_frames_are_skipped(shared_faces):
    """Extended Yale B has frames lit from behind that are nearly black, as a covered IR camera gives."""
    yale = shared_faces / "train" / "yaleb" / "yaleB01"
    if not yale.is_dir():
        pytest.skip(f"greyscale set {yale} absent")
    files = sorted(p for p in yale.iterdir() if p.is_file())
    expected_dark = sum(camera.brightness_percent(camera.read_image(p)) < 10.0 for p in files)
    assert expected_dark > 0
    with open_source(str(yale), dark_threshold=10.0) as source:
        kept = list(source)
    assert source.dark_frames == expected_dark
    assert len(kept) == len(files) - expected_dark


def test_unreadable_files_in_a_folder_are_skipped_and_counted(person_images, make_image_folder):
    paths = person_images(PERSON, limit=3)
    folder = make_image_folder(paths, copy=True)
    (folder / "00_notes.txt").write_text("not an image\n")
    (folder / "01_empty.jpg").write_bytes(b"")
    (folder / "02_truncated.jpg").write_bytes(paths[0].read_bytes()[:200])
    (folder / "03_subfolder").mkdir()
    (folder / "04_broken_link.jpg").symlink_to(folder / "missing.jpg")
    with open_source(str(folder)) as source:
        frames = list(source)
    assert len(frames) == 3
    assert source.skipped_files == 3
    assert source.frames_read == 3


def test_missing_v4l2_device_fails_fast():
    device = next((f"/dev/video{n}" for n in range(97, 100) if not os.path.exists(f"/dev/video{n}")), None)
    assert device is not None
    start = time.monotonic()
    with pytest.raises(CameraError, match="no such camera device"):
        open_source(device)
    assert time.monotonic() - start < 1.0


def test_default_device_absent_here_fails_fast():
    if os.path.exists("/dev/video0"):
        pytest.skip("this machine has /dev/video0")
    start = time.monotonic()
    with pytest.raises(CameraError, match="/dev/video0"):
        FrameSource.from_config(SimpleNamespace(device="/dev/video0", width=640, height=480, fps=30,
                                                force_mjpeg=True, exposure=100, rotate=0, dark_threshold=10.0))
    assert time.monotonic() - start < 1.0


def test_a_device_that_is_not_a_camera_fails_fast():
    start = time.monotonic()
    with pytest.raises(CameraError, match="/dev/null"):
        open_source("/dev/null")
    assert time.monotonic() - start < 1.0


def test_a_stuck_open_is_abandoned_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(CameraError, match="did not open within"):
        camera._run_with_timeout("slow camera", lambda: time.sleep(3), 0.3)
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("spec, message", [
    ("/nonexistent/faces", "no such file or folder"),
    ("", "empty"),
])
def test_nonexistent_sources_fail_with_a_clear_message(spec, message):
    with pytest.raises(CameraError, match=message):
        open_source(spec)


def test_a_file_that_is_not_a_video_fails(tmp_path):
    bogus = tmp_path / "capture.avi"
    bogus.write_bytes(b"this is not a video" * 100)
    with pytest.raises(CameraError, match="not a video file"):
        open_source(str(bogus))


def test_empty_folder_fails(tmp_path):
    with pytest.raises(CameraError, match="no files"):
        open_source(str(tmp_path))


def test_end_of_source_stops_cleanly(person_images, make_video):
    video = make_video(person_images(PERSON, limit=3))
    source = open_source(str(video))
    assert len([next(source) for _ in range(3)]) == 3
    with pytest.raises(StopIteration):
        next(source)
    with pytest.raises(StopIteration):
        next(source)
    assert list(source) == [] and source.read() is None
    source.close()
    source.close()
    assert source.closed


def test_context_manager_closes_and_reads_nothing_after(person_images, make_image_folder):
    folder = make_image_folder(person_images(PERSON, limit=3))
    with open_source(str(folder)) as source:
        next(source)
    assert source.closed and list(source) == []


def test_frames_timeout_bounds_the_wait(person_images, make_image_folder):
    folder = make_image_folder(person_images(PERSON, limit=5))
    with open_source(str(folder)) as source:
        assert list(source.frames(timeout=0.0)) == []
        assert source.frames_read == 0
        assert len(list(source.frames(timeout=30))) == 5


def test_from_config_applies_rotation_and_threshold(person_images, make_image_folder):
    paths = person_images(PERSON, limit=2)
    section = SimpleNamespace(device=str(make_image_folder(paths)), width=640, height=480, fps=30,
                              force_mjpeg=False, exposure=-1, rotate=90, dark_threshold=100.0)
    with FrameSource.from_config(section) as source:
        assert list(source) == [] and source.dark_frames == 2
    section.dark_threshold = 10.0
    with FrameSource.from_config(section) as source:
        frame = next(source)
    h, w = cv2.imread(str(paths[0])).shape[:2]
    assert frame.shape[:2] == (w, h)


def test_camera_module_stays_light():
    """The PAM helper imports camera: no torch or onnxruntime, and not even OpenCV or numpy until a frame is decoded."""
    code = ("import sys, pam_faceid.camera; "
            "bad = [m for m in ('torch', 'onnxruntime', 'cv2', 'numpy', 'pam_faceid.vision.faces', 'pam_faceid.vision.embedder') "
            "if m in sys.modules]; sys.exit(', '.join(bad) or None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_frames_are_encoded_as_downscaled_jpeg():
    frame = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), np.uint8)
    data = camera.encode_jpeg(frame)
    assert protocol.jpeg_size(data) == (640, 360)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (360, 640, 3)
    small = frame[:200, :300]
    assert protocol.jpeg_size(camera.encode_jpeg(small)) == (300, 200)


def test_small_jpeg_files_go_out_as_they_are_and_others_are_re_encoded(person_images, tmp_path):
    """An image folder's small JPEGs are sent byte for byte (no decoding); PNGs, big JPEGs and dark PNGs are not."""
    path = person_images(PERSON, limit=1)[0]
    face = cv2.imread(str(path))
    folder = tmp_path / "camera"
    folder.mkdir()
    (folder / "1.jpg").write_bytes(path.read_bytes())
    cv2.imwrite(str(folder / "2.png"), face)
    cv2.imwrite(str(folder / "3.jpg"), cv2.resize(face, (1000, 1000)))
    cv2.imwrite(str(folder / "4.png"), (face * 0.03).astype(np.uint8))  # dark: skipped
    (folder / "5.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # unreadable: skipped
    with open_source(str(folder)) as source:
        sent = list(source.jpeg_frames())
    assert sent[0] == path.read_bytes()
    assert [protocol.jpeg_size(data) for data in sent] == [(250, 250), (250, 250), (640, 640)]
    assert source.dark_frames == 1 and source.skipped_files == 1 and source.frames_read == 4
    decoded = cv2.imdecode(np.frombuffer(sent[1], np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(decoded.astype(int) - face.astype(int)).mean() < 4


def test_a_progressive_jpeg_file_is_re_encoded_as_the_daemon_takes_it(person_images, make_image_folder):
    """faceidd refuses progressive frames (protocol.frame_problem), so the helper sends such a file re-encoded."""
    path = person_images(PERSON, limit=1)[0]
    folder = make_image_folder([])
    cv2.imwrite(str(folder / "face.jpg"), cv2.imread(str(path)), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert protocol.frame_problem((folder / "face.jpg").read_bytes()).startswith("progressive JPEG")
    with open_source(str(folder)) as source:
        (data,) = list(source.jpeg_frames())
    assert protocol.frame_problem(data) is None and protocol.jpeg_size(data) == (250, 250)


def test_rotated_jpeg_folder_is_decoded_and_turned(person_images, make_image_folder):
    path = person_images(PERSON, limit=1)[0]
    cropped = cv2.imread(str(path))[:, :200]
    folder = make_image_folder([])
    cv2.imwrite(str(folder / "face.jpg"), cropped)
    assert camera.sends_as_is(str(folder)) and not camera.sends_as_is(str(folder), rotate=90)
    with open_source(str(folder), rotate=90) as source:
        (data,) = list(source.jpeg_frames())
    assert protocol.jpeg_size(data) == (250, 200)


def test_jpeg_frames_of_a_folder_stop_at_the_timeout(person_images, make_image_folder):
    with open_source(str(make_image_folder(person_images(PERSON, limit=3)))) as source:
        assert list(source.jpeg_frames(timeout=0)) == [] and source.frames_read == 0


def test_sending_a_jpeg_folder_loads_neither_opencv_nor_numpy(person_images, make_image_folder):
    folder = make_image_folder(person_images(PERSON, limit=3))
    code = ("import sys; from pam_faceid.camera import open_source\n"
            f"frames = list(open_source({str(folder)!r}).jpeg_frames())\n"
            "assert len(frames) == 3, len(frames)\n"
            "sys.exit(', '.join(m for m in ('cv2', 'numpy') if m in sys.modules) or None)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
