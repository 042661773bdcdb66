"""faceid test (a thin client of a real faceidd, and --pam through the real PAM stack) and faceid status."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import cv2
import pytest

from cli_support import FACEID, Daemon, PamService, faceid, model_dir, write_config
from faces_support import OTHER_PERSON, PERSON, fill_image_folder, session_frames, write_frames


@pytest.fixture
def enrolled(cli_env, temp_user, person_images, make_image_folder):
    """temp_user enrolled with 8 images of PERSON; returns (config, user)."""
    config, _camera = cli_env
    done = faceid(config, "enroll", temp_user.name, "--from", str(make_image_folder(person_images(PERSON)[:8])))
    assert done.returncode == 0, done.stderr
    return config, temp_user


def test_frames_of_the_person_match_and_of_another_do_not(enrolled, daemon, person_images, make_image_folder,
                                                          tmp_path):
    config, user = enrolled
    same = faceid(config, "test", user.name, "--from",
                  str(write_frames(session_frames(person_images(PERSON)[:3]), tmp_path / "same")))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "MATCH" in same.stdout and "verdict: match (best score 0." in same.stdout
    other = faceid(config, "test", user.name, "--from", str(make_image_folder(person_images(OTHER_PERSON)[:6])))
    assert other.returncode == 1, other.stdout
    assert "verdict: no_match" in other.stdout and "0 of 6 frame(s) matched" in other.stdout
    assert sum(line.endswith(": no match") for line in other.stdout.splitlines()) >= 5, other.stdout
    assert "service=faceid-test" in daemon.read_log()


def test_verdict_names_the_matching_frames_it_needs(enrolled, daemon, person_images, make_image_folder):
    """One matching frame is not a match while the daemon's auth.min_matching_frames is 2: the lines say so."""
    config, user = enrolled
    one = str(make_image_folder(person_images(PERSON)[:1]))
    shown = faceid(config, "test", user.name, "--from", one)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "2 matching frame(s) needed (auth.min_matching_frames)" in shown.stdout
    assert "MATCH (1 of 2 needed)" in shown.stdout
    assert "verdict: no_match" in shown.stdout
    assert "1 of 1 frame(s) matched, 2 needed (auth.min_matching_frames)" in shown.stdout
    assert faceid(config, "config", "auth.min_matching_frames", "1").returncode == 0  # the daemon reloads
    shown = faceid(config, "test", user.name, "--from", one)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "verdict: match" in shown.stdout and "1 of 1 frame(s) matched, 1 needed" in shown.stdout


def test_frames_stop_where_the_daemon_decides(enrolled, daemon, person_images, make_image_folder):
    """Six matching frames, two needed: the daemon answers after the second, so nothing is printed after it."""
    config, user = enrolled
    shown = faceid(config, "test", user.name, "--from", str(make_image_folder(person_images(PERSON)[:6])))
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in lines[1:-1]] == ["MATCH (1 of 2 needed)", "MATCH (2 of 2 needed)"]
    assert lines[-1].startswith("verdict: match") and "2 of 2 frame(s) matched, 2 needed" in lines[-1]
    assert "verdict=match" in daemon.read_log() and "frames=2 " in daemon.read_log()


def test_a_daemon_that_is_down_is_one_line_naming_how_to_start_it(enrolled, person_images, make_image_folder):
    config, user = enrolled
    down = faceid(config, "test", user.name, "--from", str(make_image_folder(person_images(PERSON)[:2])))
    assert down.returncode == 1 and down.stdout == ""
    assert len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "faceidd is not running" in down.stderr and "faceid dev-daemon" in down.stderr


def _audited(log: str, service: str) -> tuple[str, str]:
    """(verdict, score) of the daemon's last audit line for a session of ``service``."""
    found = re.findall(rf"service={re.escape(service)} tty=.* verdict=(\S+) score=(\S+)", log)
    assert found, log
    return found[-1]


def test_agrees_with_a_real_login_for_a_user_with_a_per_user_head(enrolled, person_images, make_image_folder):
    """A head under which the base model and the user's head disagree: faceid test follows the head, as login does.

    The head pulls every vector a little towards one direction and carries a
    threshold of 0.8: this impostor scores 0.85-0.89 under the base model and
    0.87-0.91 under the head, below the base threshold (0.9321) and above the
    head's, so only a daemon that maps by the head and decides by its
    threshold lets the frames match.
    """
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.common.protocol import request_reload
    from pam_faceid.vision.userhead import UserHead, save_head

    config, user = enrolled
    impostor = make_image_folder(person_images(OTHER_PERSON)[:4])
    write_config(config.parent, impostor)
    proc = Daemon(config)
    service = PamService(config)
    try:
        base = faceid(config, "test", user.name)  # scored by the base model and its threshold
        assert base.returncode == 1 and "verdict: no_match" in base.stdout, base.stdout + base.stderr
        assert _audited(proc.read_log(), "faceid-test")[0] == "no_match"
        embedder = Embedder(model_dir())
        head = UserHead.identity(threshold=0.8, model_id=model_id_of(embedder))
        head.bias[0] = 0.5
        save_head(config.parent / "state", user.name, head)
        assert request_reload(proc.socket)["ok"]
        shown = faceid(config, "test", user.name)
        login = faceid(config, "test", user.name, "--pam", service.name)
        log = proc.read_log()
    finally:
        service.remove()
        proc.stop()
    assert shown.returncode == 0 and "verdict: match" in shown.stdout, shown.stdout + shown.stderr
    assert login.returncode == 0 and "PAM answered: success" in login.stdout, login.stdout + login.stderr
    tested, logged_in = _audited(log, "faceid-test"), _audited(log, service.name)
    assert tested[0] == logged_in[0] == "match" and tested[1] == logged_in[1]
    assert f"best score {tested[1]};" in shown.stdout
    untested = re.findall(r"service=faceid-test tty=.* verdict=no_match score=(\S+)", log)
    assert untested and float(untested[0]) < float(tested[1]), "the head's mapping raised the score"
    assert 0.8 <= float(tested[1]) < embedder.threshold, "the head's threshold, not the base model's, made this a match"


def test_pam_runs_the_real_stack(enrolled, daemon, person_images, make_image_folder):
    config, user = enrolled
    service = PamService(config)
    try:
        face = faceid(config, "test", user.name, "--pam", service.name)
        assert face.returncode == 0, face.stdout + face.stderr
        assert "PAM said: Face recognised." in face.stdout
        assert "PAM answered: success (code 0" in face.stdout
        # Someone else in front of the camera: face auth falls through to pam_unix, and no password is given.
        write_config(config.parent, make_image_folder(person_images(OTHER_PERSON)[:8]))
        other = faceid(config, "test", user.name, "--pam", service.name)
        assert other.returncode == 1, other.stdout
        assert "Face not recognised" in other.stdout and "PAM answered: failure" in other.stdout
    finally:
        service.remove()
    missing = faceid(config, "test", user.name, "--pam", "no-such-service-xq")
    assert missing.returncode == 2 and "no PAM service" in missing.stderr


def test_status_shows_daemon_model_users_and_pam_services(enrolled, daemon):
    config, user = enrolled
    service = PamService(config)
    unlisted = PamService(config, prefix="later")  # a service the config's auth.services does not hold
    try:
        shown = faceid(config, "status")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "daemon:   running" in shown.stdout
        assert f"enrolled: {user.name} (8)" in shown.stdout
        used, skipped = shown.stdout.split("pam:", 1)[1].split("face skipped, password only:", 1)
        assert service.name in used and unlisted.name not in used
        assert unlisted.name in skipped.splitlines()[0] and service.name not in skipped
        assert "camera:" in shown.stdout and ": ok," in shown.stdout
        report = json.loads(faceid(config, "status", "--json").stdout)
        assert user.name in report["daemon"]["users"] and report["model"]["ok"]
        assert service.name in report["pam_services"]["face"] and unlisted.name in report["pam_services"]["skipped"]
    finally:
        service.remove()
        unlisted.remove()
    daemon.stop()
    down = faceid(config, "status")
    assert down.returncode == 1 and "daemon:   not running" in down.stdout


def test_status_labels_each_accuracy_figure_with_its_data(cli_env, tmp_path):
    """model.json holds dev-pair figures and validation figures that differ: status names the data of each."""
    config, camera = cli_env
    model = tmp_path / "model"
    shutil.copytree(model_dir(), model)
    meta = json.loads((model / "model.json").read_text())
    meta["threshold_source"] = {"data": "/data/dev/lfw", "pairs": "/data/dev/pairs.txt",
                                "metrics": {"auc": 0.942, "tar_at_far_1e-3": 0.092, "images": 3321}}
    meta["metrics"] = {"validation": {"auc": 0.93, "tar_at_far_1e-3": 0.22, "epoch": 7}}
    (model / "model.json").write_text(json.dumps(meta))
    write_config(config.parent, camera, model={"path": str(model)})
    shown = faceid(config, "status")
    assert ("\n          on dev pairs /data/dev/lfw + /data/dev/pairs.txt (people never trained on; the threshold was "
            "fit here): auc=0.942, tar_at_far_1e-3=0.092\n") in shown.stdout, shown.stdout
    assert ("\n          on validation, held-out identities of the training data (they chose the epoch): auc=0.93, "
            "tar_at_far_1e-3=0.22\n") in shown.stdout, shown.stdout
    report = json.loads(faceid(config, "status", "--json").stdout)
    assert [f["data"].split(" ")[0] for f in report["model"]["figures"]] == ["dev", "validation,"]


def test_status_reports_an_unreadable_per_user_head(enrolled):
    """A corrupt head.npz is named by faceid status (exit 1); the daemon ignores it and uses the base model."""
    config, user = enrolled
    folder = config.parent / "state" / "models" / user.name
    folder.mkdir(mode=0o700, parents=True)
    (folder / "head.npz").write_bytes(b"not a zip")
    (folder / "head.npz").chmod(0o600)
    shown = faceid(config, "status")
    assert shown.returncode == 1
    assert f"UNREADABLE per-user head of {user.name} (ignored: scored by the base model)" in shown.stdout
    assert "corrupt head file" in shown.stdout


def test_snapshot_writes_the_frames_of_the_last_attempt(enrolled, tmp_path):
    """With snapshots on, a login through real PAM leaves its frames; faceid snapshot writes them out."""
    config, user = enrolled
    assert faceid(config, "config", "snapshots.enabled", "true").returncode == 0
    kept = config.parent / "state" / "snapshots"
    proc = Daemon(config)
    service = PamService(config)
    try:
        assert faceid(config, "test", user.name, "--pam", service.name).returncode == 0
        deadline = time.monotonic() + 5  # written just after the verdict is sent
        while not list(kept.glob("*/attempt.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        service.remove()
        proc.stop()
    out = tmp_path / "snaps"
    done = faceid(config, "snapshot", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"user {user.name}, verdict match" in done.stdout
    frames = sorted(out.glob("*/frame_*.jpg"))
    assert frames and cv2.imread(str(frames[0])) is not None



def test_a_user_may_test_only_itself_and_sees_no_score(faceidd, make_user, person_images):
    """Without root, faceid test asks the daemon as that uid: another user is refused, its own verdict has no score."""
    from cli_support import FACEID
    from faceidd_util import enrol

    owner, stranger = make_user(), make_user()
    d = faceidd({"auth": {"min_matching_frames": 1, "abort_if_ssh": False}, "liveness": {"mode": "off"}})
    enrol(d.state_dir, owner, person_images(PERSON)[:4])
    d.start()
    frames = fill_image_folder(person_images(PERSON)[4:6], d.base / "frames", copy=True)
    os.chmod(frames, 0o755)

    def test_as(uid_name: str, user: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", uid_name, "--", FACEID, "--config", str(d.config_path), "test", user,
                               "--from", str(frames)], capture_output=True, text=True, timeout=60)

    other = test_as(stranger, owner)
    assert other.returncode == 1 and "verdict: refused" in other.stdout, other.stdout + other.stderr
    own = test_as(owner, owner)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "verdict: match (best score hidden (root only);" in own.stdout


def test_every_verb_ends_quietly_when_its_reader_has_gone(tmp_path):
    """``faceid … | head -1``: a closed stdout ends any verb with 141, as for any Unix filter, and no traceback."""
    from pam_faceid.cli import COMMANDS, EXIT_CLOSED_STDOUT

    config = tmp_path / "config.yaml"
    config.write_text("auth:\n  timeout: 5\n")
    runs = [[verb.replace("_", "-"), "--help"] for verb in COMMANDS] + [["config", "auth.timeout"], ["--help"]]
    for args in runs:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the first line
        try:
            done = subprocess.run([FACEID, "--config", str(config), *args], stdout=write_end, stderr=subprocess.PIPE,
                                  text=True, timeout=60)
        finally:
            os.close(write_end)
        assert (done.returncode, done.stderr) == (EXIT_CLOSED_STDOUT, ""), (args, done.stderr)
