"""Pieces the fuzz, load, fault and hostile-user tests share: a daemon whose notifications are read as systemd
reads them, enrolments made quickly, and camera frames from real faces.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from faceidd_util import MODEL_DIR

from pam_faceid.config import SCHEMA


def plain_policy() -> dict[str, dict[str, Any]]:
    """Config that keeps lockout and liveness out of the way (where they exist): these tests fail many sessions
    on purpose, and their genuine sessions are different photos of one person, not a live face."""
    names = {key.name for key in SCHEMA}
    values: dict[str, dict[str, Any]] = {}
    if "lockout.max_failures" in names:
        values["lockout"] = {"max_failures": 1000, "window": 1}
    if "liveness.mode" in names:
        values["liveness"] = {"mode": "off"}
    return values


@contextlib.contextmanager
def reading_notifications(daemon: Any) -> Iterator[None]:
    """Drain the daemon's NOTIFY_SOCKET in the background, as systemd does, while the block runs.

    The harness reads it only until READY=1; a test that reloads a lot would
    otherwise fill its queue and pay sd_notify's timeout on every reload.
    """
    stop = threading.Event()
    sock: socket.socket = daemon.notify

    def drain() -> None:
        while not stop.is_set():
            sock.settimeout(0.1)
            try:
                sock.recv(4096)
            except (socket.timeout, OSError):
                continue

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def model_id() -> str:
    """The id faceidd gives the test model (enrolments must carry it)."""
    from pam_faceid.daemon import model_id_of
    from pam_faceid.embedder import Embedder

    return model_id_of(Embedder(MODEL_DIR))


def enrol_random(state_dir: Path, user: str, count: int = 3, seed: int = 0) -> None:
    """An enrolment of random unit vectors: nobody's face matches it (cheap, for sessions that must not match)."""
    from pam_faceid.store import Store

    vectors = np.random.default_rng(seed).normal(size=(count, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    Store(state_dir).add_templates(user, vectors, label="random", model_id=model_id())


def jpegs(paths: Sequence[Path]) -> list[bytes]:
    """Camera frames as the helper sends them: JPEG bytes of real images."""
    out = []
    for path in paths:
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(path)))
        assert ok, path
        out.append(buf.tobytes())
    return out
