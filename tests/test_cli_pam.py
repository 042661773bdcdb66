"""faceid pam enable/disable on a copy service file in /etc/pam.d, proven through the real PAM stack."""

from __future__ import annotations

import pwd
import secrets
import subprocess
from pathlib import Path

import pytest

from cli_support import FACEID, HELPER, faceid, require_root
from pam_faceid import pamconf

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


def _no_throwaway_users() -> bool:
    return not any(entry.pw_name.startswith("fidchk") for entry in pwd.getpwall())


def test_enable_then_disable_keeps_the_password_path(service):
    name, path = service
    done = faceid(None, "pam", "enable", "--service", name, "--start", "exec")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enabled: password path proven" in done.stdout
    lines = path.read_text().splitlines()
    assert lines[1] == f"auth\t[success=done default=ignore]\tpam_exec.so quiet stdout seteuid {HELPER}"
    assert lines[2] == "@include common-auth"
    backups = list(pamconf.BACKUP_DIR.glob(f"{name}.*"))
    assert len(backups) == 1 and backups[0].read_text() == ORIGINAL
    assert name in faceid(None, "pam", "status").stdout
    again = faceid(None, "pam", "enable", "--service", name)
    assert again.returncode == 0 and "unchanged" in again.stdout

    done = faceid(None, "pam", "disable", "--service", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert path.read_text() == ORIGINAL
    assert _no_throwaway_users()


def test_a_change_that_opens_the_stack_is_rolled_back(service):
    """A 'helper' that always says yes would accept any password: the proof sees it and restores the file."""
    name, path = service
    done = faceid(None, "pam", "enable", "--service", name, "--helper", "/bin/true")
    assert done.returncode == 1
    assert "a wrong password was accepted" in done.stdout and "restored the backup" in done.stdout
    assert path.read_text() == ORIGINAL
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


def test_user_mistakes(service):
    missing = faceid(None, "pam", "enable", "--service", "no-such-service-xq")
    assert missing.returncode == 2 and "no PAM service" in missing.stderr
    nobody = subprocess.run(["runuser", "-u", "nobody", "--", FACEID, "pam", "enable"], capture_output=True,
                            text=True, timeout=60)
    assert nobody.returncode == 4 and "needs root" in nobody.stderr
    helpless = faceid(None, "pam", "enable", "--service", service[0], "--helper", "/nonexistent/helper")
    assert helpless.returncode == 2 and "not an executable helper" in helpless.stderr


def test_the_password_used_line_goes_after_the_last_auth_rule_and_comes_out_again():
    sudo = ("#%PAM-1.0\nsession required pam_env.so readenv=1\n@include common-auth\n@include common-account\n"
            "@include common-session-noninteractive\n")
    edited = pamconf.insert_lines(sudo, "/opt/pam_faceid/bin/faceid-helper").splitlines()
    assert "faceid-helper" in edited[2] and edited[3] == "@include common-auth"
    assert edited[4] == "auth\toptional\tpam_exec.so quiet seteuid /opt/pam_faceid/bin/faceid-helper --password-used"
    assert pamconf.remove_lines("\n".join(edited)) == sudo
    to_end = ("auth [success=2 default=ignore] pam_unix.so nullok\nauth requisite pam_deny.so\n"
              "account required pam_permit.so\n")
    edited = pamconf.insert_lines(to_end, "/h/faceid-helper").splitlines()
    assert edited[1].startswith("auth [success=3 default=ignore] pam_unix.so")  # still jumps past the end
    assert pamconf.remove_lines("\n".join(edited)) == to_end
