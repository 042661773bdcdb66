"""Real face images for tests: who is who, where the photos are, and camera files built from them.

The project's rule is "no mocks of the camera": a fake camera is a frame source
over real files. These helpers build such files (a video, a folder of images or
frames) in temporary folders from the real photographs in ``../shared/faces``
and skip the calling test, with the reason, when that folder is absent (a fresh
clone elsewhere). Tests import them from here; conftest.py wraps some as fixtures.

``PERSON`` and ``OTHER_PERSON`` name two dev/lfw identities with many images
(genuine and impostor), so tests agree on who is who.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pytest

from pam_faceid.common.images import IMAGE_SUFFIXES

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "faces"

PERSON = "Tony_Blair"
"""dev/lfw identity with the most images (144): the enrolled user in tests."""
OTHER_PERSON = "Hugo_Chavez"
"""dev/lfw identity with 71 images: the impostor in tests."""


def require_shared_faces() -> Path:
    """Path of ../shared/faces, or skip the calling test with the reason."""
    if not SHARED_FACES.is_dir():
        pytest.skip(f"real face images not available: {SHARED_FACES} is absent (it ships beside the repo, not in it)")
    return SHARED_FACES


def images_of(name: str, split: str = "dev/lfw", limit: int | None = None) -> list[Path]:
    """Sorted image paths of identity ``name`` under ``../shared/faces/<split>``; skips the test when absent."""
    folder = require_shared_faces() / split / name
    if not folder.is_dir():
        pytest.skip(f"identity {name!r} not found in {folder.parent}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        pytest.skip(f"identity {name!r} has no images in {folder}")
    return paths[:limit] if limit is not None else paths


def _check_outside_repo(path: Path) -> None:
    """Test data is made in temporary folders: writing face images into the repo would leak them into git."""
    resolved = path.resolve()
    if resolved == REPO or REPO in resolved.parents:
        raise ValueError(f"{path}: test files must not be written inside the repository {REPO}")


def write_video(paths: Sequence[Path | str] | Iterable[np.ndarray], out_path: Path | str, fps: float = 10,
                size: tuple[int, int] | None = None) -> Path:
    """Write images (paths or BGR arrays) as an MJPG .avi; every frame is resized to ``size`` (w, h) or the first's."""
    out_path = Path(out_path)
    _check_outside_repo(out_path)
    writer = None
    count = 0
    try:
        for item in paths:
            frame = item if isinstance(item, np.ndarray) else cv2.imread(str(item), cv2.IMREAD_COLOR)
            if frame is None:
                raise ValueError(f"{item}: not a readable image")
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            if writer is None:
                size = size or (frame.shape[1], frame.shape[0])
                writer = cv2.VideoWriter(str(out_path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), size)
                if not writer.isOpened():
                    raise RuntimeError(f"{out_path}: cv2.VideoWriter could not open (use a .avi name)")
            if (frame.shape[1], frame.shape[0]) != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            writer.write(frame)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        raise ValueError("write_video needs at least one frame")
    return out_path


def fill_image_folder(paths: Sequence[Path | str], folder: Path | str, copy: bool = False) -> Path:
    """Put ``paths`` into ``folder`` (symlinks, or copies with ``copy=True``), keeping names so order is kept."""
    folder = Path(folder)
    _check_outside_repo(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for src in map(Path, paths):
        dst = folder / src.name
        if dst.exists() or dst.is_symlink():
            dst.unlink()
        if copy:
            shutil.copyfile(src, dst)
        else:
            os.symlink(src.resolve(), dst)
    return folder



def session_frames(paths: Sequence[Path | str], per_photo: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Camera-like frames of the photos a person enrolled with: as a camera sees them again at login.

    The same face under the same light, moved, scaled, turned and with sensor
    noise (faceid demo's frames). Login tests show these for "the enrolled
    person": they test the path, and a face seen under enrolment conditions
    is what a login sees. Recognition across different photos (new light,
    age, pose) is measured by ``faceid evaluate`` on dev, not asserted here.
    """
    from pam_faceid.cli.demo import camera_frames
    from pam_faceid.common.images import read_image

    return [frame for i, path in enumerate(paths) for frame in camera_frames(read_image(path), per_photo, seed + i)]


def write_frames(frames: Iterable[np.ndarray], folder: Path | str) -> Path:
    """A camera folder of JPEG frames (frame_000.jpg, ...) that every user can read (0755/0644)."""
    folder = Path(folder)
    _check_outside_repo(folder)
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.chmod(0o755)
    for i, frame in enumerate(frames):
        path = folder / f"frame_{i:03d}.jpg"
        cv2.imwrite(str(path), frame)
        path.chmod(0o644)
    return folder
