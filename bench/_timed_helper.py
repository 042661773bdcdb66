"""faceid-helper exactly as its console script runs it, plus one line saying how long the camera took to open.

Used by auth_latency.py through pam_exec, so camera opening can be timed
apart from the rest of a login. ``--camera-log FILE`` (first argument) is
consumed here; every other argument goes to faceid-helper unchanged.
``FrameSource.from_config`` is wrapped with a timer before the helper runs;
the helper ends as its console script does (``helper.exit_now``).
"""

from __future__ import annotations

import json
import os
import sys
import time

from pam_faceid import camera
from pam_faceid.helper import main as helper

_opened: list[float] = []
_from_config = camera.FrameSource.from_config.__func__


def _timed_from_config(cls: type, cam: object) -> camera.FrameSource:
    started = time.monotonic()
    try:
        return _from_config(cls, cam)
    finally:
        _opened.append(time.monotonic() - started)


def run(argv: list[str]) -> int:
    """Strip ``--camera-log FILE``, run the helper, append {pid, camera_open, code} to FILE."""
    log_path = None
    if len(argv) >= 2 and argv[0] == "--camera-log":
        log_path, argv = argv[1], argv[2:]
    camera.FrameSource.from_config = classmethod(_timed_from_config)
    code = helper.main(argv)
    if log_path:
        line = json.dumps({"pid": os.getpid(), "camera_open": _opened[0] if _opened else None, "code": code})
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    return code


if __name__ == "__main__":
    helper.exit_now(run(sys.argv[1:]))
