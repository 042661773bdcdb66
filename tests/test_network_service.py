"""A face at the camera never opens a network login, whatever PAM stack the service shares.

The hole this closes: with the face line in common-auth (what ``faceid pam
enable`` does through pam-auth-update), every service that includes it got
the face, vsftpd too. A local attacker sent ``USER victim`` / ``PASS
wrong`` to an FTP server on 127.0.0.1 while the victim sat at the camera and
was let in. Here the same happens through real vsftpd and real PAM, in a
private mount namespace whose /etc/pam.d carries the face line in common-auth;
the daemon runs with the shipped ``auth.services``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from faceidd_util import HELPER, enrol, require_model
from faces_support import PERSON, images_of

from pam_faceid.common.config import SEAT_SERVICES
from pam_faceid.daemon.lockout import LockoutStore

VSFTPD = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
PAMTESTER = shutil.which("pamtester")

COMMON_AUTH = ("auth\t[success=2 default=ignore]\tpam_exec.so quiet stdout seteuid {helper} --config {config}\n"
               "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
               "auth\trequisite\tpam_deny.so\n"
               "auth\trequired\tpam_permit.so\n")
"""common-auth as pam-auth-update writes it with our profile (the face line first), the helper on our config."""


def _requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (PAM, users, mount namespaces)")
    if not os.path.exists(VSFTPD):
        pytest.skip("vsftpd is not installed (apt-get install vsftpd)")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    require_model()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_pam(tmp: Path, config: Path) -> Path:
    """A copy of /etc/pam.d whose common-auth has the face line; bound over /etc/pam.d in a private namespace."""
    copy = tmp / "pam.d"
    shutil.copytree("/etc/pam.d", copy, symlinks=True)
    (copy / "common-auth").write_text(COMMON_AUTH.format(helper=HELPER, config=config))
    return copy


def _in_namespace(pam_dir: Path, argv: list[str]) -> list[str]:
    """``argv`` run in a private mount namespace where ``pam_dir`` is /etc/pam.d."""
    script = 'mount --bind "$0" /etc/pam.d && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(pam_dir), *argv]


def _wait_listening(server: subprocess.Popen, port: int) -> None:
    """Until ``server`` accepts on 127.0.0.1:``port``; its output as the error if it exits first."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
            time.sleep(0.05)


def _set_password(user: str, password: str) -> None:
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)


def _ftp_login_as(attacker: str, port: int, user: str, password: str) -> str:
    """The server's reply to USER/PASS, sent by a process of the local user ``attacker``."""
    code = textwrap.dedent(f"""
        import ftplib
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", {port}, timeout=20)
        try:
            print(ftp.login({user!r}, {password!r}))
        except ftplib.error_perm as exc:
            print(exc)
    """)
    done = subprocess.run(["setpriv", f"--reuid={attacker}", f"--regid={attacker}", "--clear-groups",
                           "/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def victim_at_camera(faceidd, make_user, tmp_path):
    """faceidd with the shipped auth.services, a victim enrolled and at the camera; -> (daemon, victim, camera)."""
    _requirements()
    faces = images_of(PERSON, limit=8)
    camera = tmp_path / "camera"
    camera.mkdir()
    for n, path in enumerate(faces[3:] * 3):
        shutil.copy(path, camera / f"{n:03d}.jpg")
    d = faceidd({"camera": {"device": str(camera), "dark_threshold": 0.0}, "liveness": {"mode": "off"},
                 "auth": {"abort_if_ssh": False, "abort_if_lid_closed": False, "timeout": 6.0,
                          "services": list(SEAT_SERVICES)}})
    victim = make_user(shell="/bin/bash")
    enrol(d.state_dir, victim, faces[:3])
    d.start()
    return d, victim, camera


def test_a_face_never_opens_an_ftp_login_for_another_local_user(victim_at_camera, make_user, tmp_path):
    d, victim, _ = victim_at_camera
    attacker = make_user(shell="/bin/bash")
    _set_password(victim, "victim-secret-1")
    home = Path(tempfile.mkdtemp(prefix="fidhome"))  # vsftpd enters the home after a login: a readable one
    home.chmod(0o755)
    shutil.chown(home, victim, victim)
    subprocess.run(["usermod", "-d", str(home), victim], check=True, capture_output=True)
    port = _free_port()
    conf = tmp_path / "vsftpd.conf"
    conf.write_text(f"listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n"
                    "anonymous_enable=NO\nlocal_enable=YES\npam_service_name=vsftpd\nseccomp_sandbox=NO\n"
                    "isolate=NO\nisolate_network=NO\nsecure_chroot_dir=/var/run/vsftpd/empty\n"
                    "delay_failed_login=0\nwrite_enable=NO\n")
    Path("/var/run/vsftpd/empty").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(_in_namespace(_private_pam(tmp_path, d.config_path), [VSFTPD, str(conf)]),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(server, port)
        before = LockoutStore(d.state_dir).read(victim)
        for _ in range(2):
            assert _ftp_login_as(attacker, port, victim, "not-the-password").startswith("530"), \
                "a wrong password logged in over FTP"
        assert "auth user=" not in d.logs()  # faceidd was never asked: the helper skipped vsftpd
        assert LockoutStore(d.state_dir).read(victim) == before  # and no failure was counted against the victim
        # The stack itself works: the right password logs in, so the 530s above were the face's refusal.
        assert _ftp_login_as(attacker, port, victim, "victim-secret-1").startswith("230")
    finally:
        os.killpg(server.pid, 9)
        server.wait()
        shutil.rmtree(home, ignore_errors=True)


def test_a_service_installed_later_gets_no_face(victim_at_camera, tmp_path):
    if PAMTESTER is None:
        pytest.skip("pamtester is not installed (apt-get install pamtester)")
    d, victim, _ = victim_at_camera
    pam_dir = _private_pam(tmp_path, d.config_path)
    (pam_dir / "someday-new-app").write_text("@include common-auth\n")
    run = subprocess.run(_in_namespace(pam_dir, [PAMTESTER, "someday-new-app", victim, "authenticate"]),
                         input="wrong\n", capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "Authentication failure" in run.stderr, (run.stdout, run.stderr)
    assert "auth user=" not in d.logs()
    # The same stack under a listed service name does use the face: the refusal above is the list's.
    (pam_dir / "sudo").write_text("@include common-auth\n")
    run = subprocess.run(_in_namespace(pam_dir, [PAMTESTER, "sudo", victim, "authenticate"]),
                         input="", capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert f"auth user={victim} service=sudo" in d.wait_log(f"auth user={victim}")


def test_the_helper_logs_the_service_it_skips(victim_at_camera):
    d, victim, _ = victim_at_camera
    env = {"PAM_USER": victim, "PAM_SERVICE": "vsftpd", "PAM_TYPE": "auth"}
    run = subprocess.run([str(HELPER), "--config", str(d.config_path)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 3, run
    assert "service vsftpd is not in auth.services: skipped" in run.stderr
    env = {**env, "PAM_SERVICE": "sudo", "PAM_RHOST": "127.0.0.1"}
    run = subprocess.run([str(HELPER), "--config", str(d.config_path)], env=env, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 3 and "PAM_RHOST=127.0.0.1: a network peer" in run.stderr, run
    assert "auth user=" not in d.logs()


# ---------------------------------------------------------------- sudo inside an SSH session, without logind

SSHD = "/usr/sbin/sshd"


@pytest.fixture
def ssh_server(victim_at_camera, tmp_path):
    """Real sshd on 127.0.0.1 in a private mount namespace whose sudo runs the face line; the victim may log in
    with a key and sudo. -> (run(command) -> output, victim, daemon)."""
    if not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen") and shutil.which("sudo")):
        pytest.skip("openssh-server, openssh-client and sudo are needed (apt-get install openssh-server sudo)")
    d, victim, _ = victim_at_camera
    home = Path(tempfile.mkdtemp(prefix="fidhome"))
    home.chmod(0o755)
    subprocess.run(["usermod", "-d", str(home), "-s", "/bin/sh", victim], check=True, capture_output=True)
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host")], check=True)
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text((tmp_path / "key.pub").read_text())
    for path in (home, home / ".ssh", home / ".ssh" / "authorized_keys"):
        shutil.chown(path, victim, victim)
    d.rewrite_config({"auth": {"abort_if_ssh": True}})  # the default; read by the helper at each login
    pam_dir = _private_pam(tmp_path, d.config_path)
    sudo = (pam_dir / "sudo").read_text()
    (pam_dir / "sudo").write_text(f"auth [success=done default=ignore] pam_exec.so quiet stdout seteuid {HELPER} "
                                  f"--config {d.config_path}\n{sudo}")
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(f"Defaults lecture=never, timestamp_timeout=0\n{victim} ALL=(ALL) ALL\n")
    sudoers.chmod(0o440)
    port = _free_port()
    conf = tmp_path / "sshd_config"
    conf.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\nUsePAM yes\n"
                    f"PidFile {tmp_path / 'sshd.pid'}\nStrictModes no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    mounts = 'mount --bind "$1" /etc/pam.d && mount --bind "$2" /etc/sudoers && shift 2 && exec "$@"'
    server = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh",
                               str(pam_dir), str(sudoers), SSHD, "-D", "-e", "-f", str(conf)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def run(command: str) -> str:
        done = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
                               "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                               f"{victim}@127.0.0.1", command], capture_output=True, text=True, timeout=60)
        return done.stdout + done.stderr

    try:
        _wait_listening(server, port)
        yield run, victim, d
    finally:
        os.killpg(server.pid, 9)
        server.wait()
        shutil.rmtree(home, ignore_errors=True)


HIDE_SSH = "env -u SSH_CONNECTION -u SSH_CLIENT -u SSH_TTY"
SUDO_ID = f"{HIDE_SSH} sudo -k -S id </dev/null"


def test_sudo_in_an_ssh_session_gets_no_face_even_with_the_ssh_variables_removed(ssh_server):
    run, victim, d = ssh_server
    assert run("echo $SSH_CONNECTION").strip().startswith("127.0.0.1")  # a real SSH session
    out = run(f"{SUDO_ID}; echo rc=$?")
    assert "uid=0" not in out and "rc=1" in out, out
    # Escaping the ancestry (re-parented to init, a new session, no terminal) keeps the audit session sshd opened.
    out = run(f"setsid -f sh -c '{SUDO_ID} >$HOME/out 2>&1; echo rc=$? >>$HOME/out'; "
              "while ! grep -q rc= $HOME/out 2>/dev/null; do sleep 0.1; done; cat $HOME/out")
    assert "uid=0" not in out and "rc=1" in out, out
    assert "auth user=" not in d.logs()  # the helper stopped before asking faceidd
