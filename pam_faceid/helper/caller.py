"""Who asks for face auth, and from where: the PAM application that started the helper.

A face proves only that the person at the camera is the person asking. So
the helper refuses, before faceidd is asked anything, when the program that
runs PAM (sudo, su, a greeter, a locker: the helper's parent) acts for
someone other than the user being authenticated: ``su victim`` typed by
another user, a polkit agent asked to authenticate a chosen admin. Greeters
and console logins run as root with no requesting user yet, and keep working.

Where the session is also matters: a camera is in front of a local user
only. logind's view of the caller's session (the session scope of its
cgroup, which no unprivileged process can leave, asked through libsystemd's
sd-login) says whether it is remote;
without logind, sshd among the caller's ancestors, in its audit session or
holding its terminal does; the environment's SSH_* variables, which a caller
controls, are only an extra reason to skip.

Standard library only: the helper imports this on every login.
"""

from __future__ import annotations

import os
import pwd
from typing import Any, Mapping

from pam_faceid.common.procfs import read_proc, stat_fields

UNSET_LOGINUID = 4294967295
"""/proc/PID/loginuid of a process outside any login session (system services, greeters, containers)."""
SESSIONS_DIR = "/run/systemd/sessions"
"""Where logind keeps its session records (sd-login reads them; tests lay one out there)."""
SSH_VARIABLES = ("SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY")


def process_uids(pid: int) -> tuple[int | None, int | None]:
    """(real uid, audit login uid or None when unset) of process ``pid``; (None, None) when unreadable.

    For a setuid program (sudo, su, pkexec, polkit's agent helper) the real
    uid is the user who started it: the one asking.
    """
    real = None
    status = read_proc(pid, "status")
    for line in (status or b"").splitlines():
        if line.startswith(b"Uid:"):
            fields = line.split()
            real = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
            break
    raw = (read_proc(pid, "loginuid") or b"").strip()
    login = int(raw) if raw.isdigit() and int(raw) != UNSET_LOGINUID else None
    return real, login


def _name_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def requester_problem(user: str, uid: int, env: Mapping[str, str], caller_pid: int) -> str | None:
    """Why the caller may not use face auth for ``user`` (uid ``uid``), or None when it asks for itself.

    Three witnesses, each enough to refuse: PAM_RUSER (set by su and sudo to
    the user who typed the command), the caller's real uid (root or the
    user), and its audit login uid (the user who logged in to the session it
    runs in, kept across su and sudo).
    """
    ruser = env.get("PAM_RUSER", "").strip()
    if ruser and ruser != user:
        return f"requested by {ruser} for {user}"
    real, login = process_uids(caller_pid)
    if real is None:
        return f"cannot tell who is asking: /proc/{caller_pid} is unreadable"
    if real not in (0, uid):
        return f"requested by {_name_of(real)} (the caller's uid) for {user}"
    if login is not None and login != uid:
        return f"requested from {_name_of(login)}'s login session for {user}"
    return None


def _libsystemd() -> Any:
    """libsystemd through ctypes: logind's supported API (sd-login), or None where it is not installed."""
    import ctypes  # 1 ms; only here (the helper loads it anyway for PR_SET_PDEATHSIG)

    try:
        lib = ctypes.CDLL("libsystemd.so.0")
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    lib.sd_pid_get_session.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.sd_session_is_remote.argtypes = [ctypes.c_char_p]
    lib.sd_session_get_remote_host.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
    libc.free.argtypes = [ctypes.c_void_p]
    return ctypes, lib, libc


def _taken_string(ctypes: Any, libc: Any, pointer: Any) -> str | None:
    """The C string sd-login allocated for us, freed."""
    if not pointer.value:
        return None
    try:
        return ctypes.string_at(pointer.value).decode("utf-8", "replace")
    finally:
        libc.free(pointer.value)


def logind_session(pid: int) -> dict[str, str] | None:
    """logind's record of the session ``pid`` runs in (its id under "ID", REMOTE, REMOTE_HOST), or None (no
    libsystemd, no session, or one logind does not know).

    Asked through sd-login (sd_pid_get_session, sd_session_is_remote), the
    supported API: the session comes from the process's cgroup, which no
    unprivileged process can leave.
    """
    loaded = _libsystemd()
    if loaded is None:
        return None
    ctypes, lib, libc = loaded
    pointer = ctypes.c_void_p()
    if lib.sd_pid_get_session(pid, ctypes.byref(pointer)) < 0:
        return None
    name = _taken_string(ctypes, libc, pointer)
    if not name:
        return None
    remote = lib.sd_session_is_remote(name.encode())
    if remote < 0:
        return None
    record = {"ID": name, "REMOTE": "1" if remote > 0 else "0"}
    host = ctypes.c_void_p()
    if remote > 0 and lib.sd_session_get_remote_host(name.encode(), ctypes.byref(host)) >= 0:
        record["REMOTE_HOST"] = _taken_string(ctypes, libc, host) or ""
    return record


def _sshd_processes() -> set[int]:
    """Pids of running sshd processes (by their executable, which a user cannot give a root process)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.path.basename(os.readlink(f"/proc/{entry}/exe")) == "sshd":
                    found.add(int(entry))
            except OSError:
                continue
    return found


def _pts_masters(pid: int) -> set[int]:
    """Indexes of the pseudo-terminals whose master side process ``pid`` holds (ptmx fds' ``tty-index``)."""
    indexes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return indexes
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") not in ("/dev/ptmx", "/dev/pts/ptmx"):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
                for line in fh.read(4096).splitlines():
                    if line.startswith(b"tty-index:"):
                        indexes.add(int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            continue
    return indexes


PTS_MAJORS = range(136, 144)
"""Device majors of /dev/pts/N (Unix98 pseudo-terminal slaves)."""


def sshd_session(pid: int) -> str | None:
    """Why ``pid`` runs in an SSH session, found without logind and without anything its user can change; or None.

    Three witnesses: an sshd process among its ancestors; an sshd process in
    its audit session (``/proc/PID/sessionid``, set at login by pam_loginuid and
    kept by every descendant, even one re-parented to init); sshd holding the
    master side of its controlling terminal.
    """
    sshds = _sshd_processes()
    if not sshds:
        return None
    current, seen = pid, 0
    while current > 1 and seen < 64:
        if current in sshds:
            return f"sshd (pid {current}) is among its ancestors"
        fields = stat_fields(current)
        if len(fields) < 2 or not fields[1].isdigit():
            break
        current, seen = int(fields[1]), seen + 1
    session = (read_proc(pid, "sessionid") or b"").strip()
    if session.isdigit() and int(session) != UNSET_LOGINUID:
        for sshd in sshds:
            if (read_proc(sshd, "sessionid") or b"").strip() == session:
                return f"its audit session {int(session)} was opened by sshd (pid {sshd})"
    fields = stat_fields(pid)
    tty = int(fields[4]) if len(fields) > 4 and fields[4].lstrip(b"-").isdigit() else 0
    major, minor = (tty >> 8) & 0xFFF, (tty & 0xFF) | ((tty >> 12) & 0xFFF00)
    if major in PTS_MAJORS:
        index = (major - PTS_MAJORS.start) * 256 + minor
        for sshd in sshds:
            if index in _pts_masters(sshd):
                return f"sshd (pid {sshd}) holds its terminal /dev/pts/{index}"
    return None


def environment_of(pid: int) -> dict[str, str]:
    """Process ``pid``'s environment, best effort; empty when unreadable."""
    env = {}
    for item in (read_proc(pid, "environ", 1 << 20) or b"").split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def remote_reason(env: Mapping[str, str], caller_pid: int | None = None) -> str | None:
    """Why this looks like a remote session (the camera is not in front of that person), or None.

    PAM_RHOST (set by sshd and network logins) and logind's REMOTE flag are
    the trusted witnesses; SSH_* in our own or the caller's environment (sudo
    inside an SSH session) is one the caller can hide, so it only adds.
    """
    rhost = env.get("PAM_RHOST", "")
    if rhost:  # loopback too: a network daemon on 127.0.0.1 serves a peer, not the person at the camera
        return f"remote session from {rhost}"
    if env.get("PAM_TTY", "") == "ssh":
        return "SSH session (PAM_TTY=ssh)"
    if caller_pid is not None:
        session = logind_session(caller_pid)
        if session and session.get("REMOTE") == "1":
            host = session.get("REMOTE_HOST") or "an unknown host"
            return f"remote logind session {session['ID']} from {host}"
        if session is None:  # no logind here, or no session: look for sshd the way a user cannot hide
            why = sshd_session(caller_pid)
            if why:
                return f"SSH session: {why}"
    caller_env = environment_of(caller_pid) if caller_pid is not None else {}
    for source in (env, caller_env):
        for name in SSH_VARIABLES:
            if source.get(name):
                return f"SSH session ({name} set)"
    return None
