"""For the keyring tests: swtpm as the TPM, and frames of a live person (liveness passes on them).

swtpm as the TPM: a TPM 2.0 on a localhost TCP port with its own state folder.

tpm2-tools reach it through the TCTI ``swtpm:host=127.0.0.1,port=P``. The
state survives stop() and start() (a reboot of the TPM: PCRs reset, keys
kept); another SwTPM has another seed, so it cannot load what this one
sealed. See ../shared/notes/keyring-tpm-probe.md.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

SPOOF_REAL = Path(__file__).resolve().parents[2] / "shared" / "spoof" / "videos" / "real" / "apfol.webm"
"""A man filmed live at a webcam (../shared/spoof, internal testing only): liveness 'basic' lets him in."""
TOOLS = ("swtpm", "tpm2_createprimary", "tpm2_unseal")


def require_swtpm() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (apt-get install swtpm swtpm-tools tpm2-tools)")


def _free_port_pair() -> int:
    for _ in range(100):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free pair of ports")


class SwTPM:
    def __init__(self, state: Path):
        self.state = state
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.port = _free_port_pair()
        self.tcti = f"swtpm:host=127.0.0.1,port={self.port}"
        self.pid: int | None = None

    def start(self) -> "SwTPM":
        pidfile = self.state / "swtpm.pid"
        pidfile.unlink(missing_ok=True)
        subprocess.run(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.state}",
                        "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                        "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                        "--flags", "not-need-init,startup-clear", "--daemon", "--pid", f"file={pidfile}"],
                       check=True, capture_output=True, timeout=10)
        self.pid = int(pidfile.read_text())
        return self

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _running(self.pid):
            time.sleep(0.02)
        self.pid = None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a daemonized swtpm's parent may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def live_video_frames(base: Path) -> tuple[Path, Path]:
    """(enrolment frames, camera frames) of the live video: enrolled from its last third, seen in its first 60
    consecutive frames (as ../shared/spoof/README.md measured); skips when ../shared/spoof is absent."""
    if not SPOOF_REAL.is_file():
        pytest.skip(f"{SPOOF_REAL} absent (../shared/spoof ships beside the repo, not in it)")
    import cv2

    capture = cv2.VideoCapture(str(SPOOF_REAL))
    frames: list = []
    while len(frames) < 350:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    enrol_dir, camera = base / "live-enrol", base / "live-camera"
    for folder, picked in ((enrol_dir, frames[-100::20]), (camera, frames[:60])):
        folder.mkdir(mode=0o700)
        for n, frame in enumerate(picked):
            cv2.imwrite(str(folder / f"f{n:03d}.jpg"), frame)
    return enrol_dir, camera
