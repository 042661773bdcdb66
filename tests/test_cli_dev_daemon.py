"""faceid dev-daemon: faceidd from the dev venv on a private folder, reached by faceid and the PAM helper.

Runs the real command as a subprocess, as the README tells a developer to, with the bundled sample photo as
the camera (no ../shared/faces needed), then stops it with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cli_support import FACEID, PamService, faceid, require_root

SAMPLE = Path(__file__).resolve().parents[1] / "pam_faceid" / "data" / "samples" / "sample_person"


def _start(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"}
    return subprocess.Popen([FACEID, "dev-daemon", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


def _wait_ready(proc: subprocess.Popen, sock: Path, timeout: float = 30.0) -> None:
    from pam_faceid.common.protocol import DaemonError, request_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dev-daemon exited {proc.returncode}: {proc.stdout.read()}")
        try:
            request_status(str(sock), timeout=1.0)
            return
        except DaemonError:
            time.sleep(0.1)
    raise AssertionError(f"dev-daemon not answering on {sock} after {timeout} s")


def test_dev_daemon_serves_the_cli_and_a_pam_login_then_stops_on_ctrl_c(tmp_path, temp_user):
    folder = tmp_path / "dev"
    camera = tmp_path / "camera"
    camera.mkdir()
    for index in range(3):
        shutil.copy(SAMPLE / "eileen_collins.jpg", camera / f"frame{index}.jpg")
    proc = _start("--dir", str(folder), "--camera", str(camera))
    service = None
    try:
        _wait_ready(proc, folder / "faceidd.sock")
        config = folder / "config.yaml"
        shown = faceid(config, "status")
        assert f"daemon:   running, pid {proc.pid}, " in shown.stdout, shown.stdout + shown.stderr
        assert f"socket {folder / 'faceidd.sock'}" in shown.stdout
        for key, value in (("liveness.mode", "off"), ("auth.abort_if_ssh", "false"),
                           ("auth.abort_if_lid_closed", "false"), ("auth.services", "sudo faceid-test*")):
            done = faceid(config, "config", key, value)
            assert done.returncode == 0 and "not reloaded" not in done.stderr, done.stderr
        enrolled = faceid(config, "enroll", temp_user.name, "--from", str(SAMPLE))
        assert enrolled.returncode == 0 and "daemon reloaded" in enrolled.stdout, enrolled.stdout + enrolled.stderr
        assert (folder / "state" / "users" / f"{temp_user.name}.json").is_file()
        service = PamService(config)
        login = faceid(config, "test", temp_user.name, "--pam", service.name)
        assert "PAM said: Face recognised." in login.stdout and login.returncode == 0, login.stdout + login.stderr
    finally:
        if service is not None:
            service.remove()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert f"{FACEID} --config {folder / 'config.yaml'} status" in out
    assert "SIGINT: shutting down" in out
    assert not (folder / "faceidd.sock").exists()
    assert (folder / "state" / "users" / f"{temp_user.name}.json").is_file(), "the enrolment is kept"


def test_dev_daemon_refuses_a_folder_another_user_owns(tmp_path):
    """Root must not take a config from, or write one into, a folder someone else controls (a planted /tmp dir)."""
    require_root()
    tmp_path.chmod(0o755)
    planted = tmp_path / "planted"
    planted.mkdir()
    os.chown(planted, 65534, 65534)
    proc = _start("--dir", str(planted))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, out
    assert "not root, refused" in out and len(out.strip().splitlines()) == 1, out
    assert list(planted.iterdir()) == []


def test_dev_daemon_refuses_config(tmp_path):
    require_root()
    done = faceid(tmp_path / "config.yaml", "dev-daemon")
    assert done.returncode == 2 and "leave out --config" in done.stderr

