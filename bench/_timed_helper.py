"""faceid-helper exactly as its console script runs it, plus one line saying how long the camera took to open.

Used by auth_latency.py through pam_exec, so camera opening can be timed
apart from the rest of a login. ``--camera-log FILE`` (first argument) is
consumed here; every other argument goes to faceid-helper unchanged. The
camera module is not imported here (the helper imports it in a background
thread while it talks to the daemon): an import hook wraps
``FrameSource.from_config`` with a timer when the helper's import runs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import time
from types import ModuleType
from typing import Any

_opened: list[float] = []


def _time_from_config(camera: ModuleType) -> None:
    original = camera.FrameSource.from_config.__func__

    def timed(cls: type, cam: Any) -> Any:
        started = time.monotonic()
        try:
            return original(cls, cam)
        finally:
            _opened.append(time.monotonic() - started)

    camera.FrameSource.from_config = classmethod(timed)


class _CameraHook(importlib.abc.MetaPathFinder):
    """On the first import of pam_faceid.camera, run its module code, then add the timer."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "pam_faceid.camera":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _time_from_config(module)

        spec.loader.exec_module = exec_module
        return spec


def run(argv: list[str]) -> int:
    """Strip ``--camera-log FILE``, run the helper, append {pid, camera_open, code} to FILE."""
    log_path = None
    if len(argv) >= 2 and argv[0] == "--camera-log":
        log_path, argv = argv[1], argv[2:]
    sys.meta_path.insert(0, _CameraHook())
    from pam_faceid.helper import main

    code = main(argv)
    if log_path:
        line = json.dumps({"pid": os.getpid(), "camera_open": _opened[0] if _opened else None, "code": code})
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
