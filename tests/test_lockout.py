"""Lockout and password policy: the state file, a real faceidd, the admin CLI and the real PAM stack.

Without a model the daemon answers an enrolled user's session with "error"
before any frame, so no session can fail for real; these tests then write the
failures through LockoutStore (what the daemon's after_session hook calls)
and check everything around them: the refusal at hello, its audit line,
restarts, `faceid unlock`, `faceid status`, corrupt and unsafe files, and the
password rule through pam_exec. The tests that make faces fail for real need
the model (FACEID_TEST_MODEL or the bundled one) and skip without it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_support import faceid
from faceidd_util import HELPER, PYTHON, enrol, require_model, run_as_nobody, write_config
from faces_support import OTHER_PERSON, PERSON, fill_image_folder

from pam_faceid.helper import main as helper
from pam_faceid.pamstack import pamconf
from pam_faceid.common import protocol
from pam_faceid.daemon.decision import Verdict
from pam_faceid.daemon.server import Daemon
from pam_faceid.daemon.lockout import LockoutStore
from pam_faceid.common.store import Store, StoreError, atomic_write_json

QUIET = {"auth": {"abort_if_ssh": False, "abort_if_lid_closed": False}}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    return folder


# ---------------------------------------------------------------- the store

def test_max_failures_within_the_window_lock_until_the_duration_ends(state):
    store = LockoutStore(state)
    t = 1_000_000.0
    assert store.record_failure("alice", t, 3, 60, 300) is None
    assert store.record_failure("alice", t + 10, 3, 60, 300) is None
    assert store.locked(t + 10) == {}
    assert store.record_failure("alice", t + 20, 3, 60, 300) == t + 320
    assert store.locked(t + 21) == {"alice": t + 320}
    result, reason = store.refusal("alice", t + 21)
    assert result == "locked_out" and "too many failed face attempts" in reason
    assert store.refusal("bob", t + 21) is None
    assert store.locked(t + 320) == {} and store.refusal("alice", t + 320) is None
    assert store.read("alice").failures == []  # the lockout used them up: a fresh count afterwards


def test_failures_older_than_the_window_do_not_count(state):
    store = LockoutStore(state)
    t = 1_000_000.0
    store.record_failure("alice", t, 2, 60, 300)
    assert store.record_failure("alice", t + 61, 2, 60, 300) is None
    assert store.read("alice").failures == [t + 61]


def test_a_match_forgets_the_failures_and_unlock_clears_a_lockout(state):
    store = LockoutStore(state)
    t = time.time()
    store.record_failure("alice", t, 3, 60, 300)
    store.record_failure("alice", t, 3, 60, 300)
    store.record_success("alice")
    assert store.read("alice").failures == []
    assert store.clear("alice") is False  # nothing to clear
    for _ in range(3):
        store.record_failure("alice", t, 3, 60, 300)
    store.record_password("alice", t)
    assert "alice" in store.locked()
    assert store.clear("alice") is True
    assert store.locked() == {} and store.read("alice").password_used == t  # unlock keeps the password record


def test_state_is_a_versioned_checksummed_root_only_file_that_outlives_the_process(state):
    LockoutStore(state).record_failure("alice", 1_000_000.0, 5, 60, 300)
    path = state / "lockout" / "alice.json"
    obj = json.loads(path.read_text())
    assert obj["format"] == "pam_faceid.lockout" and obj["version"] == 1 and len(obj["sha256"]) == 64
    assert obj["failures"] == [1_000_000.0]
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o777 == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "alice.json"]  # no temporary file left
    assert LockoutStore(state).read("alice").failures == [1_000_000.0]  # a new reader (a restarted daemon)


def test_concurrent_writers_lose_no_failure(state):
    store = LockoutStore(state)
    t = time.time()
    threads = [threading.Thread(target=store.record_failure, args=("alice", t, 1000, 600, 300)) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(store.read("alice").failures) == 16


def test_failures_recorded_out_of_order_all_count(state):
    """Concurrent sessions read the clock before they wait for the lock, so a failure may be written after a later
    one; it must still count (three parallel refused sessions were locked out only now and then)."""
    store = LockoutStore(state)
    t = 1_000_000.0
    assert store.record_failure("alice", t + 0.02, 3, 60, 300) is None
    assert store.record_failure("alice", t + 0.01, 3, 60, 300) is None
    assert store.record_failure("alice", t, 3, 60, 300) == t + 300


def test_a_corrupt_or_unknown_version_file_refuses_that_user_only_and_unlock_rewrites_it(state):
    store = LockoutStore(state)
    for user in ("alice", "bob", "carol"):
        store.record_failure(user, time.time(), 5, 60, 300)
    path = state / "lockout" / "alice.json"
    path.write_text(path.read_text().replace("alice", "alicf", 1))
    obj = json.loads((state / "lockout" / "bob.json").read_text())
    atomic_write_json(state / "lockout" / "bob.json", {**obj, "version": 99})  # valid checksum, future version
    good, bad = store.entries()
    assert set(good) == {"carol"}
    assert "checksum does not match" in bad["alice"] or "holds user" in bad["alice"]
    assert "format version 99 is not supported" in bad["bob"]
    result, reason = store.refusal("alice", time.time())
    assert result == "error" and "faceid unlock alice" in reason
    assert store.refusal("carol", time.time()) is None
    assert store.clear("alice") is True and store.clear("bob") is True
    assert store.entries()[1] == {}


def test_unsafe_owner_or_mode_is_refused_with_the_fix(state):
    store = LockoutStore(state)
    store.record_failure("alice", time.time(), 5, 60, 300)
    path = state / "lockout" / "alice.json"
    os.chmod(path, 0o644)
    result, reason = store.refusal("alice", time.time())
    assert result == "error" and f"fix: chmod 0600 {path}" in reason
    with pytest.raises(StoreError, match="fix: chmod 0600"):
        store.clear("alice")
    with pytest.raises(StoreError, match="fix: chmod 0600"):
        store.record_failure("alice", time.time(), 5, 60, 300)
    os.chmod(path, 0o600)
    os.chmod(path.parent, 0o775)
    assert "fix: chmod 0700" in store.refusal("alice", time.time())[1]
    os.chmod(path.parent, 0o700)
    if os.geteuid() == 0:
        os.chown(path, 65534, -1)
        assert "fix: chown 0" in store.refusal("alice", time.time())[1]


def test_password_rule(state):
    store = LockoutStore(state)
    t = 1_000_000.0
    assert store.refusal("alice", t, 0) is None  # off
    assert store.refusal("alice", t, 48)[0] == "password_required"
    store.record_password("alice", t)
    mtime = os.stat(state / "lockout" / "alice.json").st_mtime_ns
    store.record_password("alice", t + 30)  # a repeat within a minute writes nothing
    assert os.stat(state / "lockout" / "alice.json").st_mtime_ns == mtime and store.read("alice").password_used == t
    assert store.refusal("alice", t + 47.9 * 3600, 48) is None
    result, reason = store.refusal("alice", t + 48.1 * 3600, 48)
    assert result == "password_required" and "48.1 h ago" in reason


# ---------------------------------------------------------------- the daemon's hooks, in process

def test_daemon_hooks_count_failures_clear_on_match_and_tell_a_face_match_from_a_password(tmp_path):
    config = write_config(tmp_path / "etc" / "config.yaml", {
        "daemon": {"state_dir": str(tmp_path / "state"), "socket": str(tmp_path / "s.sock")},
        "lockout": {"max_failures": 2, "window": 60, "duration": 300}})
    daemon = Daemon(str(config), {})
    state = daemon.state
    store = LockoutStore(tmp_path / "state")
    for result in ("no_face", "timeout", "error", "no_match"):
        daemon.sessions.after_session("alice", Verdict(result, frames=3), state)
    assert len(store.read("alice").failures) == 1  # only no_match counts
    daemon.sessions.after_session("alice", Verdict("match", 0.9, 2), state)
    assert store.read("alice").failures == []
    sudo, other = (4242, 1), (4243, 1)  # two PAM application processes: (pid, start time)
    for stage in ("auth", "account"):  # the face just matched: no password was used
        assert daemon.sessions.password_use("alice", stage, sudo, state)[0] is False
    assert store.read("alice").password_used is None
    assert daemon.sessions.password_use("bob", "account", sudo, state)[0] is False  # cached sudo: no auth at all
    assert daemon.sessions.password_use("bob", "auth", sudo, state)[0] is False  # a password was taken, maybe wrong
    assert daemon.sessions.password_use("bob", "account", other, state)[0] is False  # another process's account
    assert store.read("bob").password_used is None
    assert daemon.sessions.password_use("bob", "account", sudo, state) == (True, None)  # the same login succeeded
    assert store.read("bob").password_used == pytest.approx(time.time(), abs=5)
    assert daemon.sessions.password_use("bob", "account", sudo, state)[0] is False  # confirmed once only
    daemon.sessions.password_use("carol", "auth", sudo, state)  # a wrong password, then a face match on a retry
    daemon.sessions.after_session("carol", Verdict("match", 0.9, 2), state)
    daemon.sessions.face_matches["carol"] -= 60  # past the grace: only the cancelled note could still count
    assert daemon.sessions.password_use("carol", "account", sudo, state)[0] is False
    assert store.read("carol").password_used is None
    daemon.sessions.after_session("bob", Verdict("no_match", 0.1, 5), state)
    assert "bob" not in store.locked()
    daemon.sessions.after_session("bob", Verdict("not_live", 0.9, 5), state)  # a photo the liveness check refused
    assert "bob" in store.locked() and "bob" in daemon.status()["lockouts"]


# ---------------------------------------------------------------- a real faceidd, the helper and the CLI

def _enrol_fake(state_dir: Path, user: str) -> None:
    """An enrolment file for ``user`` (a unit vector: it matches nothing, and needs no model)."""
    Store(state_dir).add_templates(user, np.eye(128, dtype=np.float32)[0])


def _helper(user: str, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELPER), "--config", str(config)], env={"PAM_USER": user, "PAM_SERVICE": "sudo"},
                          capture_output=True, text=True, timeout=30)


def _audit(d, user: str) -> list[str]:
    return [line for line in d.logs().splitlines() if f"auth user={user} " in line]


def _next_audit(d, user: str, before: int, timeout: float = 10) -> str:
    """The audit line of the session after the first ``before`` ones of ``user``."""
    deadline = time.monotonic() + timeout
    while len(_audit(d, user)) <= before:
        assert time.monotonic() < deadline, d.logs()
        time.sleep(0.05)
    return _audit(d, user)[before]


def _lock(state_dir: Path, user: str, max_failures: int) -> None:
    for _ in range(max_failures):
        LockoutStore(state_dir).record_failure(user, time.time(), max_failures, 600, 600)


def test_lockout_is_refused_at_hello_audited_kept_across_restarts_shown_and_lifted_by_unlock(faceidd, temp_user):
    user = temp_user.name
    d = faceidd({**QUIET, "lockout": {"max_failures": 2, "duration": 600}})
    _enrol_fake(d.state_dir, user)
    _lock(d.state_dir, user, 2)
    d.start()
    proc = _helper(user, d.config_path)
    assert proc.returncode == helper.EXIT_NOT_RECOGNISED and proc.stdout == ""  # the person is shown nothing
    line = _next_audit(d, user, 0)
    assert re.search(r"verdict=locked_out score=- frames=0 ms=\d+ .*reason='too many failed face attempts", line), line

    d.stop()
    d.start()  # a restart keeps the lockout
    assert _helper(user, d.config_path).returncode == helper.EXIT_NOT_RECOGNISED
    assert "verdict=locked_out" in _next_audit(d, user, 1)

    status = faceid(d.config_path, "status", "--json")
    report = json.loads(status.stdout)
    assert user in report["lockouts"]["locked"] and user in report["daemon"]["lockouts"]
    assert f"lockouts: {user} until " in faceid(d.config_path, "status").stdout

    done = faceid(d.config_path, "unlock", user)
    assert done.returncode == 0 and f"{user} unlocked" in done.stdout, done.stderr
    assert _helper(user, d.config_path).returncode != helper.EXIT_MATCH
    assert "verdict=locked_out" not in _next_audit(d, user, 2)  # the running daemon saw the unlock at once
    again = faceid(d.config_path, "unlock", user)
    assert again.returncode == 0 and "not locked out" in again.stdout
    assert "lockouts: none" in faceid(d.config_path, "status").stdout


def test_a_corrupt_lockout_file_refuses_that_user_reports_it_and_never_stops_the_daemon(faceidd, temp_user):
    user = temp_user.name
    d = faceidd(QUIET)
    _enrol_fake(d.state_dir, user)
    _enrol_fake(d.state_dir, "root")
    LockoutStore(d.state_dir).record_failure(user, time.time(), 5, 600, 600)
    (d.state_dir / "lockout" / f"{user}.json").write_bytes(b"\x00garbage")
    d.start()
    assert _helper(user, d.config_path).returncode == helper.EXIT_NOT_RECOGNISED
    line = _next_audit(d, user, 0)
    assert "verdict=error" in line and "lockout state unreadable" in line
    _helper("root", d.config_path)
    assert "lockout state unreadable" not in _next_audit(d, "root", 0)
    assert d.proc.poll() is None
    status = faceid(d.config_path, "status")
    assert status.returncode == 1 and f"UNREADABLE {user}:" in status.stdout and "not JSON" in status.stdout
    assert faceid(d.config_path, "unlock", user).returncode == 0
    assert "UNREADABLE" not in faceid(d.config_path, "status").stdout


def test_unlock_mistakes_are_one_line(faceidd, temp_user):
    d = faceidd(QUIET)
    usage = faceid(d.config_path, "unlock", "no/such")
    assert usage.returncode == 2 and "invalid user name" in usage.stderr
    LockoutStore(d.state_dir).record_failure(temp_user.name, time.time(), 5, 600, 600)
    os.chmod(d.state_dir / "lockout", 0o777)
    bad = faceid(d.config_path, "unlock", temp_user.name)
    assert bad.returncode == 1 and "fix: chmod 0700" in bad.stderr and "Traceback" not in bad.stderr
    nobody = subprocess.run(["runuser", "-u", "nobody", "--", str(HELPER.parent / "faceid"), "unlock", "root"],
                            capture_output=True, text=True, timeout=60)
    assert nobody.returncode == 4 and "needs root" in nobody.stderr


# ---------------------------------------------------------------- password_used: who may say it

PASSWORD_USED = """
import json, sys
from pam_faceid.common import protocol
try:
    with protocol.Client(sys.argv[1], 2.0) as client:
        print(json.dumps(client.request("password_used", {"user": sys.argv[2], "service": "x"}, timeout=2.0).fields))
except protocol.DaemonError as exc:
    print(json.dumps({"error": str(exc)}))
"""


HELLO = """
import json, sys
from pam_faceid.common import protocol
with protocol.Client(sys.argv[1], 2.0) as client:
    answer = client.request("hello", protocol.hello_fields("nobody", "i3lock"), timeout=2.0)
    print(json.dumps([answer.type, answer.get("result")]))
"""


def test_password_used_only_from_root(faceidd):
    """A user's own process cannot claim a password it never typed: nobody's report, about root or about itself,
    is refused, logged and changes nothing; root's report (the PAM stack's pam_exec line) is recorded."""
    d = faceidd({**QUIET, "auth": {**QUIET["auth"], "require_password_after": 1}})
    _enrol_fake(d.state_dir, "nobody")
    LockoutStore(d.state_dir).record_password("nobody", time.time() - 7200)  # two hours ago: the password is due
    before = LockoutStore(d.state_dir).read("nobody").password_used
    d.start()
    os.chmod(d.base / "run", 0o755)
    report = PASSWORD_USED.replace("sys.argv[1]", repr(d.socket))
    hello = HELLO.replace("sys.argv[1]", repr(d.socket))
    for user in ("nobody", "root"):
        answer = json.loads(run_as_nobody(report.replace("sys.argv[2]", repr(user))).stdout)
        assert answer == {"error": "faceidd refused: refused: password_used is accepted from root only"}, answer
        assert f"refused password_used for user={user!r} from pid=" in d.wait_log(f"for user={user!r}")
    assert LockoutStore(d.state_dir).read("nobody").password_used == before
    assert LockoutStore(d.state_dir).read("root").password_used is None
    assert "password_used user=" not in d.logs()
    assert json.loads(run_as_nobody(hello).stdout) == ["verdict", "password_required"]

    as_locker = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(HELPER),
                                "--config", str(d.config_path), "--password-used"], capture_output=True, text=True,
                               timeout=10, env={"PAM_USER": "nobody", "PAM_TYPE": "auth"})
    assert as_locker.returncode == helper.EXIT_SKIPPED, as_locker.stderr  # a locker's stack runs as the user
    assert "reported from root PAM stacks only" in as_locker.stderr and d.logs().count("password_used") == 2

    with protocol.Client(d.socket, 2.0) as client:  # the auth stack's report: only noted
        answer = client.request("password_used", {"user": "nobody", "service": "x"}, timeout=2.0)
    assert answer.fields == {"recorded": False, "reason": "noted: recorded when the account stack confirms the login"}
    assert LockoutStore(d.state_dir).read("nobody").password_used == before
    with protocol.Client(d.socket, 2.0) as client:  # the account stack's, from the same application: recorded
        answer = client.request("password_used", {"user": "nobody", "service": "x", "stage": "account"}, timeout=2.0)
    assert answer.fields == {"recorded": True, "reason": None}
    assert LockoutStore(d.state_dir).read("nobody").password_used == pytest.approx(time.time(), abs=10)
    assert "password_used user=nobody service=x stage=account pid=" in d.logs()
    assert json.loads(run_as_nobody(hello).stdout)[1] != "password_required"


# ---------------------------------------------------------------- auth.require_password_after through PAM

PAM_CLIENT = """
import json, sys
import pam
args = json.loads(sys.argv[1])
p = pam.pam()
ok = p.authenticate(args["user"], args["password"], service=args["service"], resetcreds=False)
print(json.dumps([ok, p.messages]))
"""

SERVICE = ("auth [success=1 default=ignore] pam_unix.so nullok\n"
           "auth requisite pam_deny.so\n"
           "auth required pam_permit.so\n"
           "account required pam_permit.so\n")
"""A service as Debian writes them, which `faceid pam enable` turns into the stack under test (insert_lines)."""

AUTH_UPDATE_STACK = ("auth [success=2 default=ignore] pam_exec.so quiet stdout seteuid {helper}\n"
                     "auth [success=1 default=ignore] pam_unix.so nullok\n"
                     "auth requisite pam_deny.so\n"
                     "auth required pam_permit.so\n"
                     "auth [default=ignore] pam_exec.so quiet seteuid {helper} --password-used\n"
                     "account required pam_permit.so\n"
                     "account [default=ignore] pam_exec.so quiet seteuid {helper} --password-used\n")
"""common-auth as pam-auth-update writes it with both profiles: a face match also reaches the password-used line."""


@pytest.fixture
def pam_stack(pam_files):
    """``pam_stack(config, template=None)`` -> a /etc/pam.d service: SERVICE as `faceid pam enable` edits it, or
    ``template`` with {helper} filled in."""

    def make(config: Path, template: str | None = None) -> str:
        helper_command = f"{HELPER} --config {config}"
        return pam_files(template.format(helper=helper_command) if template
                         else pamconf.insert_lines(SERVICE, helper_command), "faceid-lockout")

    return make


def pam_login(service: str, user: str, password: str) -> tuple[bool, list[str]]:
    args = {"service": service, "user": user, "password": password}
    proc = subprocess.run([str(PYTHON), "-c", PAM_CLIENT, json.dumps(args)], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ok, shown = json.loads(proc.stdout)
    return ok, shown


def test_face_is_refused_until_the_password_was_used(faceidd, temp_user, pam_stack):
    user = temp_user.name
    d = faceidd({**QUIET, "auth": {**QUIET["auth"], "require_password_after": 1}})
    _enrol_fake(d.state_dir, user)
    d.start()
    service = pam_stack(d.config_path)
    text = (Path("/etc/pam.d") / service).read_text().splitlines()
    assert "--password-used" in text[4] and "faceid-helper" in text[0]

    ok, shown = pam_login(service, user, "wrong")
    assert not ok and shown == ["Password: "]  # pam_unix's prompt; the helper showed nothing
    assert "verdict=password_required" in _next_audit(d, user, 0)
    assert "password_used" not in d.logs()  # a wrong password never reaches the line after pam_unix

    ok, _ = pam_login(service, user, temp_user.password)
    assert ok
    assert "verdict=password_required" in _next_audit(d, user, 1)
    d.wait_log(f"password_used user={user} service={service} stage=account pid=")
    assert "recorded=yes" in d.logs()
    assert LockoutStore(d.state_dir).read(user).password_used == pytest.approx(time.time(), abs=30)

    pam_login(service, user, "wrong")
    assert "verdict=password_required" not in _next_audit(d, user, 2)  # face auth is tried again


def test_password_used_line_is_quick_and_silent_when_the_daemon_is_down(faceidd, temp_user, pam_stack):
    d = faceidd(QUIET)  # never started
    service = pam_stack(d.config_path)
    started = time.monotonic()
    ok, shown = pam_login(service, temp_user.name, temp_user.password)
    assert ok and shown == ["Password: "]
    assert time.monotonic() - started < 8  # no hang (the helper's watchdog is 10 s); the machine may be busy


# ---------------------------------------------------------------- real faces (need the model)

@pytest.fixture
def impostor_setup(faceidd, temp_user, person_images, pam_stack):
    require_model()
    user = temp_user.name
    genuine = person_images(PERSON)
    # The frames are different photos: liveness would refuse them all (test_liveness.py covers it).
    d = faceidd({**QUIET, "lockout": {"max_failures": 2, "window": 600, "duration": 600}, "liveness": {"mode": "off"}})
    enrol(d.state_dir, user, genuine[:4])
    camera = fill_image_folder(person_images(OTHER_PERSON)[:8], d.base / "impostor", copy=True)
    d.rewrite_config({"camera": {"device": str(camera), "dark_threshold": 0.0}})
    d.start()
    return d, user, genuine, pam_stack(d.config_path, AUTH_UPDATE_STACK)


def test_failed_faces_lock_out_and_a_match_after_unlock_clears_the_count(impostor_setup, temp_user):
    d, user, genuine, service = impostor_setup
    for _ in range(2):
        assert not pam_login(service, user, "")[0]
    verdicts = [re.search(r"verdict=(\w+)", line).group(1) for line in _audit(d, user)]
    assert verdicts == ["no_match", "no_match"], d.logs()
    assert "lockout user=" in d.logs()
    assert not pam_login(service, user, "")[0]
    assert "verdict=locked_out score=- frames=0" in _next_audit(d, user, 2)  # refused at hello: no frames taken
    assert pam_login(service, user, temp_user.password)[0]  # the password still works
    d.wait_log(f"password_used user={user} service={service} stage=account pid=")

    assert faceid(d.config_path, "unlock", user).returncode == 0
    assert not pam_login(service, user, "")[0]
    assert len(LockoutStore(d.state_dir).read(user).failures) == 1

    # The enrolled photos themselves: this is about lockout, not about how well the model recognises.
    camera = fill_image_folder(genuine[:4], d.base / "genuine", copy=True)
    d.rewrite_config({"camera": {"device": str(camera)}})
    ok, _ = pam_login(service, user, "")
    assert ok, d.logs()
    assert LockoutStore(d.state_dir).read(user).failures == []
    d.wait_log("recorded=no reason='a face match was granted")  # in this stack a face match reaches that line too
