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

from pam_faceid.common.config import SCHEMA


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
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.vision.embedder import Embedder

    return model_id_of(Embedder(MODEL_DIR))


def enrol_random(state_dir: Path, user: str, count: int = 3, seed: int = 0) -> None:
    """An enrolment of random unit vectors: nobody's face matches it (cheap, for sessions that must not match)."""
    from pam_faceid.common.store import Store

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


EMPTY_AC_SCAN = bytes.fromhex("ffda0008010100013f00")
"""An SOS with no data after it: component 1 (Y), Huffman tables 0/0, spectral band 1-63, no approximation."""


def crafted_progressive_jpeg(side: int = 2048, scans: int = 130_000) -> bytes:
    """Issue 14's frame: a progressive ``side`` px JPEG with ``scans`` empty AC scans before its EOI (1.3 MB).

    libjpeg walks every block of the image for each scan, data or not: about
    0.3 ms a scan at 2048 px here, 40 s of the daemon's CPU for this frame.
    """
    ok, buf = cv2.imencode(".jpg", np.full((side, side, 3), (90, 120, 150), np.uint8),
                           [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = buf.tobytes()
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + EMPTY_AC_SCAN * scans + data[-2:]
