"""faceid enroll / list / remove / clear, driven as subprocesses against a real faceidd."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_support import FACEID, faceid
from faces_support import OTHER_PERSON, PERSON


def _users_file(config: Path, user: str) -> Path:
    return config.parent / "state" / "users" / f"{user}.json"


def test_enroll_list_remove_clear_reload_the_daemon(cli_env, daemon, temp_user, person_images, make_image_folder,
                                                     make_video):
    config, _camera = cli_env
    user = temp_user.name
    first = make_image_folder(person_images(PERSON)[:5])
    done = faceid(config, "enroll", user, "--from", str(first), "--label", "first")
    assert done.returncode == 0, done.stderr
    assert "enrolled 5 template(s)" in done.stdout and "daemon reloaded" in done.stdout
    assert user in daemon.status()["users"]
    path = _users_file(config, user)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    video = make_video(person_images(PERSON)[5:15], size=(250, 250))
    done = faceid(config, "enroll", user, "--from", str(video), "--frames", "2", "--label", "second")
    assert done.returncode == 0, done.stderr
    assert "enrolled 2 template(s)" in done.stdout and "now has 7" in done.stdout

    listed = faceid(config, "list")
    assert listed.returncode == 0 and f"{user}: 7 templates" in listed.stdout
    listed = faceid(config, "list", user)
    assert listed.returncode == 0
    assert listed.stdout.count("first") == 5 and listed.stdout.count("second") == 2
    one_id = json.loads(path.read_text())["templates"][0]["id"]

    gone = faceid(config, "remove", user, "second")
    assert gone.returncode == 0 and "removed 2 template(s)" in gone.stdout, gone.stderr
    gone = faceid(config, "remove", user, one_id)
    assert gone.returncode == 0 and "removed 1 template(s)" in gone.stdout and "4 left" in gone.stdout
    missing = faceid(config, "remove", user, "no-such-label")
    assert missing.returncode == 1
    assert missing.stderr.strip().count("\n") == 0 and "no template with label or id" in missing.stderr

    refused = faceid(config, "clear", user, input="")
    assert refused.returncode == 2 and "add -y" in refused.stderr and path.exists()
    cleared = faceid(config, "clear", user, "-y")
    assert cleared.returncode == 0 and "cleared" in cleared.stdout, cleared.stderr
    assert not path.exists()
    assert user not in daemon.status()["users"]
    assert "nobody is enrolled" in faceid(config, "list").stdout


def test_frames_without_exactly_one_face_are_refused_with_a_hint(cli_env, temp_user, person_images, tmp_path):
    config, _camera = cli_env
    folder = tmp_path / "mixed"
    folder.mkdir()
    blank = np.full((240, 320, 3), 128, np.uint8)
    cv2.imwrite(str(folder / "a_blank.png"), blank)
    two = cv2.hconcat([cv2.imread(str(person_images(PERSON)[0])), cv2.imread(str(person_images(OTHER_PERSON)[0]))])
    cv2.imwrite(str(folder / "b_two.jpg"), two)
    cv2.imwrite(str(folder / "c_good.jpg"), cv2.imread(str(person_images(PERSON)[1])))
    (folder / "d_broken.jpg").write_bytes(b"not an image")

    done = faceid(config, "enroll", temp_user.name, "--from", str(folder))
    assert done.returncode == 0, done.stderr
    assert "a_blank.png: refused: no face (look straight at the camera" in done.stdout
    assert "b_two.jpg: refused: several faces (make sure only your face is in view)" in done.stdout
    assert "c_good.jpg: ok" in done.stdout and "enrolled 1 template(s)" in done.stdout
    assert "d_broken.jpg: skipped: not a readable image" in done.stderr
    assert "note: daemon not reloaded" in done.stderr

    nothing = faceid(config, "enroll", temp_user.name, "--from",
                     str(folder / "a_blank.png"), "--label", "bad")
    assert nothing.returncode == 1 and "nothing stored" in nothing.stderr
    stored = json.loads(_users_file(config, temp_user.name).read_text())
    assert "bad" not in [t["label"] for t in stored["templates"]] and len(stored["templates"]) == 1


def test_keep_images_stores_raw_frames_root_only(cli_env, temp_user, person_images):
    config, _camera = cli_env
    assert faceid(config, "config", "enroll.keep_images", "true").returncode == 0
    done = faceid(config, "enroll", temp_user.name, "--from", *map(str, person_images(PERSON)[:2]))
    assert done.returncode == 0, done.stderr
    kept = sorted((config.parent / "state" / "images" / temp_user.name).iterdir())
    ids = {t["id"] for t in json.loads(_users_file(config, temp_user.name).read_text())["templates"]}
    assert {p.stem for p in kept} == ids
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert "kept 2 raw images" in done.stdout


@pytest.mark.parametrize("args, code, words", [
    (["enroll", "no-such-user-xq", "--from", "/tmp"], 2, "no user 'no-such-user-xq'"),
    (["enroll", "root", "--from", "/does/not/exist"], 2, "/does/not/exist: no such file or folder"),
    (["enroll", "root", "--frames", "0"], 2, "--frames 0"),
    (["remove", "root", "x"], 1, "root is not enrolled"),
    (["list", "root"], 1, "root is not enrolled"),
    (["clear", "../etc", "-y"], 2, "invalid user name"),
])
def test_user_mistakes_are_one_line_without_traceback(cli_env, args, code, words):
    config, _camera = cli_env
    done = faceid(config, *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert words in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["enroll", "nobody"], ["list"], ["remove", "nobody", "x"],
                                     ["clear", "nobody", "-y"], ["dev-daemon"]])
def test_not_root_is_told_to_use_sudo(command):
    done = subprocess.run(["runuser", "-u", "nobody", "--", FACEID, *command], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 4, done.stderr
    assert "needs root: run it with sudo" in done.stderr


@pytest.mark.parametrize("command", ["enroll", "list", "remove", "clear", "test", "status", "pam", "demo",
                                     "dev-daemon", "calibrate", "snapshot", "unlock"])
def test_help_has_an_example(command):
    done = faceid(None, command, "--help")
    assert done.returncode == 0 and "example" in done.stdout and f"faceid {command}" in done.stdout


def test_unlock_and_snapshot_say_what_is_missing(cli_env, temp_user):
    config, _camera = cli_env
    unlock = faceid(config, "unlock", temp_user.name)
    assert unlock.returncode in (0, 1) and "Traceback" not in unlock.stderr
    snap = faceid(config, "snapshot", "--out", str(config.parent / "snaps"))
    assert snap.returncode == 1 and "snapshots.enabled is off" in snap.stderr


OLD_MODEL = "sha256:50c17e4641ebade0"
"""The id faceidd gave the MobileNet model shipped before dlib's network (sha256 of its embedder.onnx)."""


def test_enrolment_and_head_from_the_old_model_are_refused_and_named(cli_env, daemon, temp_user, person_images,
                                                                      make_image_folder):
    """Templates (and a per-user head) made by the previous model are never scored by the new one:
    the daemon skips the user, faceid list and status say who must re-enrol, enrol refuses to mix."""
    from pam_faceid.common.protocol import Client, hello_fields, request_reload
    from pam_faceid.common.store import Store
    from pam_faceid.common.userhead import UserHead, save_head

    config, _camera = cli_env
    user = temp_user.name
    state = config.parent / "state"
    vectors = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32)
    Store(state).add_templates(user, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), label="old",
                               model_id=OLD_MODEL)
    save_head(state, user, UserHead(np.eye(128, dtype=np.float32), np.zeros(128, np.float32), 0.5, OLD_MODEL))
    why = f"re-enrol: templates from model {OLD_MODEL}"
    request_reload(daemon.socket)
    skipped = daemon.status()["skipped"]
    assert why in skipped[user] and f"sudo faceid clear {user} && sudo faceid enroll {user}" in skipped[user]
    with Client(daemon.socket) as client:
        verdict = client.request("hello", hello_fields(user, "test"))
    assert verdict.get("result") == "error" and why in verdict.get("reason")
    assert f"per-user head of {user} ignored" not in daemon.read_log(), "a skipped user's head is not even read"

    listed = faceid(config, "list")
    assert listed.returncode == 0 and f"{user}: 3 templates: {why}" in listed.stdout
    assert why in faceid(config, "list", user).stdout
    status = faceid(config, "status")
    assert status.returncode == 1
    assert f"MUST RE-ENROL {user}: {why}" in status.stdout
    assert f"OLD per-user head of {user}: made for model {OLD_MODEL}" in status.stdout

    refused = faceid(config, "enroll", user, "--from", str(make_image_folder(person_images(PERSON)[:2])))
    assert refused.returncode != 0 and why in refused.stderr and refused.stderr.strip().count("\n") == 0
    assert faceid(config, "clear", user, "-y").returncode == 0
    again = faceid(config, "enroll", user, "--from", str(make_image_folder(person_images(PERSON)[:2])))
    assert again.returncode == 0, again.stderr
    assert "re-enrol" not in faceid(config, "list").stdout
