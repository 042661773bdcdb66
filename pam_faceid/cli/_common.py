"""Pieces the admin commands share: config, store, model, user checks, frame capture, daemon reload.

Kept in one place so every command words the same problem the same way
(one line, the fix in it) and picks the same model, threshold and store the
daemon uses. Not a command: it is not listed in COMMANDS.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from pam_faceid.cli import EXIT_FAILURE, EXIT_NOT_ROOT, EXIT_USAGE, CommandError

CAMERA_TIMEOUT = 30.0
"""Seconds a live capture may take before it gives up on the missing good frames."""


def formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter


def require_root(what: str) -> None:
    """Enrolments and /etc/pam.d are root's: say so plainly instead of failing on a permission error."""
    if os.geteuid() != 0:
        raise CommandError(f"{what} needs root: run it with sudo", EXIT_NOT_ROOT)


def load_cfg(args: argparse.Namespace) -> Any:
    """The config the daemon reads (--config, $FACEID_CONFIG or the default), or a one-line error."""
    from pam_faceid.common.config import ConfigError, load_config

    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None


def check_user(user: str) -> pwd.struct_passwd:
    """A user must exist on this machine: the PAM helper refuses unknown users anyway."""
    from pam_faceid.common.store import StoreError, validate_user

    try:
        validate_user(user)
    except StoreError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise CommandError(f"no user {user!r} on this machine (see getent passwd)", EXIT_USAGE) from None


def default_user() -> str:
    """The person who ran sudo, else the current user: whom 'faceid test' means without USER."""
    name = os.environ.get("SUDO_USER")
    if name:
        return name
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        raise CommandError("cannot tell who you are: give USER", EXIT_USAGE) from None


def open_store(cfg: Any) -> Any:
    from pam_faceid.common.store import Store

    return Store(cfg.daemon.state_dir)


def store_error(exc: Exception) -> CommandError:
    return CommandError(str(exc).splitlines()[0], EXIT_FAILURE)


def model_dir(cfg: Any) -> Path:
    from pam_faceid.vision.embedder import default_model_dir

    return Path(cfg.model.path) if cfg.model.path else default_model_dir()


def load_embedder(cfg: Any) -> Any:
    """The embedder the daemon uses (model.path / model.backend); a missing model is one line."""
    from pam_faceid.vision.embedder import Embedder, ModelError

    try:
        return Embedder(cfg.model.path or None, cfg.model.backend)
    except ModelError as exc:
        raise CommandError(f"{exc} (install the model, or set model.path)", EXIT_FAILURE) from None


def model_id(embedder: Any) -> str:
    """Same identity the daemon compares enrolments with (embedder.model_id_of)."""
    from pam_faceid.vision.embedder import model_id_of

    return model_id_of(embedder)


def current_model_id(cfg: Any) -> str | None:
    """The id faceidd gives the configured model (embedder.model_id_of), from its files alone; None when unusable."""
    from types import SimpleNamespace

    from pam_faceid.vision.embedder import ModelError, default_model_dir, load_metadata, model_id_of

    folder = Path(cfg.model.path) if cfg.model.path else default_model_dir()
    try:
        meta = load_metadata(folder)
    except ModelError:
        return None
    return model_id_of(SimpleNamespace(metadata=meta, model_dir=folder)) or None


def threshold(cfg: Any, embedder: Any) -> float:
    """auth.threshold, or the model's shipped one when it is 'auto' (as the daemon does)."""
    value = cfg.auth.threshold
    return float(embedder.threshold) if value == "auto" else float(value)


def operating_point(cfg: Any, embedder: Any) -> Callable[[np.ndarray], dict[str, Any]]:
    """templates -> the user's operating point (vision.operating.fit) as stored, against the bank faceid calibrate
    uses (the admin's, else the one shipped with the model) and the global threshold; without a bank, from the
    templates alone (said once)."""
    from pam_faceid.model import negatives
    from pam_faceid.vision.operating import fit

    try:
        bank, where = negatives.load_default(cfg.daemon.state_dir, model_dir(cfg), model_id(embedder))
    except negatives.NegativesError as exc:
        print(f"note: no negative bank ({str(exc).splitlines()[0]}): operating point from the templates alone",
              file=sys.stderr)
        bank, where = None, "none"
    base = threshold(cfg, embedder)

    def point(templates: np.ndarray) -> dict[str, Any]:
        return fit(templates, bank, base, bank_source=where).to_json()

    return point


def reload_daemon(cfg: Any, command: str) -> bool:
    """Ask faceidd to re-read enrolments; a daemon that is not running reads them when it starts."""
    from pam_faceid.common.protocol import DaemonError, request_reload

    try:
        request_reload(cfg.daemon.socket)
    except DaemonError as exc:
        print(f"note: daemon not reloaded ({str(exc).splitlines()[0]}); it reads the change when it starts",
              file=sys.stderr)
        return False
    print("daemon reloaded")
    return True


@dataclass
class Frame:
    """One frame to look at, with where it came from for the messages."""

    image: np.ndarray
    where: str


def _video_stride(path: str, wanted: int | None) -> int:
    """Every k-th frame of a video, so N templates span the whole clip instead of its first second."""
    import cv2

    if not wanted:
        return 1
    capture = cv2.VideoCapture(path)
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    return max(1, count // max(1, wanted * 2))


def frames_from(paths: Iterable[str], wanted: int | None = None) -> Iterator[Frame]:
    """Frames of image files, image folders (sorted by name) and video files, in the order given.

    A path that is none of those is a one-line CommandError; an unreadable file
    inside a folder is reported and skipped.
    """
    from pam_faceid.vision.camera import CameraError, open_source
    from pam_faceid.common.images import IMAGE_SUFFIXES, read_image

    for path in paths:
        target = Path(path)
        if not target.exists():
            raise CommandError(f"{path}: no such file or folder", EXIT_USAGE)
        if target.is_dir() or target.suffix.lower() in IMAGE_SUFFIXES:
            files = sorted((p for p in target.iterdir() if p.is_file()), key=lambda p: p.name) \
                if target.is_dir() else [target]
            if not files:
                raise CommandError(f"{path}: folder has no files", EXIT_USAGE)
            for file in files:
                image = read_image(file)
                if image is None:
                    print(f"{file}: skipped: not a readable image", file=sys.stderr)
                    continue
                yield Frame(image, str(file))
            continue
        try:
            source = open_source(path, dark_threshold=0.0)
        except CameraError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
        stride = _video_stride(path, wanted)
        with source:
            for index, image in enumerate(source, 1):
                if (index - 1) % stride == 0:
                    yield Frame(image, f"{path} frame {index}")


def _every_frame(source: Any) -> Iterator[np.ndarray]:
    while (image := source.read()) is not None:
        yield image


def frames_from_camera(cfg: Any, timeout: float = CAMERA_TIMEOUT, dark: bool = False) -> Iterator[Frame]:
    """Frames of camera.device until it ends or ``timeout`` seconds pass; with ``dark`` also the frames under
    camera.dark_threshold (guided enrolment tells the person it is too dark instead of waiting in silence)."""
    from pam_faceid.vision.camera import CameraError, FrameSource

    try:
        source = FrameSource.from_config(cfg.camera)
    except CameraError as exc:
        raise CommandError(f"camera: {exc}", EXIT_FAILURE) from None
    deadline = time.monotonic() + timeout
    with source:
        images = _every_frame(source) if dark else source.frames(timeout=timeout)
        for index, image in enumerate(images, 1):
            yield Frame(image, f"camera frame {index}")
            if time.monotonic() > deadline:
                break


def hint(reason: str) -> str:
    """The retry hint for a refused frame (faces.REFUSALS), imported late: faces loads OpenCV."""
    from pam_faceid.vision.faces import REFUSALS

    return REFUSALS.get(reason, "try again")


def refusal_line(where: str, reason: str) -> str:
    return f"{where}: refused: {reason.replace('_', ' ')} ({hint(reason)})"
