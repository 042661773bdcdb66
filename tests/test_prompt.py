"""Face or password, whichever comes first: real sudo in a pseudo-terminal against the stack 'faceid pam enable' writes.

Each sudo runs in a private mount namespace (``unshare -m``) where a copy of
/etc/pam.d and a sudoers file naming the throwaway user are bind-mounted, so
the real files, shared with everyone on this machine, are never touched.
'faceid pam enable --service sudo' edits the copy there (proving the password
path as always); then pexpect drives ``sudo`` as the throwaway user, whose
password the test sets, with a real faceidd and an image-folder camera.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_support import FACEID
from faceidd_util import HELPER, PYTHON, enrol, require_model
from faces_support import OTHER_PERSON, PERSON, session_frames, write_frames

from pam_faceid.common import scaffold
from pam_faceid.daemon.lockout import LockoutStore
from pam_faceid.helper import main as helper
from pam_faceid.helper import pam_prompt
from pam_faceid.pamstack import pamconf

pexpect = pytest.importorskip("pexpect", reason="pexpect not installed (./install.sh --dev)")

SUDO = "/usr/bin/sudo"
MARK = "SHELL-REACHED"
SCRIPT = f"{SUDO} /bin/echo {MARK}; echo rc=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?echo'"
"""What the user's shell runs: sudo, its exit status, then whether the terminal echoes again."""


def require_tools() -> None:
    needs = (("sudo", os.access(SUDO, os.X_OK)), ("libpam-python", pamconf.pam_python_available()),
             ("unshare", shutil.which("unshare") is not None))
    missing = [what for what, ok in needs if not ok]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install sudo libpam-python util-linux)")


@pytest.fixture
def sudo_user():
    """A throwaway user with a password the test knows; removed afterwards."""
    require_tools()
    with scaffold.ThrowawayUser(prefix="fidp", shell="/bin/sh") as user:
        yield user.name, user.password


class Namespace:
    """A copy of /etc/pam.d and a sudoers file, bind-mounted over the real ones in each command's own namespace."""

    def __init__(self, base: Path, user: str):
        self.pam_dir = base / "pam.d"
        shutil.copytree("/etc/pam.d", self.pam_dir, symlinks=True)
        self.sudoers = base / "sudoers"
        self.sudoers.write_text(f"Defaults lecture=never, timestamp_timeout=0, !use_pty\n{user} ALL=(ALL) ALL\n")
        os.chmod(self.sudoers, 0o440)

    def command(self, *argv: str) -> list[str]:
        mounts = 'mount --bind "$1" /etc/pam.d && mount --bind "$2" /etc/sudoers && shift 2 && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", str(self.pam_dir),
                str(self.sudoers), *argv]

    def enable(self, config: Path, *extra: str, service: str = "sudo", action: str = "enable") -> str:
        """'faceid pam enable' (or ``action``) for ``service`` in the copy; the service file it leaves."""
        done = subprocess.run(self.command(FACEID, "--config", str(config), "pam", action, "--service", service,
                                           *extra), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return (self.pam_dir / service).read_text()

    def sudo(self, user: str, script: str = SCRIPT, group: str | None = None) -> "pexpect.spawn":
        """``script`` (by default: sudo, then its status and the echo setting) as ``user`` in a pty."""
        argv = self.command("setpriv", f"--reuid={user}", f"--regid={group or user}", "--init-groups", "/bin/sh", "-c",
                            script)
        return pexpect.spawn(argv[0], argv[1:], env={"PATH": "/usr/bin:/bin", "TERM": "dumb"}, timeout=20,
                             encoding="utf-8", codec_errors="replace")


def helpers_running(config: Path) -> list[int]:
    """Pids of faceid-helper processes started with ``config``."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"faceid-helper" in part for part in cmdline) and str(config).encode() in cmdline:
            pids.append(int(entry))
    return pids


def finish(child: "pexpect.spawn") -> tuple[int, str]:
    """sudo's exit status and the echo setting the shell found afterwards ("echo" or "-echo")."""
    child.expect(r"rc=(\d+)")
    rc = int(child.match.group(1))
    child.expect(r"(-?echo)\r?\n")
    echo = child.match.group(1)
    child.expect(pexpect.EOF)
    return rc, echo


@pytest.fixture
def setup(faceidd, sudo_user, person_images):
    """(namespace, faceidd, user, password, genuine folder, stranger folder): the user enrolled from real images."""
    require_model()
    user, password = sudo_user
    genuine = person_images(PERSON)
    d = faceidd({"liveness": {"mode": "off"}, "auth": {"timeout": 4.0}})
    enrol(d.state_dir, user, genuine[:4])
    d.start()
    ns = Namespace(d.base, user)
    matching = write_frames(session_frames(genuine[:4]), d.base / "genuine")
    stranger = write_frames([f for _ in range(3) for f in session_frames(person_images(OTHER_PERSON)[:30], 1)],
                            d.base / "stranger")
    return ns, d, user, password, matching, stranger


def prompt_words(start: str, config: Path) -> str:
    """What 'faceid pam enable --start START' puts after the control of the pam_python face line."""
    return (f"pam_python.so {pamconf.PROMPT_MODULE} helper={HELPER} config={config}"
            + (f" start={start}" if start != "race" else ""))


def _no_secret_anywhere(password: str, d, child_output: str) -> None:
    assert password not in child_output
    for path in d.base.rglob("*"):
        if path.is_file() and path.suffix != ".jpg":
            assert password.encode() not in path.read_bytes(), path


def test_sudo_face_or_password_whichever_comes_first(setup):
    ns, d, user, password, matching, stranger = setup
    stack = ns.enable(d.config_path)
    assert prompt_words("race", d.config_path) in stack

    # (a) the enrolled face: success, nothing typed
    d.rewrite_config({"camera": {"device": str(matching)}})
    child = ns.sudo(user)
    child.expect_exact(pam_prompt.PROMPT)
    child.expect_exact(MARK)
    rc, echo = finish(child)
    assert (rc, echo) == (0, "echo"), child.before
    assert d.audit_line(f"auth user={user} service=sudo", "verdict=match"), d.logs()

    # (b) a stranger in view, the password typed while the face is being checked: in without waiting for the
    # face's verdict (the daemon's session for it ends because the client went away), the camera stopped
    # face check: 4 times the stranger's frames and room for them, so only auth.timeout (4 s) or the password ends it
    long_stranger = d.base / "long-stranger"
    long_stranger.mkdir(mode=0o755)
    for index, frame in enumerate(sorted(stranger.glob("*.jpg")) * 4):
        shutil.copy(frame, long_stranger / f"frame_{index:04d}.jpg")
    mark = d.mark()
    d.rewrite_config({"camera": {"device": str(long_stranger)}, "daemon": {"max_frames_per_session": 1000}})
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded:", after=mark)
    mark = d.mark()
    child = ns.sudo(user)
    child.expect_exact(pam_prompt.PROMPT)
    child.send(password)
    assert helpers_running(d.config_path), "the face check ended before the password: nothing raced"
    child.send("\r")
    child.expect_exact(MARK)
    seen = child.before
    rc, echo = finish(child)
    assert (rc, echo) == (0, "echo"), seen
    assert not helpers_running(d.config_path)
    d.wait_log(f"auth user={user} service=sudo", after=mark)
    line = d.audit_line(f"auth user={user} service=sudo", after=mark)
    assert "verdict=no_match" in line and "reason='client went away'" in line, line
    _no_secret_anywhere(password, d, seen)

    # (c) a wrong password: refused, the camera stopped at Enter (before pam_unix says no); Ctrl-C at sudo's
    # retry ends it
    mark = d.mark()
    child = ns.sudo(user)
    child.expect_exact(pam_prompt.PROMPT)
    child.send("wrong-" + password)
    racing = helpers_running(d.config_path)
    assert racing
    child.send("\r")
    child.expect_exact("Sorry, try again.", timeout=10)  # sudo's retry may already have started a new face check
    assert not set(racing) & set(helpers_running(d.config_path)), "the face check outlived Enter"
    d.wait_log(f"auth user={user} service=sudo", after=mark)
    line = d.audit_line(f"auth user={user} service=sudo", after=mark)
    assert line and "reason='client went away'" in line, d.logs()[mark:]
    child.expect_exact(pam_prompt.PROMPT)
    child.send("\x03")
    rc, echo = finish(child)
    assert rc != 0 and echo == "echo"
    assert "wrong-" not in child.before
    _no_secret_anywhere(password, d, child.before or "")


def test_sudo_intent_mode_looks_only_after_enter(setup):
    ns, d, user, password, matching, _ = setup
    d.rewrite_config({"camera": {"device": str(matching)}})
    stack = ns.enable(d.config_path, "--start", "enter")
    assert prompt_words("enter", d.config_path) in stack
    child = ns.sudo(user)
    child.expect_exact(pam_prompt.PROMPT_ENTER)
    time.sleep(1.5)
    assert not helpers_running(d.config_path) and f"auth user={user}" not in d.logs()
    child.send("\r")
    child.expect_exact(MARK)
    rc, echo = finish(child)
    assert (rc, echo) == (0, "echo")
    assert d.audit_line(f"auth user={user} service=sudo", "verdict=match"), d.logs()
    assert ns.enable(d.config_path, action="disable") == Path("/etc/pam.d/sudo").read_text()


def test_sudo_ctrl_d_cancels_and_sudo_s_reads_its_stdin(setup):
    """Ctrl-D on an empty prompt ends sudo with echo back on; 'sudo -S' (stdin a pipe) is left its own prompt."""
    ns, d, user, password, _, stranger = setup
    ns.enable(d.config_path)
    d.rewrite_config({"camera": {"device": str(stranger)}})
    child = ns.sudo(user)
    child.expect_exact(pam_prompt.PROMPT)
    child.send("\x04")
    rc, echo = finish(child)
    assert rc != 0 and echo == "echo"
    assert not helpers_running(d.config_path)

    piped = SCRIPT.replace(f"{SUDO} ", f"echo {password} | {SUDO} -S ")
    child = ns.sudo(user, piped)
    child.expect_exact(MARK, timeout=30)
    assert pam_prompt.PROMPT not in child.before  # the module did not take the terminal
    rc, echo = finish(child)
    assert (rc, echo) == (0, "echo")
    assert f"auth user={user} service=sudo" in d.logs()  # the face was tried first, through the conversation


def test_su_from_another_user_takes_the_typed_password_and_never_asks_for_the_face(setup):
    """su (util-linux) from another user: the face child refuses at once (a face proves only the person asking,
    tests/test_caller.py), so faceidd is never asked; the typed password goes to pam_unix, echo back on."""
    ns, d, user, password, matching, _ = setup
    ns.enable(d.config_path, service="su")
    d.rewrite_config({"camera": {"device": str(matching)}})  # the target's own face is in view
    script = SCRIPT.replace(f"{SUDO} /bin/echo {MARK}", f"su {user} -c '/bin/echo {MARK}'")
    child = ns.sudo("nobody", script, "nogroup")
    child.expect_exact(pam_prompt.PROMPT)
    child.send(password)
    assert not helpers_running(d.config_path) and f"auth user={user}" not in d.logs()
    child.send("\r")
    child.expect_exact(MARK)
    rc, echo = finish(child)
    assert (rc, echo) == (0, "echo")
    assert f"auth user={user}" not in d.logs()  # nothing to wait for: faceidd was never asked
    assert password not in child.before


# ---------------------------------------------------------------- no terminal: a greeter's conversation

GREETER = """
import ctypes, json, sys
ctypes.CDLL = ctypes.PyDLL  # python-pam's CDLL drops the GIL, and pam_python runs Python in this very process
import pam
import pam.__internals as internals
seen = []
original = internals.my_conv
def recording(n, messages, *rest):
    seen.extend([messages[i].contents.msg_style, messages[i].contents.msg.decode()] for i in range(n))
    return original(n, messages, *rest)
internals.my_conv = recording
service, user, password = sys.argv[1:4]
handle = pam.pam()
ok = handle.authenticate(user, password, service=service, resetcreds=False)
print(json.dumps([bool(ok), seen]))
"""
TEXT_INFO, ERROR_MSG, ECHO_OFF = 4, 3, 1


def greeter(service: str, user: str, password: str, real_uid: int | None = None) -> tuple[bool, list[list]]:
    """A PAM application with no terminal answering as a greeter does: the password for a prompt, lines shown.

    ``real_uid``: run it with that real uid and effective uid root, as setuid sudo runs.
    """
    command = [str(PYTHON), "-c", GREETER, service, user, password]
    setuid = None if real_uid is None else (lambda: os.setresuid(real_uid, 0, 0))
    done = subprocess.run(command, env={"PATH": "/usr/bin:/bin", "DISPLAY": ":99"}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, preexec_fn=setuid)
    assert done.returncode == 0, done.stderr
    ok, seen = json.loads(done.stdout)
    return ok, seen


def stack(pam_files, helper_path: str, config: Path, start: str = "race") -> str:
    """A service as 'faceid pam enable' edits one (the text functions it uses), around common-auth."""
    text = pamconf.insert_lines("@include common-auth\naccount required pam_permit.so\n", helper_path,
                                how=pamconf.FaceStart(start, str(config)))
    return pam_files(text, "faceid-prompt")


def test_greeter_gets_the_face_first_then_the_password_prompt(setup, pam_files):
    _, d, user, password, matching, stranger = setup
    service = stack(pam_files, str(HELPER), d.config_path)
    d.rewrite_config({"camera": {"device": str(matching)}})
    ok, seen = greeter(service, user, "not-the-password")
    assert ok and seen == [[TEXT_INFO, helper.NOTICE_LOOKING], [TEXT_INFO, helper.NOTICE_MATCH]], seen

    d.rewrite_config({"camera": {"device": str(stranger)}})
    ok, seen = greeter(service, user, password)
    assert ok, seen
    assert seen[:2] == [[TEXT_INFO, helper.NOTICE_LOOKING], [ERROR_MSG, pam_prompt.NO_MATCH_NOTICE]]
    assert [style for style, _ in seen[2:]] == [ECHO_OFF]  # then pam_unix's own prompt
    ok, _ = greeter(service, user, "not-the-password")
    assert not ok
    assert pam_prompt.NO_MATCH_NOTICE == helper.NOTICE_NO_MATCH


def test_greeter_intent_mode_asks_first_and_looks_only_after_an_empty_answer(setup, pam_files):
    _, d, user, password, matching, _ = setup
    service = stack(pam_files, str(HELPER), d.config_path, "enter")
    d.rewrite_config({"camera": {"device": str(matching)}})
    ok, seen = greeter(service, user, password)
    assert ok and seen == [[ECHO_OFF, pam_prompt.PROMPT_ENTER]], seen  # pam_unix took that answer: no 2nd prompt
    assert f"auth user={user}" not in d.logs()
    ok, seen = greeter(service, user, "")
    assert ok and seen[0] == [ECHO_OFF, pam_prompt.PROMPT_ENTER] and seen[-1] == [TEXT_INFO, helper.NOTICE_MATCH]


def test_root_never_runs_a_helper_another_user_could_change(daemon_dir, sudo_user, pam_files):
    """A 'helper' owned by someone else that says yes to everything is not run: the password decides."""
    user, password = sudo_user
    fake = daemon_dir / "yes-helper"
    fake.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    service = stack(pam_files, str(fake), daemon_dir / "none.yaml")
    ok, _ = greeter(service, user, "not-the-password")
    assert ok, "control: a root-owned yes-helper is obeyed, so the refusal below is the owner check"
    os.chown(fake, 65534, 65534)
    ok, seen = greeter(service, user, "not-the-password")
    assert not ok and [style for style, _ in seen] == [ECHO_OFF]
    ok, _ = greeter(service, user, password)
    assert ok


def test_the_face_child_gets_what_pam_exec_would_give_and_no_password(daemon_dir, sudo_user, pam_files):
    """PAM_* items and PAM_TYPE in its environment, stdin /dev/null, its own session, all ids the effective ones.

    The application runs as setuid sudo does (real uid the user, effective uid root); the child, like
    pam_exec's with ``seteuid``, runs with root as its real uid too.
    """
    user, password = sudo_user
    dump = daemon_dir / "seen.txt"
    fake = daemon_dir / "dump-helper"
    fake.write_text("#!/bin/sh\ncase $* in *--password-used*) exit 0;; esac  # that line runs it too\n"
                    f"{{ env; id -u; id -ru; readlink /proc/$$/fd/0; cut -d' ' -f6 /proc/$$/stat; echo $$; }} "
                    f">{dump}\nexit 1\n")
    os.chmod(fake, 0o755)
    service = stack(pam_files, str(fake), daemon_dir / "none.yaml")
    ok, _ = greeter(service, user, password, real_uid=pwd.getpwnam(user).pw_uid)
    assert ok
    *env, euid, ruid, stdin, sid, pid = dump.read_text().split("\n")[:-1]
    names = {line.partition("=")[0]: line.partition("=")[2] for line in env}
    assert {k: v for k, v in names.items() if k.startswith("PAM_")} == {
        "PAM_USER": user, "PAM_SERVICE": service, "PAM_TTY": ":99", "PAM_TYPE": "auth"}
    assert password not in dump.read_text()
    assert (euid, ruid, stdin) == ("0", "0", "/dev/null") and sid.strip() == pid


def test_enable_refuses_a_module_others_can_write(tmp_path):
    module = tmp_path / "pam_prompt.py"
    module.write_text("")
    os.chmod(tmp_path, 0o755)
    os.chmod(module, 0o646)
    with pytest.raises(pamconf.PamConfError, match="writable by group or others"):
        pamconf.face_line(str(HELPER), "[success=done default=ignore]", pamconf.FaceStart("race", None, module))
    os.chmod(module, 0o644)
    os.chown(module, 65534, 65534)
    with pytest.raises(pamconf.PamConfError, match="owned by uid 65534"):
        pamconf.face_line(str(HELPER), "[success=done default=ignore]", pamconf.FaceStart("race", None, module))


# ---------------------------------------------------------------- a real screen locker as the user

@pytest.fixture
def xvfb():
    """DISPLAY of a fresh Xvfb (stopped afterwards); skips when Xvfb, i3lock or xdotool is missing."""
    missing = [tool for tool in ("Xvfb", "i3lock", "xdotool") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install xvfb i3lock xdotool)")
    number = next(n for n in range(140, 240) if not os.path.exists(f"/tmp/.X11-unix/X{n}")
                  and not os.path.exists(f"/tmp/.X{n}-lock"))
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not os.path.exists(f"/tmp/.X11-unix/X{number}"):
        assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(10)


class Locker:
    """i3lock run as the user in the namespace (no terminal), fed keys with xdotool."""

    def __init__(self, ns: Namespace, user: str, display: str):
        self.display = display
        argv = ns.command("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "i3lock", "-n",
                          "-c", "203040")
        self.proc = subprocess.Popen(argv, env={"PATH": "/usr/bin:/bin", "DISPLAY": display},
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        env = {"PATH": "/usr/bin:/bin", "DISPLAY": display}
        found = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--class", "i3lock"], env=env,
                               capture_output=True, text=True, timeout=30)  # waits until i3lock's window is mapped
        assert found.returncode == 0 and self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def keys(self, text: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "DISPLAY": self.display}
        if text:
            subprocess.run(["xdotool", "type", "--delay", "30", text], env=env, check=True, timeout=30)
        subprocess.run(["xdotool", "key", "Return"], env=env, check=True, timeout=10)

    def unlocked_within(self, seconds: float) -> bool:
        try:
            return self.proc.wait(seconds) == 0
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(10)


def test_i3lock_unlocks_by_face_or_password_and_not_by_a_wrong_one(setup, xvfb):
    ns, d, user, password, matching, stranger = setup
    d.rewrite_config({"auth": {"timeout": 2.0}})
    before = (ns.pam_dir / "i3lock").read_text()
    done = subprocess.run(ns.command(FACEID, "--config", str(d.config_path), "pam", "enable", "--service", "i3lock"),
                          capture_output=True, text=True, timeout=120)
    # Debian's i3lock file is 'auth include login', whose stack also requires pam_nologin: a face match must
    # not skip that with the password, so the face line goes into login itself, which i3lock includes.
    assert done.returncode == 1 and "the included login also requires pam_nologin.so" in done.stdout, done.stdout
    assert (ns.pam_dir / "i3lock").read_text() == before
    done = subprocess.run(ns.command(FACEID, "--config", str(d.config_path), "pam", "enable", "--service", "login"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert prompt_words("race", d.config_path) in (ns.pam_dir / "login").read_text()

    d.rewrite_config({"camera": {"device": str(matching)}})
    locker = Locker(ns, user, xvfb)
    try:
        locker.keys("")  # an empty Enter: i3lock asks PAM, the face answers
        assert locker.unlocked_within(15), d.logs()
    finally:
        locker.close()
    uid = pwd.getpwnam(user).pw_uid
    assert d.audit_line(f"auth user={user} service=i3lock", f"uid={uid} verdict=match"), d.logs()

    d.rewrite_config({"camera": {"device": str(stranger)}})
    locker = Locker(ns, user, xvfb)
    try:
        locker.keys("wrong-" + password)
        assert not locker.unlocked_within(10), "a wrong password with a stranger in view unlocked the screen"
        locker.keys(password)
        assert locker.unlocked_within(15), d.logs()
    finally:
        locker.close()
    sessions = [line for line in d.logs().splitlines() if f"auth user={user} service=i3lock" in line]
    assert len(sessions) == 3 and "verdict=match" in sessions[0], sessions
    assert not any("verdict=match" in line for line in sessions[1:]), sessions  # the password unlocked it


# ---------------------------------------------------------------- auth.require_password_after: only a right password

def _password_uses(d, user: str) -> list[str]:
    """faceidd's password_used audit lines for ``user``."""
    return [line for line in d.logs().splitlines() if f"password_used user={user} " in line]


@pytest.mark.parametrize("start", ["exec", "race"])
def test_only_a_right_password_at_su_counts_as_a_password_use(faceidd, sudo_user, person_images, start):
    """The issue's route: with the password due (auth.require_password_after), another user runs ``su victim``
    and types a wrong password; then the terminal is closed at the prompt. Neither may count as a password use
    (the substack's failure goes on to the line after it). Only the victim's right password does."""
    require_model()
    user, password = sudo_user
    d = faceidd({"liveness": {"mode": "off"}, "auth": {"timeout": 4.0, "require_password_after": 1}})
    enrol(d.state_dir, user, person_images(PERSON)[:4])
    d.start()
    ns = Namespace(d.base, user)
    wrapper = d.base / "bin" / "faceid-helper"  # the face and report lines then reach this test's faceidd
    wrapper.parent.mkdir(mode=0o755)
    wrapper.write_text(f'#!/bin/sh\nexec {HELPER} --config {d.config_path} "$@"\n')
    wrapper.chmod(0o755)
    stack = ns.enable(d.config_path, "--start", start, "--helper", str(wrapper), service="su")
    assert "auth\tsubstack\tcommon-auth" in stack and "account\t[default=ignore]\tpam_exec.so" in stack
    su = SCRIPT.replace(f"{SUDO} /bin/echo {MARK}", f"su {user} -c '/bin/echo {MARK}'")

    child = ns.sudo("nobody", su, "nogroup")  # the attacker: a wrong password
    child.expect_exact(pam_prompt.PROMPT)
    child.send("not-the-password\r")
    child.expect_exact("Authentication failure", timeout=15)
    assert finish(child)[0] != 0
    d.wait_log(f"password_used user={user} service=su stage=auth")  # the line after the substack did run
    assert all("recorded=no" in line for line in _password_uses(d, user)), _password_uses(d, user)

    child = ns.sudo(user, su)  # the terminal closed at the prompt
    child.expect_exact(pam_prompt.PROMPT)
    child.close(force=True)
    assert LockoutStore(d.state_dir).read(user).password_used is None
    assert not any("recorded=yes" in line for line in _password_uses(d, user))

    child = ns.sudo(user, su)  # the user's own right password: recorded, by the account stack's report
    child.expect_exact(pam_prompt.PROMPT)
    child.send(password + "\r")
    child.expect_exact(MARK, timeout=15)
    assert finish(child)[0] == 0
    d.wait_log(f"password_used user={user} service=su stage=account")
    assert "recorded=yes" in _password_uses(d, user)[-1]
    assert LockoutStore(d.state_dir).read(user).password_used == pytest.approx(time.time(), abs=60)


# ---------------------------------------------------------------- signals at the prompt

def _child_named(parent: int, name: str, timeout: float = 10) -> int:
    """The pid of ``parent``'s child whose command is ``name`` (waits for it to appear)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if comm == name and int(rest[1]) == parent:
                return int(entry)
        time.sleep(0.02)
    raise AssertionError(f"no {name} under pid {parent}")


def test_su_stopped_and_resumed_keeps_the_password_hidden(setup):
    """SIGTSTP to su at the prompt, then the shell's fg, which brings its own terminal settings (echo on) back:
    the prompt puts its settings back and draws itself again, so the password typed after fg is not shown."""
    ns, d, user, password, _, stranger = setup
    ns.enable(d.config_path, service="su")
    d.rewrite_config({"camera": {"device": str(stranger)}})
    argv = ns.command("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "/bin/bash", "--norc",
                      "--noprofile", "-i")
    shell = pexpect.spawn(argv[0], argv[1:], env={"PATH": "/usr/bin:/bin", "TERM": "dumb", "PS1": "$ "},
                          timeout=20, encoding="utf-8", codec_errors="replace")
    shell.expect_exact("$ ")
    shell.send(f"su {user} -c '/bin/echo {MARK}'\r")
    shell.expect_exact(pam_prompt.PROMPT)
    os.kill(_child_named(shell.pid, "su"), signal.SIGTSTP)
    shell.expect("Stopped")
    shell.expect_exact("$ ")
    shell.send("fg\r")
    shell.expect_exact(pam_prompt.PROMPT)  # drawn again once the prompt's settings are back
    shell.send(password + "\r")
    shell.expect_exact(MARK)
    assert password not in shell.before, shell.before
    shell.send("exit\r")
    shell.expect(pexpect.EOF)


def _next_session_line(d, user: str) -> str:
    """faceidd's audit line of ``user``'s (first) session, once it is written."""
    return next(line for line in d.wait_log(f"auth user={user} ", timeout=30).splitlines()
                if f"auth user={user} " in line)


def test_sudo_killed_at_the_prompt_leaves_echo_on_and_no_helper(setup):
    """SIGKILL to sudo while its face child runs: the child dies with it (it would otherwise look at the camera
    until its frames ran out) and the terminal's echo comes back, though sudo could restore nothing."""
    ns, d, user, _, _, stranger = setup
    ns.enable(d.config_path)
    many = write_frames([f for _ in range(10) for f in session_frames(
        [p for p in sorted(stranger.iterdir())][:30], 1)], d.base / "many")
    frames = len(list(many.iterdir()))
    d.rewrite_config({"camera": {"device": str(many)}, "auth": {"timeout": 30.0},
                      "daemon": {"max_frames_per_session": 1000}})
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded")
    script = f"{SUDO} /bin/echo {MARK}; echo rc=$?; read line; stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?echo'"
    child = ns.sudo(user, script)
    child.expect_exact(pam_prompt.PROMPT)
    assert helpers_running(d.config_path)
    os.kill(_child_named(child.pid, "sudo"), signal.SIGKILL)
    child.expect(r"rc=(\d+)")
    assert child.match.group(1) == "137"
    deadline = time.monotonic() + 30
    while helpers_running(d.config_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not helpers_running(d.config_path)
    line = _next_session_line(d, user)
    assert int(re.search(r"frames=(\d+)", line).group(1)) < frames, line  # it stopped before its camera ran out
    child.send("\r")
    child.expect(r"(-?echo)\r?\n")
    assert child.match.group(1) == "echo"
