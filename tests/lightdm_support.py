"""Real LightDM for tests: as root on Xvfb, with a private system bus, through a private copy of /etc/pam.d.

One ``LightDM`` runs for a whole test module: the shipped headless greeter
(pam_faceid/data/lightdm/faceid-greeter.py) takes one login request at a
time from a folder and records every PAM message, prompt and result as JSON
lines; LightDM restarts it after each session, and the new one takes the
next request. The session is faceid-session-check.py, which records ``id``
and the login keyring's state, then exits.

Everything LightDM touches is private: the PAM files (``unshare -m`` and a
bind mount of a copy over /etc/pam.d), /var/lib/lightdm and
/var/lib/lightdm-data (bind mounts of temporary folders), its run, log and
cache folders (config keys), the X server (Xvfb on a free display number,
used as an "xremote" seat: no VT switch) and the system bus (a dbus-daemon
on a private socket). The facts behind this setup are in
../shared/notes/greeter-probe.md.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pam_faceid" / "data" / "lightdm"
GREETER = "faceid-greeter"
SESSION = "faceid-check"
SYSTEM_PYTHON = "/usr/bin/python3"

SYSTEM_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


def missing_tools() -> list[str]:
    """The packages whose absence makes a real-LightDM test impossible here (empty: all present)."""
    missing = [package for package, path in (("lightdm", "/usr/sbin/lightdm"), ("xvfb", "/usr/bin/Xvfb"),
                                             ("dbus", "/usr/bin/dbus-daemon"), ("util-linux", "/usr/bin/unshare"))
               if not os.access(path, os.X_OK)]
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('LightDM', '1'); "
                            "from gi.repository import LightDM"], capture_output=True)
    if probe.returncode != 0:
        missing.append("python3-gi gir1.2-lightdm-1")
    try:
        pwd.getpwnam("lightdm")
    except KeyError:
        missing.append("lightdm (its 'lightdm' user)")
    return missing


def keyring_missing() -> list[str]:
    """What the login keyring checks need that is absent (empty: gnome-keyring, its PAM module, secret-tool)."""
    modules = ("/usr/lib/x86_64-linux-gnu/security/pam_gnome_keyring.so", "/lib/x86_64-linux-gnu/security/"
               "pam_gnome_keyring.so", "/usr/lib/security/pam_gnome_keyring.so")
    missing = [package for package, tool in (("gnome-keyring", "gnome-keyring-daemon"),
                                             ("libsecret-tools", "secret-tool")) if shutil.which(tool) is None]
    if not any(os.path.exists(path) for path in modules):
        missing.append("libpam-gnome-keyring")
    return missing


def require_lightdm() -> None:
    if os.geteuid() != 0:
        pytest.skip("real LightDM runs as root")
    missing = missing_tools()
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (./install.sh --dev installs them)")


def free_display() -> int:
    """An X display number whose lock file, socket and TCP port are all free."""
    for _ in range(200):
        number = 100 + secrets.randbelow(400)
        if os.path.exists(f"/tmp/.X{number}-lock") or os.path.exists(f"/tmp/.X11-unix/X{number}"):
            continue
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 6000 + number)) != 0:
                return number
    raise RuntimeError("no free X display number")


def _wait(what: str, ready: Callable[[], Any], timeout: float, alive: Callable[[], bool] = lambda: True) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        if not alive():
            break
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


class GreeterUser:
    """A user with a home and a password, deleted at close (its leftover processes are stopped by pid first)."""

    def __init__(self, base: Path, prefix: str = "fidg"):
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self.password = f"pw-{secrets.token_hex(8)}"
        self.home = base / "home" / self.name
        self.home.parent.mkdir(mode=0o711, exist_ok=True)
        subprocess.run(["useradd", "-m", "-d", str(self.home), "-s", "/bin/sh", "--user-group", self.name],
                       check=True, capture_output=True)
        subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n", text=True, check=True,
                       capture_output=True)
        self.uid = pwd.getpwnam(self.name).pw_uid

    def processes(self) -> list[int]:
        """Pids of the processes running as this user (e.g. the gnome-keyring-daemon a session leaves)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == self.uid:
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def start_session_bus(self, runtime: Path) -> None:
        """What logind and systemd --user would give a session (there is neither here): a 0700 runtime folder
        and a session bus at ``runtime``/bus, both the user's; pam_env hands their paths to the session."""
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.chown(runtime, self.uid, self.uid_gid())
        subprocess.run(["setpriv", f"--reuid={self.uid}", f"--regid={self.uid_gid()}", "--init-groups",
                        "dbus-daemon", "--session", f"--address=unix:path={runtime / 'bus'}", "--fork",
                        "--print-pid"], check=True, capture_output=True, timeout=10,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(self.home), "XDG_RUNTIME_DIR": str(runtime)})

    def uid_gid(self) -> int:
        return pwd.getpwnam(self.name).pw_gid

    def stop_processes(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait(f"{self.name}'s processes to end", lambda: not self.processes(), 5)

    def close(self) -> None:
        try:
            self.stop_processes()
        finally:
            subprocess.run(["userdel", "-r", self.name], capture_output=True)
            subprocess.run(["groupdel", self.name], capture_output=True)


class LightDM:
    """Real lightdm, its X server and its system bus, all private; the greeter takes requests (see the module doc)."""

    def __init__(self, base: Path, gtk_user: str | None = None):
        self.base = base
        self.gtk_user = gtk_user
        """With a user: run the real lightdm-gtk-greeter instead, with that user selected (its state file)."""
        self.pam_dir = base / "pam.d"
        shutil.copytree("/etc/pam.d", self.pam_dir, symlinks=True)
        self.control = base / "control"
        (self.control / "requests").mkdir(parents=True)
        self.events_path = self.control / "events.jsonl"
        self.events_path.touch()
        self.out = base / "sessions-out"
        self.out.mkdir(mode=0o1777)
        os.chmod(self.out, 0o1777)
        lightdm = pwd.getpwnam("lightdm")
        for folder in (self.control, self.control / "requests"):
            os.chown(folder, lightdm.pw_uid, lightdm.pw_gid)
        os.chown(self.events_path, lightdm.pw_uid, lightdm.pw_gid)
        self.lightdm_home = base / "var-lib-lightdm"
        self.lightdm_home.mkdir(mode=0o750)
        os.chown(self.lightdm_home, lightdm.pw_uid, lightdm.pw_gid)
        self.lightdm_data = base / "var-lib-lightdm-data"
        self.lightdm_data.mkdir(mode=0o755)
        self.scripts = base / "scripts"
        self.scripts.mkdir(mode=0o755)
        for name in ("faceid-greeter.py", "faceid-session-check.py"):
            shutil.copy(SHIPPED / name, self.scripts / name)
            os.chmod(self.scripts / name, 0o755)
        self.display = free_display()
        self.procs: list[subprocess.Popen] = []
        self.bus_pid: int | None = None
        self.proc: subprocess.Popen | None = None
        self.taken = 0

    # ------------------------------------------------------------ setup

    def namespace(self, *argv: str) -> list[str]:
        """``argv`` in its own mount namespace where the private copies replace /etc/pam.d and LightDM's state."""
        mounts = ('mount --bind "$1" /etc/pam.d && mount --bind "$2" /var/lib/lightdm && '
                  'mount --bind "$3" /var/lib/lightdm-data && shift 3 && exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", str(self.pam_dir),
                str(self.lightdm_home), str(self.lightdm_data), *argv]

    def _write_config(self) -> Path:
        greeters, sessions = self.base / "greeters", self.base / "sessions"
        for folder in (greeters, sessions, self.base / "log", self.base / "run", self.base / "cache"):
            folder.mkdir(mode=0o755, exist_ok=True)
        (greeters / f"{GREETER}.desktop").write_text(
            "[Desktop Entry]\nName=pam_faceid check greeter\nType=Application\n"
            f"Exec={SYSTEM_PYTHON} {self.scripts / 'faceid-greeter.py'} --control {self.control}\n")
        (sessions / f"{SESSION}.desktop").write_text(
            "[Desktop Entry]\nName=pam_faceid session check\nType=Application\n"
            f"Exec={SYSTEM_PYTHON} {self.scripts / 'faceid-session-check.py'} --out {self.out}\n")
        wrapper = self.scripts / "session-wrapper"
        wrapper.write_text('#!/bin/sh\nexec /bin/sh -c "$1"\n')  # LightDM passes Exec as one word
        os.chmod(wrapper, 0o755)
        greeter = GREETER
        if self.gtk_user is not None:
            # lightdm-gtk-greeter asks for Debian's default session name whatever the hint: the same session there
            shutil.copy(sessions / f"{SESSION}.desktop", sessions / "lightdm-xsession.desktop")
            greeter = "lightdm-gtk-greeter"
            shutil.copy(f"/usr/share/xgreeters/{greeter}.desktop", greeters / f"{greeter}.desktop")
            state = self.lightdm_home / ".cache" / greeter
            state.mkdir(parents=True)
            (state / "state").write_text(f"[greeter]\nlast-user={self.gtk_user}\n")
            lightdm = pwd.getpwnam("lightdm")
            for path in (self.lightdm_home / ".cache", state, state / "state"):
                os.chown(path, lightdm.pw_uid, lightdm.pw_gid)
        config = self.base / "lightdm.conf"
        config.write_text(
            "[LightDM]\nstart-default-seat=true\ngreeter-user=lightdm\nbackup-logs=false\n"
            f"log-directory={self.base / 'log'}\nrun-directory={self.base / 'run'}\n"
            f"cache-directory={self.base / 'cache'}\nsessions-directory={sessions}\ngreeters-directory={greeters}\n"
            "[Seat:*]\ntype=xremote\nxserver-hostname=127.0.0.1\n"
            f"xserver-display-number={self.display}\ngreeter-session={greeter}\nuser-session={SESSION}\n"
            f"session-wrapper={wrapper}\ngreeter-hide-users={'false' if self.gtk_user else 'true'}\n"
            "allow-guest=false\nexit-on-failure=true\n")
        return config

    def start(self) -> "LightDM":
        """Xvfb, the system bus, then lightdm; returns once the greeter has connected."""
        xvfb = subprocess.Popen(["Xvfb", f":{self.display}", "-listen", "tcp", "-screen", "0", "640x480x24",
                                 "-nolisten", "unix"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(xvfb)

        def x_up() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", 6000 + self.display)) == 0

        _wait("Xvfb listening", x_up, 10, lambda: xvfb.poll() is None)
        bus_config = self.base / "system-bus.conf"
        bus_socket = self.base / "system_bus_socket"
        bus_config.write_text(SYSTEM_BUS_CONFIG.format(path=bus_socket))
        done = subprocess.run(["dbus-daemon", f"--config-file={bus_config}", "--fork", "--print-pid"],
                              capture_output=True, text=True, check=True, timeout=10)
        self.bus_pid = int(done.stdout.split()[0])
        config = self._write_config()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus_socket}"}
        self.log = open(self.base / "lightdm.out", "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.namespace("lightdm", "-c", str(config), "--debug"), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.gtk_user is None:
            self.connected = self.wait_event("connected", since=0, timeout=30)["t"]
        return self

    # ------------------------------------------------------------ use

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def logs(self) -> str:
        text = (self.base / "lightdm.out").read_text(errors="replace")
        for log in sorted((self.base / "log").glob("*.log")):
            text += f"\n--- {log.name}\n" + log.read_text(errors="replace")
        return text[-6000:]

    def wait_event(self, kind: str, since: int, timeout: float = 20, request: str | None = None) -> dict[str, Any]:
        """The first ``kind`` event after the first ``since`` events (of ``request`` when named)."""
        def found() -> dict[str, Any] | None:
            for event in self.events()[since:]:
                if event["event"] == kind and (request is None or event["request"] == request):
                    return event
            return None

        try:
            return _wait(f"greeter event {kind!r}", found, timeout,
                         lambda: self.proc is not None and self.proc.poll() is None)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; events: {self.events()[since:]}\nlightdm log:\n{self.logs()}") from None

    def login(self, user: str, password: str | None = None) -> "Attempt":
        """Queue one login request for the greeter; its events are read from the returned Attempt."""
        self.taken += 1
        name = f"{self.taken:04d}-{secrets.token_hex(3)}"
        start = len(self.events())
        body = {"user": user, "session": SESSION, **({"password": password} if password is not None else {})}
        tmp = self.control / "requests" / f".{name}.tmp"
        tmp.write_text(json.dumps(body))
        os.chmod(tmp, 0o644)
        tmp.rename(self.control / "requests" / f"{name}.json")
        return Attempt(self, name, start)

    def give_session_env(self, user: GreeterUser) -> Path:
        """pam_env in the private lightdm service sets XDG_RUNTIME_DIR and DBUS_SESSION_BUS_ADDRESS for ``user``'s
        sessions (logind's part; see GreeterUser.start_session_bus), before pam_gnome_keyring starts its daemon."""
        runtime = self.base / f"xdg-{user.uid}"
        env_file = self.base / "session.env"
        env_file.write_text(f"XDG_RUNTIME_DIR={runtime}\nDBUS_SESSION_BUS_ADDRESS=unix:path={runtime / 'bus'}\n")
        service = self.pam_dir / "lightdm"
        anchor = "session      required pam_env.so readenv=1 envfile=/etc/default/locale\n"
        text = service.read_text()
        assert anchor in text, text
        service.write_text(text.replace(anchor, anchor + f"session required pam_env.so envfile={env_file}\n"))
        return runtime

    def session_records(self) -> list[dict[str, Any]]:
        return [json.loads(path.read_text()) for path in sorted(self.out.glob("session-*.json"))]

    def stop(self) -> None:
        """SIGTERM to lightdm (it stops its greeter and sessions), then the X server and the bus."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if self.bus_pid is not None:
            try:
                os.kill(self.bus_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.bus_pid = None
        if getattr(self, "log", None) is not None:
            self.log.close()


class Attempt:
    """One login request's events, as the greeter recorded them."""

    def __init__(self, lightdm: LightDM, name: str, start: int):
        self.lightdm = lightdm
        self.name = name
        self.start = start

    def wait(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        return self.lightdm.wait_event(kind, self.start, timeout, request=self.name)

    def events(self) -> list[dict[str, Any]]:
        return [event for event in self.lightdm.events()[self.start:] if event["request"] == self.name]

    def kinds(self) -> list[str]:
        return [event["event"] for event in self.events()]

    def session(self, before: int, timeout: float = 20) -> dict[str, Any]:
        """The session record written after the first ``before`` ones."""
        records = _wait("the session's record", lambda: self.lightdm.session_records()[before:], timeout,
                        lambda: self.lightdm.proc is not None and self.lightdm.proc.poll() is None)
        return records[0]
