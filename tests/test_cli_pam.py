"""faceid pam enable/disable on a copy service file in /etc/pam.d, proven through the real PAM stack."""

from __future__ import annotations

import pwd
import secrets
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cli_support import FACEID, HELPER, TempUser, faceid, require_root
from faceidd_util import PYTHON

from pam_faceid.pamstack import pamconf

ORIGINAL = "#%PAM-1.0\n@include common-auth\naccount required pam_permit.so\n"


@pytest.fixture
def service():
    """A unique service file like a distribution's sudo: always removed, with the backups made of it."""
    require_root()
    name = f"faceid-pamtest-{secrets.token_hex(4)}"
    path = Path("/etc/pam.d") / name
    path.write_text(ORIGINAL)
    try:
        yield name, path
    finally:
        path.unlink(missing_ok=True)
        for copy in pamconf.BACKUP_DIR.glob(f"{name}.*"):
            copy.unlink()


def _no_throwaway_users(timeout: float = 30) -> bool:
    """No proof's throwaway user is left (one that another `faceid pam` still holds goes within seconds)."""
    deadline = time.monotonic() + timeout
    while any(entry.pw_name.startswith("fidchk") for entry in pwd.getpwall()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_enable_then_disable_keeps_the_password_path(service):
    name, path = service
    done = faceid(None, "pam", "enable", "--service", name, "--start", "exec")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enabled: proven: a right password is accepted and a wrong one refused, with the real helper and with " \
           "stand-ins for it" in done.stdout
    lines = path.read_text().splitlines()
    assert lines[1] == f"auth\t[success=ok default=1]\tpam_exec.so quiet stdout seteuid {HELPER}"
    assert lines[2].startswith("auth\t[success=1 default=die]\tpam_permit.so\t#")
    assert lines[3] == "auth\tsubstack\tcommon-auth"  # one module to skip, whatever common-auth holds
    assert lines[4] == f"auth\t[default=ignore]\tpam_exec.so quiet seteuid {HELPER} --password-used"
    backups = list(pamconf.BACKUP_DIR.glob(f"{name}.*"))
    assert len(backups) == 1 and backups[0].read_text() == ORIGINAL
    assert name in faceid(None, "pam", "status").stdout
    again = faceid(None, "pam", "enable", "--service", name, "--start", "exec")
    assert again.returncode == 0 and "unchanged" in again.stdout

    done = faceid(None, "pam", "disable", "--service", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert path.read_text() == ORIGINAL
    assert _no_throwaway_users()


def test_a_change_that_opens_the_stack_is_never_written(service):
    """A 'helper' that always says yes would accept any password: the proof, in a private copy, sees it."""
    name, path = service
    before = path.stat()
    done = faceid(None, "pam", "enable", "--service", name, "--helper", "/bin/true")
    assert done.returncode == 1
    assert "a wrong password was accepted" in done.stdout and "left as it was" in done.stdout
    after = path.stat()
    assert path.read_text() == ORIGINAL and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(pamconf.BACKUP_DIR.glob(f"{name}.*"))
    assert _no_throwaway_users()


def test_a_service_without_a_password_line_is_left_alone(service):
    name, path = service
    path.write_text("auth required pam_permit.so\n")
    done = faceid(None, "pam", "enable", "--service", name)
    assert done.returncode == 1 and "no password line" in done.stdout
    assert path.read_text() == "auth required pam_permit.so\n"


def test_jumps_over_the_new_line_are_kept_right():
    text = ("auth [success=2 default=ignore] pam_succeed_if.so uid >= 1000 quiet\n"
            "auth optional pam_faildelay.so delay=2000000\n"
            "auth [success=1 default=ignore] pam_unix.so nullok\n"
            "auth requisite pam_deny.so\nauth required pam_permit.so\n")
    edited = pamconf.insert_line(text, "/opt/pam_faceid/bin/faceid-helper")
    assert edited.splitlines()[0].startswith("auth [success=3 default=ignore]")
    assert "delay=2000000" in edited and "faceid-helper" in edited.splitlines()[2]
    assert pamconf.remove_lines(edited) == text
    into_include = "auth [success=1 default=ignore] pam_succeed_if.so uid < 1000\n@include common-auth\n"
    with pytest.raises(pamconf.PamConfError, match="counts as many modules as the included file holds"):
        pamconf.insert_line(into_include, "/h/faceid-helper")
    admin = "auth [success=3 default=ignore] pam_succeed_if.so uid < 1000\n" + \
        pamconf.insert_line("@include common-auth\nauth required pam_permit.so\n", "/h/faceid-helper")
    assert pamconf.remove_lines(admin).splitlines()[:2] == [  # a jump written over the substack keeps it
        "auth [success=1 default=ignore] pam_succeed_if.so uid < 1000", "auth\tsubstack\tcommon-auth"]


def test_user_mistakes(service):
    missing = faceid(None, "pam", "enable", "--service", "no-such-service-xq")
    assert missing.returncode == 2 and "no PAM service" in missing.stderr
    nobody = subprocess.run(["runuser", "-u", "nobody", "--", FACEID, "pam", "enable"], capture_output=True,
                            text=True, timeout=60)
    assert nobody.returncode == 4 and "needs root" in nobody.stderr
    helpless = faceid(None, "pam", "enable", "--service", service[0], "--helper", "/nonexistent/helper")
    assert helpless.returncode == 2 and "not an executable helper" in helpless.stderr
    if Path("/etc/pam.d/vsftpd").is_file():  # a network service: refused for what it is, the file untouched
        before = Path("/etc/pam.d/vsftpd").read_bytes()
        ftp = faceid(None, "pam", "enable", "--service", "vsftpd", "--start", "exec")
        assert ftp.returncode == 1, ftp
        assert "vsftpd: FAILED: vsftpd is a network service: the face is never used there" in ftp.stdout
        assert Path("/etc/pam.d/vsftpd").read_bytes() == before


def test_the_password_used_line_goes_after_the_last_auth_rule_and_comes_out_again():
    sudo = ("#%PAM-1.0\nsession required pam_env.so readenv=1\n@include common-auth\n@include common-account\n"
            "@include common-session-noninteractive\n")
    edited = pamconf.insert_lines(sudo, "/opt/pam_faceid/bin/faceid-helper").splitlines()
    assert "faceid-helper" in edited[2] and "pam_permit.so" in edited[3] and edited[4] == "auth\tsubstack\tcommon-auth"
    assert edited[5] == ("auth\t[default=ignore]\tpam_exec.so quiet seteuid /opt/pam_faceid/bin/faceid-helper "
                         "--password-used")
    assert pamconf.remove_lines("\n".join(edited)) == sudo
    to_end = ("auth [success=2 default=ignore] pam_unix.so nullok\nauth requisite pam_deny.so\n"
              "account required pam_permit.so\n")
    edited = pamconf.insert_lines(to_end, "/h/faceid-helper").splitlines()
    assert edited[1].startswith("auth [success=3 default=ignore] pam_unix.so")  # still jumps past the end
    assert pamconf.remove_lines("\n".join(edited)) == to_end


# ---------------------------------------------------------------- our lines, and only ours


def test_a_comment_never_makes_a_line_ours(service):
    """A pam_unix line whose comment names the helper, or a pam_exec of another program given it as an argument."""
    name, path = service
    text = ("auth required pam_unix.so nullok  # was: pam_exec faceid-helper\n"
            "auth optional pam_exec.so quiet /usr/bin/logger faceid-helper --password-used\n"
            "account required pam_permit.so\n")
    path.write_text(text)
    assert not pamconf.enabled_in(text) and pamconf.remove_lines(text) == text
    done = faceid(None, "pam", "disable", "--service", name)
    assert done.returncode == 0 and "unchanged" in done.stdout, done.stdout + done.stderr
    assert path.read_text() == text
    assert name not in faceid(None, "pam", "status").stdout


def test_lines_of_the_old_version_are_recognised_and_brought_up_to_date(service):
    name, path = service
    old = (f"#%PAM-1.0\nauth\t[success=done default=ignore]\tpam_exec.so quiet stdout seteuid {HELPER}\n"
           f"@include common-auth\nauth\toptional\tpam_exec.so quiet seteuid {HELPER} --password-used\n"
           "account required pam_permit.so\n")
    assert pamconf.remove_lines(old) == ORIGINAL
    path.write_text(old)
    assert name in faceid(None, "pam", "status").stdout
    done = faceid(None, "pam", "enable", "--service", name, "--start", "exec")
    assert done.returncode == 0 and f"{name}: updated" in done.stdout, done.stdout + done.stderr
    assert path.read_text() == pamconf.insert_lines(ORIGINAL, HELPER)
    done = faceid(None, "pam", "disable", "--service", name)
    assert done.returncode == 0 and path.read_text() == ORIGINAL


def test_an_included_stack_that_requires_more_than_the_password_is_refused(service, pam_files):
    """A face match skips an included stack whole: not when it also requires a token (or pam_nologin)."""
    name, path = service
    included = pam_files("auth [success=1 default=ignore] pam_unix.so\nauth requisite pam_deny.so\n"
                         "auth required pam_permit.so\nauth required pam_exec.so quiet /bin/true\n", "faceid-auth")
    text = f"@include {included}\naccount required pam_permit.so\n"
    path.write_text(text)
    done = faceid(None, "pam", "enable", "--service", name)
    assert done.returncode == 1 and "also requires pam_exec.so, which a face match would skip" in done.stdout
    assert path.read_text() == text


def test_what_changes_when_an_include_becomes_a_substack(pam_files, temp_user):
    """Real libpam: a substack shares the include's verdict, but `done` and `die` inside it end only the substack.

    So a failure inside stays a failure whatever the service runs after it, and a service that relied on
    `sufficient` inside an included file to skip its own later deny refuses the right password after the
    change: the proof sees that and `faceid pam enable` keeps the include.
    """
    debian = pam_files("auth [success=1 default=ignore] pam_unix.so\nauth requisite pam_deny.so\n"
                       "auth required pam_permit.so\n", "faceid-auth")
    sufficient = pam_files("auth sufficient pam_unix.so\n", "faceid-auth")
    stacks = {}
    for child, after in ((debian, "auth optional pam_permit.so\n"), (sufficient, "auth required pam_deny.so\n")):
        for spelling in (f"@include {child}\n", f"auth substack {child}\n"):
            stacks[(child, spelling.split()[0])] = pam_files(spelling + after + "account required pam_permit.so\n")
    keys = [(key, right) for key in stacks for right in (True, False)]
    verdicts = dict(zip(keys, logins([(stacks[key], temp_user, temp_user.password if right else "wrong")
                                      for key, right in keys])))
    for spelling in ("@include", "auth"):
        assert verdicts[((debian, spelling), True)] and not verdicts[((debian, spelling), False)]
        assert not verdicts[((sufficient, spelling), False)]
    assert verdicts[((sufficient, "@include"), True)] and not verdicts[((sufficient, "auth"), True)]


# ---------------------------------------------------------------- every service here, in a private namespace

CHECK = """
import os, sys
os.setresuid(int(sys.argv[3]), 0, 0)
import pam
handle = pam.pam()
print(int(bool(handle.authenticate(sys.argv[2], sys.stdin.read(), service=sys.argv[1], resetcreds=False))))
"""
"""python-pam with the real uid of the user and euid root, as in setuid sudo (pam_rootok does not let it in)."""

SUFFICIENT = "auth sufficient pam_unix.so\naccount required pam_permit.so\n"
"""The issue's stack: a wrong password leaves nothing decisive, so an `optional` report line that succeeds decided."""

SECOND_FACTOR = "@include common-auth\nauth required pam_exec.so quiet {token_check}\naccount required pam_permit.so\n"
"""Password, then a token (a script that checks a token file is there): face may stand in for the password only."""


def in_namespace(mounts: dict[Path, Path], *argv: str, input: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``argv`` in a private mount namespace where each copy in ``mounts`` is mounted over its system folder."""
    binds = [f'mount --bind "${n * 2 + 1}" "${n * 2 + 2}"' for n in range(len(mounts))]
    script = " && ".join(binds + [f"shift {2 * len(mounts)}", 'exec "$@"'])
    pairs = [str(p) for copy, target in mounts.items() for p in (copy, target)]
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "ns", *pairs,
                           *argv],
                          input=input, capture_output=True, text=True, timeout=timeout, cwd="/")


class Copies:
    """Copies of system folders in a root-only folder, and commands and PAM calls that see them in their place."""

    def __init__(self, base: Path, folders: tuple[Path, ...]):
        self.mounts: dict[Path, Path] = {}
        for n, folder in enumerate(folders):
            copy = base / f"copy{n}"
            shutil.copytree(folder, copy, symlinks=True)
            self.mounts[copy] = folder
        backups = base / "backups"  # the backups of these edits stay out of the real /var/backups
        backups.mkdir()
        self.mounts[backups] = pamconf.BACKUP_DIR.parent
        self.pam = next(copy for copy, folder in self.mounts.items() if folder == Path("/etc/pam.d"))

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return in_namespace(self.mounts, *argv)

    def logins(self, jobs: list[tuple[str, TempUser, str]]) -> list[bool]:
        return logins(jobs, self.mounts)


def logins(jobs: list[tuple[str, TempUser, str]], mounts: dict[Path, Path] | None = None) -> list[bool]:
    """Did PAM accept (service, user, password), for each job? Side by side: a wrong password costs 2 s or more."""

    def login(service: str, user: TempUser, password: str) -> bool:
        uid = str(pwd.getpwnam(user.name).pw_uid)
        done = in_namespace(mounts or {}, str(PYTHON), "-c", CHECK, service, user.name, uid, input=password,
                            timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip() == "1"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda job: login(*job), jobs))


@pytest.fixture
def stand_in_helper(daemon_dir):
    """(write, path): a program named faceid-helper; ``write(body)`` sets what it does (the real helper, or exit 0)."""
    folder = daemon_dir / "bin"
    folder.mkdir(mode=0o755)
    path = folder / "faceid-helper"

    def write(body: str) -> None:
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)

    return write, path


def _password_faceidd(faceidd, user: str):
    """A faceidd that refuses face auth until the password was used (auth.require_password_after: 1): the helper
    fails at once, and the report line succeeds once faceidd records a password login: the state of the issue."""
    import numpy as np

    from pam_faceid.common.store import Store

    d = faceidd({"auth": {"abort_if_ssh": False, "abort_if_lid_closed": False, "require_password_after": 1},
                 "camera": {"device": "/nonexistent/camera"}})
    Store(d.state_dir).add_templates(user, np.eye(128, dtype=np.float32)[0])
    return d


def test_a_face_match_stands_in_for_the_password_and_never_for_the_token(service, daemon_dir, temp_user,
                                                                         stand_in_helper):
    name, path = service
    token, token_check = daemon_dir / "token", daemon_dir / "token-check"
    token_check.write_text(f"#!/bin/sh\ntest -e {token}\n")
    token_check.chmod(0o755)
    token.touch()  # the throwaway user of the proof must get through
    text = SECOND_FACTOR.format(token_check=token_check)
    path.write_text(text)
    write_helper, helper = stand_in_helper
    write_helper("exit 1")
    done = faceid(None, "pam", "enable", "--service", name, "--helper", str(helper), "--start", "exec")
    assert done.returncode == 0, done.stdout + done.stderr
    write_helper("exit 0")  # the face matches, every time
    token.unlink()
    assert logins([(name, temp_user, p) for p in ("", "wrong", temp_user.password)]) == [False] * 3
    token.touch()
    assert logins([(name, temp_user, p) for p in ("", temp_user.password)]) == [True] * 2
    done = faceid(None, "pam", "disable", "--service", name, "--helper", str(helper))
    assert done.returncode == 0 and path.read_text() == text


def test_every_service_here_a_sufficient_stack_and_a_second_factor(tmp_path, daemon_dir, faceidd, temp_user,
                                                                   stand_in_helper):
    """`faceid pam enable` and `disable` on a copy of every service file here, plus the issue's `sufficient` stack
    and a password-then-token stack: no wrong password gets in with faceidd down or up, a face match never skips
    the token, and disable gives back each file exactly."""
    require_root()
    tmp_path.chmod(0o700)
    copies = Copies(tmp_path, (Path("/etc/pam.d"),))
    token, token_check = daemon_dir / "token", daemon_dir / "token-check"
    token_check.write_text(f"#!/bin/sh\ntest -e {token}\n")
    token_check.chmod(0o755)
    token.touch()
    names = sorted(p.name for p in copies.pam.iterdir()
                   if p.is_file() and not p.name.startswith("faceid-") and not pamconf.enabled_in(p.read_text()))
    (copies.pam / "faceid-sufficient").write_text(SUFFICIENT)
    (copies.pam / "faceid-token").write_text(SECOND_FACTOR.format(token_check=token_check))
    names += ["faceid-sufficient", "faceid-token"]
    original = {name: (copies.pam / name).read_text() for name in names}
    d = _password_faceidd(faceidd, temp_user.name)
    write_helper, helper = stand_in_helper
    write_helper(f'exec {HELPER} --config {d.config_path} "$@"')

    done = copies.run(FACEID, "pam", "enable", "--service", *names, "--helper", str(helper),
                      "--start", "exec")  # faceidd down
    said = done.stdout.splitlines()  # line by line: "lightdm-autologin: FAILED" is not login's
    enabled = [name for name in names if any(line.startswith(f"{name}: enabled") for line in said)]
    refused = [name for name in names if any(line.startswith(f"{name}: FAILED") for line in said)]
    assert sorted(enabled + refused) == sorted(names), done.stdout + done.stderr
    assert {"faceid-sufficient", "faceid-token", "sudo", "login", "su"} <= set(enabled), done.stdout
    for name in refused:  # nothing to stand in for, or a stack the throwaway user cannot pass (pam_shells, rootok)
        why = next(line for line in said if line.startswith(f"{name}: FAILED"))
        assert any(reason in why for reason in ("no password line", "does not work even before the change",
                                                 "which a face match would skip", "is a network service")), why
        assert (copies.pam / name).read_text() == original[name]

    def no_wrong_password_gets_in() -> None:
        jobs = [(name, temp_user, password) for name in enabled for password in ("wrong", "")]
        accepted = [job[0] for job, ok in zip(jobs, copies.logins(jobs)) if ok]
        assert accepted == [], f"a wrong password was accepted by {accepted}; faceidd log:\n{d.logs()}"

    rights = copies.logins([(name, temp_user, temp_user.password) for name in enabled])
    assert all(rights), dict(zip(enabled, rights))
    no_wrong_password_gets_in()

    d.start()
    rights = copies.logins([(name, temp_user, temp_user.password) for name in enabled])
    assert all(rights), dict(zip(enabled, rights))
    d.wait_log(f"password_used user={temp_user.name} service=sudo")  # the report lines succeed now
    no_wrong_password_gets_in()

    write_helper("exit 0")  # the face matches, every time
    token.unlink()
    assert copies.logins([("faceid-token", temp_user, p) for p in ("", "wrong", temp_user.password)]) == [False] * 3
    token.touch()
    assert copies.logins([("faceid-token", temp_user, "wrong"), ("faceid-sufficient", temp_user, "wrong"),
                          ("sudo", temp_user, "")]) == [True] * 3  # the face stands in for the password

    write_helper(f'exec {HELPER} --config {d.config_path} "$@"')
    done = copies.run(FACEID, "pam", "disable", "--service", *enabled, "--helper", str(helper))  # faceidd up
    assert done.returncode == 0, done.stdout + done.stderr
    assert {name: (copies.pam / name).read_text() for name in names} == original


def test_the_pam_auth_update_profiles_are_proven_before_common_auth_changes(tmp_path, faceidd, temp_user,
                                                                           stand_in_helper):
    """pam-auth-update runs in a private copy of /etc/pam.d and /var/lib/pam; only a proven result reaches them."""
    from test_install import PAM_PASSWORD_PROFILE, PAM_PROFILE

    require_root()
    tmp_path.chmod(0o700)
    copies = Copies(tmp_path, (Path("/etc/pam.d"), Path("/var/lib/pam"), Path("/usr/share/pam-configs")))
    pam_dir, state, configs = list(copies.mounts)[:3]
    write_helper, helper = stand_in_helper
    (configs / "faceid").write_text(PAM_PROFILE.format(prefix=helper.parent.parent))
    (configs / "faceid-password").write_text(PAM_PASSWORD_PROFILE.format(prefix=helper.parent.parent))
    (pam_dir / "faceid-pau").write_text("@include common-auth\naccount required pam_permit.so\n")
    original = {path: path.read_bytes() for folder in (pam_dir, state) for path in folder.iterdir()}
    d = _password_faceidd(faceidd, temp_user.name)
    write_helper(f'exec {HELPER} --config {d.config_path} "$@"')

    (configs / "faceid").write_text(PAM_PROFILE.format(prefix=helper.parent.parent).replace(
        "[success=end default=ignore]\tpam_exec.so quiet stdout seteuid", "sufficient\tpam_permit.so"))
    stamps = {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in original}
    done = copies.run(FACEID, "pam", "enable")
    assert done.returncode == 1 and "a wrong password was accepted" in done.stdout, done.stdout + done.stderr
    assert {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in original} == stamps  # never touched

    (configs / "faceid").write_text(PAM_PROFILE.format(prefix=helper.parent.parent))
    done = copies.run(FACEID, "pam", "enable")  # faceidd down
    assert done.returncode == 0 and "common-auth: enabled: via pam-auth-update; proven:" in done.stdout, \
        done.stdout + done.stderr
    common_auth = (pam_dir / "common-auth").read_text()
    assert f"[success=2 default=ignore]\tpam_exec.so quiet stdout seteuid {helper}" in common_auth
    assert f"[default=ignore]\tpam_exec.so quiet seteuid {helper} --password-used" in common_auth
    assert "faceid" in (state / "seen").read_text()
    for running in (False, True):
        if running:
            d.start()
        assert copies.logins([("faceid-pau", temp_user, temp_user.password)]) == [True]
        assert copies.logins([("faceid-pau", temp_user, p) for p in ("wrong", "")]) == [False, False], d.logs()
    d.wait_log(f"password_used user={temp_user.name} service=faceid-pau")
    write_helper("exit 0")
    assert copies.logins([("faceid-pau", temp_user, "")]) == [True]  # the face is enough here: common-auth has no later factor

    done = copies.run(FACEID, "pam", "disable")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (pam_dir / "common-auth").read_bytes() == original[pam_dir / "common-auth"]
