"""Test support for the daemon, PAM and systemd tests: a real faceidd subprocess on temporary paths.

Sockets live under a short /tmp folder (a Unix socket path must fit in 108
bytes) whose modes let the ``nobody`` user reach the socket; readiness is
taken from a NOTIFY_SOCKET the harness binds, as systemd would. Its fixtures are registered in
conftest.py (``pytest_plugins``); tests import only its helpers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import pytest
import yaml

from pam_faceid.common.config import SEAT_SERVICES

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FACEIDD = VENV_BIN / "faceidd"
HELPER = VENV_BIN / "faceid-helper"
PYTHON = VENV_BIN / "python"
MODEL_DIR = Path(os.environ.get("FACEID_TEST_MODEL") or REPO / "pam_faceid" / "data" / "model")
"""The model the tests use: the bundled one, or the folder in $FACEID_TEST_MODEL (to try a candidate model)."""


TEST_SERVICES = [*SEAT_SERVICES, "faceid-*", "fid*", "journaltest"]
"""auth.services in test configs: the shipped list and the names of the PAM services the tests write."""


def model_available() -> bool:
    return (MODEL_DIR / "embedder.onnx").is_file() and (MODEL_DIR / "model.json").is_file()


def require_model() -> None:
    if not model_available():
        pytest.skip(f"no trained model yet: {MODEL_DIR}/embedder.onnx and model.json are absent")


def write_config(path: Path, values: dict[str, dict[str, Any]]) -> Path:
    """A config file the loader accepts (0600 in a folder only root can write)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values))
    os.chmod(path, 0o644)
    return path


def run_as_nobody(code: str, timeout: float = 10) -> subprocess.CompletedProcess:
    """Run Python ``code`` as uid nobody (setpriv drops all groups); the venv is built from /usr/bin/python3."""
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(PYTHON), "-c", code],
                          capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})


class Faceidd:
    """faceidd as a subprocess with its own config, socket and state folder."""

    def __init__(self, base: Path, config: dict[str, dict[str, Any]] | None = None):
        self.base = base
        self.socket = str(base / "run" / "faceidd.sock")
        self.state_dir = base / "state"
        self.config_path = base / "etc" / "config.yaml"
        self.log_path = base / "faceidd.log"
        self.notify_path = str(base / "notify.sock")
        values: dict[str, dict[str, Any]] = {"daemon": {"socket": self.socket, "state_dir": str(self.state_dir)},
                                             "model": {"path": str(MODEL_DIR)},
                                             "auth": {"services": list(TEST_SERVICES)}}
        for section, keys in (config or {}).items():
            values.setdefault(section, {}).update(keys)
        self.values = values
        write_config(self.config_path, values)
        self.proc: subprocess.Popen | None = None
        self.notify: socket.socket | None = None

    def rewrite_config(self, config: dict[str, dict[str, Any]]) -> None:
        for section, keys in config.items():
            self.values.setdefault(section, {}).update(keys)
        write_config(self.config_path, self.values)

    def command(self) -> list[str]:
        return [str(FACEIDD), "--config", str(self.config_path)]

    def start(self, command: Sequence[str] | None = None, wait: bool = True, timeout: float = 30) -> "Faceidd":
        """Start it and wait for READY=1 on our NOTIFY_SOCKET (what Type=notify waits for)."""
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(self.notify_path)
        env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": self.notify_path}
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(list(command or self.command()), stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        if wait:
            self.wait_notify("READY=1", timeout)
        return self

    def wait_notify(self, word: str, timeout: float = 30) -> str:
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                raise AssertionError(f"faceidd never sent {word}; log:\n{self.logs()}")
            self.notify.settimeout(min(left, 0.2))
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            if word in message.split("\n"):
                return message

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, text: str, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs():
                return self.logs()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in faceidd log:\n{self.logs()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def close(self) -> None:
        self.stop()
        if self.notify is not None:
            self.notify.close()
            self.notify = None


def short_tmp() -> Path:
    """A short /tmp folder other users may traverse (0711) but not list or write."""
    base = Path(tempfile.mkdtemp(prefix="fid", dir="/tmp"))
    os.chmod(base, 0o711)
    return base


@pytest.fixture
def daemon_dir():
    """A short /tmp folder for daemons' sockets and state (see short_tmp); removed at teardown."""
    base = short_tmp()
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def faceidd(daemon_dir):
    """A factory: ``faceidd(config=None)`` -> an unstarted Faceidd; all are stopped at teardown."""
    made: list[Faceidd] = []

    def make(config: dict[str, dict[str, Any]] | None = None, name: str = "d") -> Faceidd:
        base = daemon_dir / f"{name}{len(made)}"
        base.mkdir(mode=0o711)
        os.chmod(base, 0o711)
        daemon = Faceidd(base, config)
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.close()


def embed_images(paths: Sequence[Path]) -> "Any":
    """Unit embeddings of the faces in ``paths`` (through the same FacePipeline + Embedder as the daemon)."""
    import numpy as np

    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.common.images import read_image

    embedder = Embedder(MODEL_DIR)
    pipeline = FacePipeline(spec=embedder.input)
    crops = []
    for path in paths:
        image = read_image(path)
        crop, _reason = pipeline.process(image) if image is not None else (None, "unreadable")
        if crop is not None:
            crops.append(crop)
    assert crops, f"no face found in any of {len(paths)} images"
    return embedder.embed(np.stack(crops)), embedder


def enrol(state_dir: Path, user: str, paths: Sequence[Path]) -> None:
    """Enrol ``user`` from real images, as the admin CLI will: embeddings saved with Store."""
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.common.store import Store

    vectors, embedder = embed_images(paths)
    Store(state_dir).add_templates(user, vectors, label="test", model_id=model_id_of(embedder))


@pytest.fixture
def pam_files():
    """``pam_files(text, prefix)`` -> name of a fresh /etc/pam.d service holding ``text``; all removed afterwards."""
    import secrets

    made: list[Path] = []

    def make(text: str, prefix: str = "faceid-test") -> str:
        name = f"{prefix}-{secrets.token_hex(5)}"
        path = Path("/etc/pam.d") / name
        made.append(path)
        path.write_text(text)
        return name

    try:
        yield make
    finally:
        for path in made:
            path.unlink(missing_ok=True)


@pytest.fixture
def pam_service(pam_files):
    """``pam_service(config_path)`` -> name of a fresh /etc/pam.d service that runs the helper with that config."""
    return lambda config_path: pam_files(
        f"auth    [success=done default=ignore] pam_exec.so quiet stdout seteuid {HELPER} --config {config_path}\n"
        "auth    requisite pam_deny.so\n"
        "account required pam_permit.so\n")


@pytest.fixture
def make_user():
    """``make_user(shell=nologin)`` -> name of a fresh system user (no home, no password); deleted at teardown."""
    made: list[str] = []

    def make(shell: str = "/usr/sbin/nologin") -> str:
        name = f"fidt{uuid.uuid4().hex[:8]}"
        subprocess.run(["useradd", "--no-create-home", "--shell", shell, "--user-group", name],
                       check=True, capture_output=True)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)
