"""Shared test fixtures: real face images from ../shared/faces and fake cameras built from them.

The fixtures wrap the helpers of faces_support.py (tests import plain helpers and
``PERSON``/``OTHER_PERSON`` from there, never from this file). The fixtures of
the support modules named in ``pytest_plugins`` are registered here once, for
every test module (pytest reads pytest_plugins only in the root conftest).

Fixtures
- ``shared_faces`` -> Path of ``../shared/faces``.
- ``person_images(name, split="dev/lfw", limit=None)`` -> sorted image paths of one identity.
- ``make_video(paths, out_path=None, fps=10, size=None)`` -> Path of an MJPG .avi made from the images.
- ``make_image_folder(paths, folder=None, copy=False)`` -> Path of a folder holding the images.
- from faceidd_util: ``daemon_dir``, ``faceidd``, ``pam_files``, ``pam_service``, ``make_user``.
- from cli_support: ``temp_user``, ``cli_env``, ``daemon``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pytest
from faces_support import fill_image_folder, images_of, require_shared_faces, write_video

pytest_plugins = ["faceidd_util", "cli_support"]


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """Path of ../shared/faces (read-only real face images); skips the test when absent."""
    return require_shared_faces()


@pytest.fixture
def person_images() -> Callable[..., list[Path]]:
    """``person_images(name, split="dev/lfw", limit=None)``: sorted image paths of one identity."""
    return images_of


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """``make_video(paths, out_path=None, fps=10, size=None)``: an MJPG .avi in tmp_path from real images."""
    counter = iter(range(1_000_000))

    def make(paths: Sequence[Path | str] | Iterable[np.ndarray], out_path: Path | str | None = None,
             fps: float = 10, size: tuple[int, int] | None = None) -> Path:
        if out_path is None:
            out_path = tmp_path / f"video{next(counter)}.avi"
        return write_video(paths, out_path, fps=fps, size=size)

    return make


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_image_folder(paths, folder=None, copy=False)``: a folder in tmp_path holding those images."""
    counter = iter(range(1_000_000))

    def make(paths: Sequence[Path | str], folder: Path | str | None = None, copy: bool = False) -> Path:
        if folder is None:
            folder = tmp_path / f"images{next(counter)}"
        return fill_image_folder(paths, folder, copy=copy)

    return make
