"""Support for the admin CLI tests: a real faceidd on a temporary socket, the CLI as a subprocess, temp users.

The scaffolding itself (throwaway users, faceidd started and waited for, config files, the console scripts'
paths) is pam_faceid.common.scaffold, shared with the demo, the PAM proof and the benchmarks.

Its fixtures are registered in conftest.py (``pytest_plugins``); tests import its helpers. The model
is the bundled one (pam_faceid/data/model), or $FACEID_TEST_MODEL when set
(a development model); tests skip with the reason when neither exists.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from faceidd_util import TEST_SERVICES
from faces_support import PERSON, session_frames, write_frames

from pam_faceid.common import scaffold

REPO = Path(__file__).resolve().parents[1]
FACEID = str(scaffold.script("faceid"))
FACEIDD = str(scaffold.script("faceidd"))
HELPER = str(scaffold.script("faceid-helper"))


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
    return scaffold.write_config(folder / "config.yaml", sections, mode=0o600)


def faceid(config: Path | None, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the installed ``faceid`` console script as a subprocess, as an admin would."""
    cmd = [FACEID] + (["--config", str(config)] if config else []) + list(args)
    env = {k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"}
    return subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout, env=env)


class Daemon(scaffold.Daemon):
    """faceidd as a subprocess on the config's temporary socket (beside the config), started and waited for."""

    def __init__(self, config: Path):
        super().__init__(config, config.parent / "faceidd.log")
        self.socket = str(config.parent / "faceidd.sock")
        self.start()

    def status(self) -> dict:
        from pam_faceid.common.protocol import request_status

        return request_status(self.socket)

    def read_log(self) -> str:
        return self.logs()


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (enrolments, /etc/pam.d and test users are root's)")


class TempUser(scaffold.ThrowawayUser):
    """A throwaway local user with a random password (scaffold.ThrowawayUser), made at once; needs root."""

    def __init__(self, prefix: str = "fidt", shell: str = "/usr/sbin/nologin"):
        require_root()
        if not shutil.which("useradd"):
            pytest.skip("useradd not available")
        super().__init__(prefix, shell)
        self.create()


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
        proc.close()
