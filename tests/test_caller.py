"""A face proves only the person asking: real su and runuser, the real su PAM file, a real faceidd.

The system's /etc/pam.d/su is never touched: each run happens in a private
mount namespace (``unshare -m``) where a copy of /etc/pam.d, with the helper
line after pam_rootok, is bind-mounted over it. logind's view of a session
is laid out the way logind keeps it: a ``session-ID.scope`` cgroup the client
runs in, and /run/systemd/sessions/ID (a private tmpfs in the namespace).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from faces_support import PERSON, session_frames, write_frames
from faceidd_util import HELPER, enrol, require_model

from pam_faceid.helper import caller
from pam_faceid.helper import main as helper

def _session_hierarchy() -> Path:
    """Where sd-login reads a process's session scope: the unified (cgroup2) hierarchy where one is mounted at
    /sys/fs/cgroup/unified (hybrid) or /sys/fs/cgroup (unified), else the legacy name=systemd one."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    cgroup2 = {fields[1] for fields in (line.split() for line in mounts) if len(fields) > 2 and fields[2] == "cgroup2"}
    return next((Path(p) for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup") if p in cgroup2),
                Path("/sys/fs/cgroup/systemd"))


CGROUP_ROOT = _session_hierarchy()
"""The hierarchy logind's session scopes are read from here (the unified one on this hybrid machine)."""


def require_namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (unshare -m, su, runuser)")
    for tool in ("unshare", "su", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def pam_dir_with_face_su(base: Path, config: Path) -> Path:
    """A copy of /etc/pam.d whose su runs the helper right after pam_rootok (as a profile in common-auth would)."""
    copy = base / "pam.d"
    shutil.copytree("/etc/pam.d", copy, symlinks=True)
    lines = (copy / "su").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "pam_rootok" in line and not line.lstrip().startswith("#"))
    lines.insert(at + 1, f"auth [success=done default=ignore] pam_exec.so quiet stdout seteuid {HELPER} "
                         f"--config {config}")
    (copy / "su").write_text("\n".join(lines) + "\n")
    return copy


def run_private(pam_dir: Path, command: str, setup: str = "") -> subprocess.CompletedProcess:
    """``command`` (shell) in a private mount namespace where /etc/pam.d is ``pam_dir``; stdin is /dev/null."""
    script = f"set -e; mount --bind {shlex.quote(str(pam_dir))} /etc/pam.d; {setup}\n{command}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})


@pytest.fixture
def face_at_camera(faceidd, make_user, person_images):
    """(faceidd, victim, attacker, bystander, pam.d copy): the victim enrolled and at the camera; all with /bin/sh."""
    require_namespaces()
    require_model()
    victim, attacker, bystander = (make_user(shell="/bin/sh") for _ in range(3))
    genuine = person_images(PERSON)
    d = faceidd({"liveness": {"mode": "off"}, "lockout": {"max_failures": 1}})
    enrol(d.state_dir, victim, genuine[:4])
    d.rewrite_config({"camera": {"device": str(write_frames(session_frames(genuine[:4]), d.base / "camera"))}})
    d.start()
    return d, victim, attacker, bystander, pam_dir_with_face_su(d.base, d.config_path)


def audit_lines(d, user: str) -> int:
    return d.logs().count(f"auth user={user} ")


def test_another_user_cannot_su_to_an_enrolled_user_by_their_face(face_at_camera):
    d, victim, attacker, bystander, pam_dir = face_at_camera
    attempts = [run_private(pam_dir, f"runuser -u {attacker} -- su {victim} -c id") for _ in range(2)]
    for attempt in attempts:
        assert attempt.returncode != 0, attempt.stdout + attempt.stderr
        assert f"({victim})" not in attempt.stdout and helper.NOTICE_MATCH not in attempt.stdout
    assert audit_lines(d, victim) == 0, "faceidd must not be asked at all: no lockout count, no enrolment oracle"
    not_enrolled = run_private(pam_dir, f"runuser -u {attacker} -- su {bystander} -c id")
    assert (not_enrolled.returncode, not_enrolled.stdout) == (attempts[0].returncode, attempts[0].stdout), \
        "an enrolled target must look exactly like one who is not"

    own = run_private(pam_dir, f"runuser -u {victim} -- su {victim} -c id")
    assert own.returncode == 0 and f"({victim})" in own.stdout, own.stdout + own.stderr + d.logs()
    assert helper.NOTICE_MATCH in own.stdout
    assert audit_lines(d, victim) == 1 and d.audit_line(f"auth user={victim} ", "verdict=match"), d.logs()


@pytest.fixture
def session_scope():
    """``session_scope(id)`` -> the cgroup.procs file of a ``session-ID.scope`` cgroup; removed afterwards."""
    if not (CGROUP_ROOT / "cgroup.procs").is_file():
        pytest.skip(f"no cgroup hierarchy for session scopes at {CGROUP_ROOT}")
    parent = CGROUP_ROOT / f"faceid-test-{secrets.token_hex(4)}.slice"

    def make(session: str) -> Path:
        scope = parent / f"session-{session}.scope"
        scope.mkdir(parents=True)
        return scope / "cgroup.procs"

    try:
        yield make
    finally:
        for scope in sorted(parent.glob("*.scope")):
            scope.rmdir()
        if parent.exists():
            parent.rmdir()


@pytest.mark.parametrize("remote", [True, False])
def test_a_remote_logind_session_is_refused_even_with_ssh_variables_removed(face_at_camera, session_scope, remote):
    """sudo/su inside an SSH login, its SSH_* variables unset: logind's session record still says remote."""
    d, victim, _, _, pam_dir = face_at_camera
    session = f"fid{secrets.token_hex(3)}"
    procs = session_scope(session)
    uid = pwd.getpwnam(victim).pw_uid
    record = f"UID={uid}\nUSER={victim}\nACTIVE=1\nTYPE=tty\nREMOTE={int(remote)}\n" + \
        ("REMOTE_HOST=203.0.113.7\nSERVICE=sshd\n" if remote else "SEAT=seat0\n")
    setup = (f"mount -t tmpfs tmpfs {caller.SESSIONS_DIR}; printf %s {shlex.quote(record)} > "
             f"{caller.SESSIONS_DIR}/{session}; echo $$ > {procs}")
    run = run_private(pam_dir, f"exec runuser -u {victim} -- env -u SSH_CONNECTION -u SSH_CLIENT -u SSH_TTY "
                               f"su {victim} -c id", setup)
    if remote:
        assert run.returncode != 0 and f"({victim})" not in run.stdout, run.stdout + run.stderr
        assert audit_lines(d, victim) == 0
    else:
        assert run.returncode == 0 and f"({victim})" in run.stdout, run.stdout + run.stderr + d.logs()


def test_requester_witnesses(tmp_path):
    """Each witness alone refuses: PAM_RUSER, the caller's real uid; root callers (greeters) may ask for anyone."""
    me = os.getpid()
    assert caller.requester_problem("alice", 1234, {}, me) is None  # root, no login session: a greeter
    assert caller.requester_problem("alice", 1234, {"PAM_RUSER": "alice"}, me) is None
    assert caller.requester_problem("alice", 1234, {"PAM_RUSER": "mallory"}, me) == "requested by mallory for alice"
    nobody = pwd.getpwnam("nobody")
    child = subprocess.Popen(["setpriv", f"--reuid={nobody.pw_uid}", "--regid=nogroup", "--clear-groups",
                              "sleep", "30"])
    try:
        for _ in range(100):
            if caller.process_uids(child.pid)[0] == nobody.pw_uid:
                break
            subprocess.run(["sleep", "0.02"])
        assert caller.requester_problem("alice", 1234, {}, child.pid) == \
            "requested by nobody (the caller's uid) for alice"
        assert caller.requester_problem("nobody", nobody.pw_uid, {}, child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert caller.requester_problem("alice", 1234, {}, child.pid).startswith("cannot tell who is asking")


def test_remote_witnesses():
    assert caller.remote_reason({}) is None
    for loopback in ("::1", "127.0.0.1", "localhost"):  # a network daemon on loopback serves a peer too
        assert caller.remote_reason({"PAM_RHOST": loopback}) == f"remote session from {loopback}"
    assert caller.remote_reason({"PAM_RHOST": "10.1.2.3"}) == "remote session from 10.1.2.3"
    assert caller.remote_reason({"SSH_CONNECTION": "x"}) == "SSH session (SSH_CONNECTION set)"
    assert caller.remote_reason({"PAM_TTY": "ssh"}) == "SSH session (PAM_TTY=ssh)"
