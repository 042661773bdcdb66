"""Scaffolding for the demo, the PAM proof, the tests and the benchmarks, written once.

A throwaway user, a config file written where the loader accepts it, faceidd as a
subprocess waited for (READY=1 on a notify socket, as systemd waits, or its status
answering), and the path of this installation's console scripts. Never used at a
login: nothing here runs in the PAM helper. Standard library and PyYAML only.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
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

import yaml

from pam_faceid.common.protocol import DaemonError, request_status

MODULES = {"faceidd": "pam_faceid.daemon.server", "faceid": "pam_faceid.cli", "faceid-helper": "pam_faceid.helper.main"}


class ScaffoldError(Exception):
    """A throwaway user or a daemon could not be set up; the message says why, in one line."""


def script(name: str) -> Path:
    """Where this installation's console script ``name`` is: beside the running Python (not on the PATH in a venv)."""
    return Path(sys.executable).parent / name


def program(name: str) -> list[str]:
    """The command line that runs ``name``: its console script, else ``python -m`` its module."""
    return [str(script(name))] if script(name).is_file() else [sys.executable, "-m", MODULES[name]]


class ThrowawayUser:
    """A local user with a random password and its own group, no home; ``remove`` (or the ``with`` end) deletes it.

    ``create`` and ``remove`` are separate so a caller can register the removal before the user exists
    (an interrupt during useradd then leaves nothing behind).
    """

    def __init__(self, prefix: str = "fidt", shell: str = "/usr/sbin/nologin",
                 comment: str = "pam_faceid throwaway user", home: Path | None = None):
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(18)
        self.shell = shell
        self.comment = comment
        self.home = home  # made for the user, and removed with it, when given
        self.uid = -1

    def create(self) -> ThrowawayUser:
        where = ["-m", "-d", str(self.home)] if self.home is not None else ["-M"]
        made = subprocess.run(["useradd", *where, "-U", "-s", self.shell, "-c", self.comment, self.name],
                              capture_output=True, text=True)
        if made.returncode:
            raise ScaffoldError(f"cannot create user {self.name}: {made.stderr.strip() or made.returncode}")
        try:
            set_pw = subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n", capture_output=True,
                                    text=True)
            if set_pw.returncode:
                raise ScaffoldError(f"cannot set {self.name}'s password: {set_pw.stderr.strip()}")
            self.uid = pwd.getpwnam(self.name).pw_uid
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Delete the user, its group and its home (when made here); nothing happens when it does not exist."""
        subprocess.run(["userdel", "-f", *(["-r"] if self.home is not None else []), self.name], capture_output=True)
        subprocess.run(["groupdel", self.name], capture_output=True)

    def __enter__(self) -> ThrowawayUser:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def write_config(path: Path, values: dict[str, dict[str, Any]], mode: int = 0o644) -> Path:
    """A config file the loader accepts: ``mode``, in a 0755 folder, replaced whole (a reader never sees half)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(yaml.safe_dump(values))
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path


def last_log_line(log: Path) -> str:
    """The log's last line without its sd-daemon priority prefix, for a one-line error."""
    try:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
    except OSError:
        return ""
    return re.sub(r"^<\d>", "", " ".join(tail))


def wait_ready(proc: subprocess.Popen, socket_path: str, timeout: float = 60.0, log: Path | None = None) -> dict:
    """faceidd's status once it answers on ``socket_path``; ScaffoldError when it exits or the time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScaffoldError(f"faceidd exited with {proc.returncode}: {last_log_line(log) if log else ''}")
        try:
            return request_status(socket_path, timeout=1.0)
        except DaemonError:
            time.sleep(0.1)
    raise ScaffoldError(f"faceidd did not answer on {socket_path} within {timeout:.0f} s" + (f" (log: {log})"
                                                                                             if log else ""))


class Daemon:
    """faceidd as a subprocess on ``config``, logging to ``log``; ready when it sends READY=1 to our NOTIFY_SOCKET.

    That is what systemd's Type=notify waits for, so a daemon that answers before it is ready is caught.
    """

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None,
                 args: Sequence[str] = ()):
        self.config = config
        self.log_path = log
        self.env = {"PATH": "/usr/bin:/bin", **(env or {})}
        self.args = list(args)
        self.notify_dir = tempfile.mkdtemp(prefix="fidn", dir="/tmp")  # a socket path must fit in 108 bytes
        self.notify_path = os.path.join(self.notify_dir, "notify.sock")
        self.notify: socket.socket | None = None
        self.proc: subprocess.Popen | None = None
        self.ready_seconds = 0.0

    def command(self) -> list[str]:
        return [*program("faceidd"), "--config", str(self.config), *self.args]

    def start(self, command: Sequence[str] | None = None, wait: bool = True, timeout: float = 60.0) -> Daemon:
        """Start it (``command`` instead of faceidd, to wrap it) and, with ``wait``, wait for READY=1."""
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(self.notify_path)
        self.log = open(self.log_path, "ab")  # closed by stop()
        started = time.monotonic()
        self.proc = subprocess.Popen(list(command or self.command()), stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**self.env, "NOTIFY_SOCKET": self.notify_path}, start_new_session=True)
        if wait:
            self.wait_notify("READY=1", timeout)
            self.ready_seconds = time.monotonic() - started
        return self

    def wait_notify(self, word: str, timeout: float = 30.0) -> str:
        """The next notify message holding ``word`` (READY=1, RELOADING=1, ...); ScaffoldError if it never comes."""
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                raise ScaffoldError(f"faceidd never sent {word}; log:\n{self.logs()}")
            self.notify.settimeout(min(left, 0.2))
            try:
                message = self.notify.recv(4096).decode()
            except socket.timeout:
                continue
            if word in message.split("\n"):
                return message

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to its group after ``timeout``; its exit status (None if never started)."""
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
        """Stop it and release the notify socket."""
        self.stop()
        self.stop_listening()

    def stop_listening(self) -> None:
        """Close and remove the notify socket: the daemon's later notifications then fail at once, never block."""
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        shutil.rmtree(self.notify_dir, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
