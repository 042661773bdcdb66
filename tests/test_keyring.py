"""The login password sealed to a TPM (swtpm here) and handed to PAM only after a live face match at a greeter.

Real tpm2-tools against swtpm, the real ``faceid keyring`` CLI, real PAM
(pam_unix) for the password check, and the real helper with a real faceidd
for the handoff. The end-to-end unlock of gnome-keyring in a LightDM session
is in test_greeter.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cli_support import FACEID, faceid, write_config
from faceidd_util import HELPER, Faceidd, enrol, require_model, run_as_nobody
from keyring_support import SwTPM, live_video_frames, require_swtpm

from pam_faceid.cli.demo import camera_frames, sample_image, write_folder
from pam_faceid.common import sealed
from pam_faceid.daemon.decision import Verdict, verdict_fields
from pam_faceid.pamstack import pamconf

@pytest.fixture
def tpm(tmp_path: Path):
    require_swtpm()
    made: list[SwTPM] = []

    def make(name: str = "tpm") -> SwTPM:
        made.append(SwTPM(tmp_path / name).start())
        return made[-1]

    try:
        yield make
    finally:
        for one in made:
            one.stop()


def test_sealed_secret_opens_only_on_its_own_tpm_and_survives_a_restart(tpm, tmp_path: Path) -> None:
    first, second = tpm("first"), tpm("second")
    secret = bytearray(b"correct horse \xc3\xa9 battery")
    started = time.monotonic()
    record = sealed.seal(secret, first.tcti, "root")
    seal_s = time.monotonic() - started
    blob = json.dumps(record).encode()
    assert bytes(secret) not in blob and b"correct horse" not in blob
    started = time.monotonic()
    assert sealed.unseal(record) == secret
    unseal_s = time.monotonic() - started
    print(f"seal {seal_s * 1000:.0f} ms, unseal {unseal_s * 1000:.0f} ms (swtpm, tpm2-tools)")
    with pytest.raises(sealed.SealError, match="integrity check failed"):
        sealed.unseal({**record, "tcti": second.tcti})
    first.stop()
    first.start()
    assert sealed.unseal(record) == secret, "the sealing did not survive a restart of the TPM"


def test_enroll_checks_the_password_through_pam_and_never_stores_a_wrong_one(tpm, temp_user, tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    one = tpm()
    config = write_config(tmp_path, tmp_path / "no-camera")
    state = str(tmp_path / "state")
    wrong = faceid(config, "keyring", "enroll", temp_user.name, "--tcti", one.tcti, input="wrong-" + temp_user.password)
    assert wrong.returncode == 1 and "PAM refused" in wrong.stderr and "nothing sealed" in wrong.stderr, wrong.stderr
    assert sealed.sealed_users(state) == []
    done = faceid(config, "keyring", "enroll", temp_user.name, "--tcti", one.tcti, input=temp_user.password + "\n")
    assert done.returncode == 0, done.stderr
    path = Path(sealed.record_path(state, temp_user.name))
    st, folder = path.stat(), path.parent.stat()
    assert (st.st_uid, st.st_mode & 0o777, folder.st_uid, folder.st_mode & 0o777) == (0, 0o600, 0, 0o700)
    assert temp_user.password.encode() not in path.read_bytes()
    record = sealed.load(state, temp_user.name)
    assert record is not None and sealed.unseal(record) == temp_user.password.encode()
    assert "ok, the TPM unseals it" in faceid(config, "keyring", "status").stdout
    one.stop()  # the TPM gone (or PCR 7 moved): status says so
    assert "DOES NOT UNSEAL" in faceid(config, "keyring", "status").stdout
    one.start()
    assert f"keyring:  sealed login password for {temp_user.name}" in faceid(config, "status").stdout

    # a hostile local user can neither read, list nor replace it
    probe = run_as_nobody(f"import os\nfor op in (lambda: open({str(path)!r}, 'rb').read(), "
                          f"lambda: os.listdir({str(path.parent)!r}), "
                          f"lambda: open({str(path.parent / 'x.sealed')!r}, 'w')):\n"
                          "    try:\n        op(); print('ALLOWED')\n    except PermissionError:\n        print('denied')\n")
    assert probe.stdout.split() == ["denied"] * 3, probe.stdout + probe.stderr
    os.chown(path, 65534, 65534)  # a record root does not own alone (planted, or given away) is refused
    with pytest.raises(sealed.SealError, match="not root's alone"):
        sealed.load(state, temp_user.name)
    os.chown(path, 0, 0)

    # a password change (here chpasswd, as passwd does) makes the record stale: dropped, never handed on
    subprocess.run(["chpasswd"], input=f"{temp_user.name}:new-{temp_user.password}\n", text=True, check=True)
    assert "STALE" in faceid(config, "keyring", "status").stdout
    record = sealed.load(state, temp_user.name)
    assert record is not None and sealed.stale(record, temp_user.name)

    removed = faceid(config, "keyring", "remove", temp_user.name)
    assert removed.returncode == 0 and sealed.sealed_users(state) == []
    assert faceid(config, "keyring", "remove", temp_user.name).returncode == 1


def test_a_face_line_in_common_auth_never_vouches_for_the_password(tpm, temp_user, tmp_path: Path) -> None:
    """enroll checks the password with our face lines taken out: a face line that always matches (a stand-in
    named faceid-helper, in common-auth of a private /etc/pam.d) must not let a wrong password be sealed."""
    tmp_path.chmod(0o700)
    one = tpm()
    config = write_config(tmp_path, tmp_path / "no-camera")
    stand_in = tmp_path / "bin" / "faceid-helper"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    pam_copy = tmp_path / "pam.d"
    shutil.copytree("/etc/pam.d", pam_copy, symlinks=True)
    common = pam_copy / "common-auth"
    common.write_text(f"auth [success=done default=ignore] pam_exec.so quiet {stand_in}\n" + common.read_text())
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           'mount --bind "$1" /etc/pam.d && shift && exec "$@"', "sh", str(pam_copy),
                           FACEID, "--config", str(config), "keyring", "enroll", temp_user.name, "--tcti", one.tcti],
                          input="wrong-" + temp_user.password + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "PAM refused" in done.stderr, done.stdout + done.stderr
    assert sealed.sealed_users(str(tmp_path / "state")) == []


def test_no_tpm_says_so_and_does_nothing(temp_user, tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    config = write_config(tmp_path, tmp_path / "no-camera")
    done = faceid(config, "keyring", "enroll", temp_user.name, "--tcti", "device:/dev/faceid-no-such-tpm",
                  input=temp_user.password + "\n")
    assert done.returncode == 1 and "no TPM" in done.stderr and "nothing sealed" in done.stderr
    assert not (tmp_path / "state" / sealed.FOLDER).exists()


def _helper(config: Path, user: str, service: str, as_nobody: bool = False) -> tuple[int, bytes]:
    """faceid-helper as pam_python runs it, with a pipe for --authtok-fd; (exit code, what came through the pipe)."""
    read_end, write_end = os.pipe()
    env = {"PAM_USER": user, "PAM_SERVICE": service, "PAM_TYPE": "auth", "PAM_TTY": ":0"}
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if as_nobody else []
    proc = subprocess.Popen([*prefix, str(HELPER), "--config", str(config), "--authtok-fd", str(write_end)], env=env,
                            pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    code = proc.wait(30)
    got = b""
    while chunk := os.read(read_end, 4096):
        got += chunk
    os.close(read_end)
    return code, got


@pytest.fixture(scope="module")
def live_frames(tmp_path_factory) -> tuple[Path, Path]:
    """(enrolment frames, camera frames) of a live person (keyring_support.live_video_frames)."""
    return live_video_frames(tmp_path_factory.mktemp("live"))


@pytest.mark.slow
def test_helper_hands_the_password_on_only_after_a_live_match_at_a_greeter(tpm, temp_user, faceidd, live_frames,
                                                                          tmp_path: Path) -> None:
    require_model()
    enrol_dir, camera = live_frames
    one = tpm()
    d: Faceidd = faceidd({"liveness": {"mode": "basic"}, "camera": {"device": str(camera), "dark_threshold": 0.0},
                          "auth": {"timeout": 10.0, "abort_if_ssh": False, "abort_if_lid_closed": False}})
    enrol(d.state_dir, temp_user.name, sorted(enrol_dir.glob("*.jpg")))
    record = sealed.seal(temp_user.password.encode(), one.tcti, temp_user.name)
    sealed.store(str(d.state_dir), temp_user.name, record)
    d.start()
    assert _helper(d.config_path, temp_user.name, "lightdm") == (0, temp_user.password.encode()), d.logs()
    assert "liveness=live" in d.logs()
    for path in Path(d.base).rglob("*"):  # never written unsealed: not in the state, config, logs or sockets' folder
        if path.is_file() and path.suffix != ".jpg":
            assert temp_user.password.encode() not in path.read_bytes(), path
    for service in ("sudo", "su", "polkit-1"):
        assert _helper(d.config_path, temp_user.name, service) == (0, b""), service
    assert _helper(d.config_path, temp_user.name, "lightdm", as_nobody=True)[1] == b""
    d.rewrite_config({"camera": {"device": str(write_folder(tmp_path / "stranger",
                                                              camera_frames(sample_image("other_person"), 8, 3)))}})
    assert _helper(d.config_path, temp_user.name, "lightdm") == (1, b""), "a stranger's face unsealed"
    d.rewrite_config({"camera": {"device": str(camera)}})

    # the password changed since it was sealed: the next live face login drops the record, hands nothing on
    subprocess.run(["chpasswd"], input=f"{temp_user.name}:new-{temp_user.password}\n", text=True, check=True)
    assert _helper(d.config_path, temp_user.name, "lightdm") == (0, b"")
    assert sealed.sealed_users(str(d.state_dir)) == []

    # sealed again (the new password), but a face match without a liveness check: nothing handed on
    sealed.store(str(d.state_dir), temp_user.name, sealed.seal(b"new-" + temp_user.password.encode(), one.tcti,
                                                               temp_user.name))
    d.rewrite_config({"liveness": {"mode": "off"}})
    d.stop()
    d.start()
    assert _helper(d.config_path, temp_user.name, "lightdm") == (0, b""), "handed on with liveness off"
    assert sealed.sealed_users(str(d.state_dir)) == [temp_user.name]


def test_only_a_root_peer_learns_whether_the_face_was_live() -> None:
    """The helper unseals only on liveness "live" from faceidd; a user's own client never gets that field."""
    verdict = Verdict("match", 0.97, 5, None, "live", 3)
    assert verdict_fields(verdict, 0)["liveness"] == "live"
    assert "liveness" not in verdict_fields(verdict, 1000)


def test_passwd_reseals_the_keyring_password(tpm, temp_user, tmp_path: Path) -> None:
    """Real passwd, its password stack (a copy, in a private mount namespace) ending with our pam_python line."""
    pexpect = pytest.importorskip("pexpect", reason="pexpect not installed (./install.sh --dev)")
    if not pamconf.pam_python_available():
        pytest.skip("libpam-python not installed (apt-get install libpam-python)")
    tmp_path.chmod(0o700)
    one = tpm()
    config = write_config(tmp_path, tmp_path / "no-camera")
    state = str(tmp_path / "state")
    sealed.store(state, temp_user.name, sealed.seal(temp_user.password.encode(), one.tcti, temp_user.name))
    pam_copy = tmp_path / "pam.d"
    shutil.copytree("/etc/pam.d", pam_copy, symlinks=True)
    with open(pam_copy / "common-password", "a") as fh:
        fh.write(f"password optional pam_python.so {pamconf.PROMPT_MODULE} helper={HELPER} config={config}\n")
    assert not pamconf.enabled_in((pam_copy / "common-password").read_text()), "the reseal line counted as face auth"
    new = f"new-{temp_user.password}"
    child = pexpect.spawn("unshare", ["--mount", "--propagation", "private", "sh", "-c",
                                      'mount --bind "$1" /etc/pam.d && exec passwd "$2"', "sh", str(pam_copy),
                                      temp_user.name], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                          encoding="utf-8", timeout=30)
    for _ in range(2):
        child.expect("password:")
        child.sendline(new)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    record = sealed.load(state, temp_user.name)
    assert record is not None and not sealed.stale(record, temp_user.name)
    assert sealed.unseal(record) == new.encode()
