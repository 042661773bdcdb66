"""Face login at a real LightDM greeter, through the real ``lightdm`` PAM service: owner, stranger, no daemon.

One real lightdm runs for the module (lightdm_support): as root, on Xvfb,
with a private system bus, in a private mount namespace whose /etc/pam.d is
a copy carrying the face line that ``faceid pam enable --service lightdm``
wrote there, before the real ``@include common-auth`` (pam_unix). No PAM
module is faked. The greeter is the shipped headless one
(pam_faceid/data/lightdm/faceid-greeter.py); the session records ``id``.
The camera is an image folder of camera-like frames of the bundled sample
photos (pam_faceid/data/samples), and faceidd a real subprocess.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cli_support import FACEID
from faceidd_util import Faceidd, enrol, require_model, short_tmp
from keyring_support import SwTPM, live_video_frames, require_swtpm
from lightdm_support import GreeterUser, LightDM, keyring_missing, require_lightdm

from pam_faceid.cli.demo import camera_frames, sample_image, write_folder
from pam_faceid.helper import main as helper
from pam_faceid.pamstack import pamconf

pytestmark = pytest.mark.slow  # one real LightDM for the module: 30-50 s on 2 cores

STORED = "faceid-keyring-check-value"
"""What the first (password) session stores in the login keyring, and later sessions look up."""
TIMEOUT = 4.0
"""auth.timeout of the daemon's config: how long a face check may look."""


class Setup:
    """The module's LightDM, faceidd, user and cameras."""

    def __init__(self, base: Path, user: GreeterUser):
        self.base = base
        self.user = user
        (base / "d").mkdir(mode=0o711)
        self.daemon = Faceidd(base / "d", {"liveness": {"mode": "off"},
                                           "camera": {"dark_threshold": 0.0},
                                           "auth": {"timeout": TIMEOUT, "abort_if_ssh": False,
                                                    "abort_if_lid_closed": False}})
        frames = base / "frames"
        frames.mkdir(mode=0o700)
        owner = sample_image("sample_person")
        enrol_dir = write_folder(frames / "enrol", camera_frames(owner, 5, seed=1))
        self.owner = write_folder(frames / "owner", camera_frames(owner, 8, seed=2))
        self.stranger = write_folder(frames / "stranger", camera_frames(sample_image("other_person"), 8, seed=3))
        self.no_camera = frames / "absent"
        enrol(self.daemon.state_dir, self.user.name, sorted(enrol_dir.glob("*.jpg")))
        self.lightdm = LightDM(base)
        self.runtime = self.lightdm.give_session_env(self.user)
        (self.lightdm.out / "store-value").write_text(STORED)
        self.user.start_session_bus(self.runtime)

    def camera(self, folder: Path) -> None:
        self.daemon.rewrite_config({"camera": {"device": str(folder)}})

    def enable_face(self) -> str:
        """'faceid pam enable --service lightdm' in the private copy of /etc/pam.d; the stack it leaves."""
        done = subprocess.run(self.lightdm.namespace(FACEID, "--config", str(self.daemon.config_path), "pam",
                                                     "enable", "--service", "lightdm"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return (self.lightdm.pam_dir / "lightdm").read_text()

    def session_done(self, attempt_events: int) -> None:
        """Wait until LightDM restarted the greeter (the session ended); stop what the session left running."""
        self.lightdm.wait_event("connected", attempt_events)
        self.user.stop_processes()
        self.user.start_session_bus(self.runtime)

    def ensure_login_keyring(self) -> None:
        """The user's login keyring, made by a password login whose session stored STORED (the stranger test does
        that; this repeats it when a test runs alone)."""
        keyring = self.user.home / ".local" / "share" / "keyrings" / "login.keyring"
        if keyring.exists():
            return
        self.camera(self.stranger)
        sessions = len(self.lightdm.session_records())
        attempt = self.lightdm.login(self.user.name, self.user.password)
        assert attempt.session(sessions)["keyring"].get("lookup") == STORED
        self.session_done(attempt.start)
        assert keyring.exists(), f"no {keyring} after a password login"

    def close(self) -> None:
        self.lightdm.stop()
        self.daemon.close()


@pytest.fixture(scope="module")
def greeter() -> Iterator[Setup]:
    require_lightdm()
    require_model()
    if not pamconf.pam_python_available():
        pytest.skip("libpam-python not installed (apt-get install libpam-python): the face line is pam_python's")
    base = short_tmp()
    user = GreeterUser(base)
    setup = None
    try:
        setup = Setup(base, user)
        stack = setup.enable_face()
        assert f"pam_python.so {pamconf.PROMPT_MODULE}" in stack and "auth\tsubstack\tcommon-auth" in stack, stack
        setup.daemon.start()
        setup.lightdm.start()
        yield setup
    finally:
        if setup is not None:
            setup.close()
        user.close()
        shutil.rmtree(base, ignore_errors=True)


def test_stranger_at_the_camera_gets_the_password_prompt(greeter: Setup) -> None:
    greeter.camera(greeter.stranger)
    sessions = len(greeter.lightdm.session_records())
    wrong = greeter.lightdm.login(greeter.user.name, "wrong-" + greeter.user.password)
    assert wrong.wait("complete")["authenticated"] is False
    assert wrong.kinds()[:5] == ["authenticate", "message", "message", "prompt", "answered"], wrong.events()
    assert [e["text"] for e in wrong.events() if e["event"] == "message"] == [helper.NOTICE_LOOKING,
                                                                             helper.NOTICE_NO_MATCH]
    assert [e["type"] for e in wrong.events() if e["event"] == "message"] == ["info", "error"]

    right = greeter.lightdm.login(greeter.user.name, greeter.user.password)
    assert right.wait("complete")["authenticated"] is True, right.events()
    assert "prompt" in right.kinds()
    record = right.session(sessions)
    assert record["uid"] == greeter.user.uid
    if not keyring_missing():
        assert record["keyring"] == {"locked": False, "stored": True, "lookup": STORED} or \
            record["keyring"] == {"locked": False, "lookup": STORED}, f"the typed password did not open it: {record}"
    assert len(greeter.lightdm.session_records()) == sessions + 1, "the wrong password started a session"
    greeter.session_done(right.start)


def test_owner_at_the_camera_logs_in_with_no_password(greeter: Setup) -> None:
    if not keyring_missing():
        greeter.ensure_login_keyring()
    greeter.camera(greeter.owner)
    sessions = len(greeter.lightdm.session_records())
    attempt = greeter.lightdm.login(greeter.user.name)
    complete = attempt.wait("complete")
    assert complete["authenticated"], attempt.events()
    print(f"owner: authenticate() to authenticated {(complete['t'] - attempt.wait('authenticate')['t']) * 1000:.0f} ms")
    record = attempt.session(sessions)
    assert record["uid"] == greeter.user.uid and f"({greeter.user.name})" in record["id"]
    messages = [(e["text"], e["type"]) for e in attempt.events() if e["event"] == "message"]
    assert messages == [(helper.NOTICE_LOOKING, "info"), (helper.NOTICE_MATCH, "info")], attempt.events()
    assert "prompt" not in attempt.kinds() and "answered" not in attempt.kinds()
    assert f"user={greeter.user.name} service=lightdm" in greeter.daemon.logs()
    if not keyring_missing():
        assert record["keyring"]["locked"] is True, f"no password was given, yet the keyring is open: {record}"
    greeter.session_done(attempt.start)


@pytest.mark.parametrize("failure", ["daemon down", "no camera"])
def test_no_face_check_goes_straight_to_the_password(greeter: Setup, failure: str) -> None:
    if failure == "daemon down":
        greeter.daemon.stop()
    else:
        greeter.camera(greeter.no_camera)
    try:
        sessions = len(greeter.lightdm.session_records())
        attempt = greeter.lightdm.login(greeter.user.name, greeter.user.password)
        prompt = attempt.wait("prompt", timeout=TIMEOUT + 10)
        asked = attempt.wait("authenticate")["t"]
        waited = prompt["t"] - asked
        print(f"{failure}: authenticate() to the password prompt {waited * 1000:.0f} ms")
        assert waited < TIMEOUT, f"{failure}: the prompt came {waited:.2f} s after authenticate()"
        assert attempt.wait("complete")["authenticated"] is True
        assert attempt.session(sessions)["uid"] == greeter.user.uid
        greeter.session_done(attempt.start)
    finally:
        if failure == "daemon down":
            greeter.daemon.start()


def test_the_real_gtk_greeter_logs_the_owner_in_by_face_and_one_enter(greeter: Setup) -> None:
    """lightdm-gtk-greeter, the greeter Debian's lightdm installs, with the owner selected (its state file): it
    starts authentication at once, the face matches, and one Enter (its "Log In") starts the session."""
    if shutil.which("lightdm-gtk-greeter") is None or shutil.which("xdotool") is None:
        pytest.skip("lightdm-gtk-greeter or xdotool not installed (apt-get install lightdm-gtk-greeter xdotool)")
    greeter.camera(greeter.owner)
    base = greeter.base / "gtk"
    base.mkdir(mode=0o711)
    gtk = LightDM(base, gtk_user=greeter.user.name)
    try:
        shutil.copy(greeter.lightdm.pam_dir / "lightdm", gtk.pam_dir / "lightdm")  # the face line, the session env
        gtk.start()
        authenticated = f"Authenticate result for user {greeter.user.name}: Success"
        _wait_for(lambda: authenticated in gtk.logs(), f"{authenticated!r} in LightDM's log", gtk)
        assert not gtk.session_records(), "the session started before Log In"
        xdotool = subprocess.run(["xdotool", "key", "Return"], capture_output=True, text=True, timeout=10,
                                 env={"PATH": "/usr/bin:/bin", "DISPLAY": f"127.0.0.1:{gtk.display}"})
        assert xdotool.returncode == 0, xdotool.stderr
        _wait_for(gtk.session_records, "the session's record", gtk)
        assert gtk.session_records()[0]["uid"] == greeter.user.uid
    finally:
        gtk.stop()
        greeter.user.stop_processes()
        greeter.user.start_session_bus(greeter.runtime)


def _wait_for(ready: Callable[[], object], what: str, lightdm: LightDM, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline and lightdm.proc is not None and lightdm.proc.poll() is None, \
            f"{what}: not within {timeout} s; LightDM's log:\n{lightdm.logs()}"
        time.sleep(0.05)


def test_keyring_unlocked_after_a_live_face_login_only(greeter: Setup, tmp_path_factory) -> None:
    """The sealed password opens the keyring after a live face match, not after a face with liveness off."""
    require_swtpm()
    if keyring_missing():
        pytest.skip(f"not installed: {', '.join(keyring_missing())} (./install.sh --dev installs them)")
    live_enrol, live_camera = live_video_frames(tmp_path_factory.mktemp("live"))
    greeter.ensure_login_keyring()
    tpm = SwTPM(greeter.base / "tpm").start()
    try:
        enrolled = subprocess.run([FACEID, "--config", str(greeter.daemon.config_path), "keyring", "enroll",
                                   greeter.user.name, "--tcti", tpm.tcti], input=greeter.user.password + "\n",
                                  capture_output=True, text=True, timeout=60)
        assert enrolled.returncode == 0, enrolled.stderr

        # a face match without a liveness check (liveness.mode off, the module's setting): no unseal
        greeter.camera(greeter.owner)
        sessions = len(greeter.lightdm.session_records())
        attempt = greeter.lightdm.login(greeter.user.name)
        assert attempt.wait("complete")["authenticated"]
        assert attempt.session(sessions)["keyring"]["locked"] is True
        greeter.session_done(attempt.start)

        # a live face: the keyring opens with no password typed, and the stored secret reads back
        enrol(greeter.daemon.state_dir, greeter.user.name, sorted(live_enrol.glob("*.jpg")))
        greeter.daemon.rewrite_config({"liveness": {"mode": "basic"}, "camera": {"device": str(live_camera)},
                                       "auth": {"timeout": 10.0}})  # liveness needs ~30 frames: room on a busy machine
        greeter.daemon.stop()
        greeter.daemon.start()
        sessions = len(greeter.lightdm.session_records())
        attempt = greeter.lightdm.login(greeter.user.name)
        complete = attempt.wait("complete", timeout=30)
        assert complete["authenticated"], attempt.events()
        assert "prompt" not in attempt.kinds()
        print(f"live face + unseal: authenticate() to authenticated "
              f"{(complete['t'] - attempt.wait('authenticate')['t']) * 1000:.0f} ms")
        record = attempt.session(sessions)
        assert record["keyring"] == {"locked": False, "lookup": STORED}, record
        greeter.session_done(attempt.start)
    finally:
        tpm.stop()
