"""Support for the admin CLI tests: a real faceidd on a temporary socket, the CLI as a subprocess, temp users.

Its fixtures are registered in conftest.py (``pytest_plugins``); tests import its helpers. The model
is the bundled one (pam_faceid/data/model), or $FACEID_TEST_MODEL when set
(a development model); tests skip with the reason when neither exists.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from faceidd_util import TEST_SERVICES
from faces_support import PERSON, session_frames, write_frames

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FACEID = str(BIN / "faceid")
FACEIDD = str(BIN / "faceidd")
HELPER = str(BIN / "faceid-helper")


def model_dir() -> Path:
    """The model the tests run: $FACEID_TEST_MODEL or the bundled one; skip when there is none."""
    env = os.environ.get("FACEID_TEST_MODEL")
    folder = Path(env) if env else REPO / "pam_faceid" / "data" / "model"
    if not (folder / "model.json").is_file() or not (folder / "embedder.onnx").is_file():
        pytest.skip(f"no face model in {folder} (train one, or set FACEID_TEST_MODEL)")
    return folder


def write_config(folder: Path, camera: Path | str, **extra: dict[str, object]) -> Path:
    """A root-only config pointing the daemon, the store and the camera into ``folder``."""
    sections: dict[str, dict[str, object]] = {
        "camera": {"device": str(camera), "dark_threshold": 0.0},
        "daemon": {"socket": str(folder / "faceidd.sock"), "state_dir": str(folder / "state")},
        "model": {"path": str(model_dir())},
        "auth": {"abort_if_ssh": False, "abort_if_lid_closed": False, "timeout": 6.0, "services": TEST_SERVICES},
        "liveness": {"mode": "off"},  # the cameras here show photos moved about; liveness is test_liveness.py's
    }
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    lines = []
    for section, values in sections.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            lines.append(f"  {key}: {text}")
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def faceid(config: Path | None, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``faceid`` console script as a subprocess, as an admin would."""
    cmd = [FACEID] + (["--config", str(config)] if config else []) + list(args)
    env = {k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"}
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, env=env)


class Daemon:
    """faceidd as a subprocess on the config's temporary socket."""

    def __init__(self, config: Path):
        self.config = config
        self.socket = str(config.parent / "faceidd.sock")
        self.log = open(config.parent / "faceidd.log", "w")
        self.proc = subprocess.Popen([FACEIDD, "--config", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        from pam_faceid.common.protocol import DaemonError, request_status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"faceidd exited {self.proc.returncode}: {self.read_log()}")
            try:
                request_status(self.socket, timeout=1.0)
                return
            except DaemonError:
                time.sleep(0.1)
        raise RuntimeError(f"faceidd not ready after {timeout} s: {self.read_log()}")

    def status(self) -> dict:
        from pam_faceid.common.protocol import request_status

        return request_status(self.socket)

    def read_log(self) -> str:
        self.log.flush()
        return (self.config.parent / "faceidd.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (enrolments, /etc/pam.d and test users are root's)")


class TempUser:
    """A throwaway local user with a random password, removed by ``remove`` (also after a failed test)."""

    def __init__(self, prefix: str = "fidt"):
        require_root()
        if not shutil.which("useradd"):
            pytest.skip("useradd not available")
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(18)
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", self.name], check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n", text=True, check=True,
                       capture_output=True)

    def remove(self) -> None:
        subprocess.run(["userdel", self.name], capture_output=True)


class PamService:
    """A unique /etc/pam.d service file, always removed: face helper first, then pam_unix."""

    def __init__(self, config: Path, prefix: str = "faceid-test"):
        require_root()
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.path = Path("/etc/pam.d") / self.name
        self.path.write_text(
            f"auth [success=done default=ignore] pam_exec.so quiet stdout seteuid {HELPER} --config {config}\n"
            "auth required pam_unix.so\n"
            "account required pam_permit.so\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def temp_user() -> Iterator[TempUser]:
    """A fresh system user with a password (TempUser); removed at teardown, also on failure."""
    user = TempUser()
    try:
        yield user
    finally:
        user.remove()


@pytest.fixture
def cli_env(tmp_path: Path, person_images) -> Iterator[tuple[Path, Path]]:
    """(config, camera folder): a config whose camera shows the test person as enrolled (faces_support.session_frames)."""
    require_root()
    tmp_path.chmod(0o700)
    camera = write_frames(session_frames(person_images(PERSON)[:3]), tmp_path / "camera")
    yield write_config(tmp_path, camera), camera


@pytest.fixture
def daemon(cli_env: tuple[Path, Path]) -> Iterator[Daemon]:
    """faceidd running on cli_env's config; stopped at teardown."""
    proc = Daemon(cli_env[0])
    try:
        yield proc
    finally:
        proc.stop()
