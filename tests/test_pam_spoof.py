"""Real replays through the real PAM stack: each person of ../shared/spoof let in live, refused as a replay.

For each person filmed in ../shared/spoof/videos: a fresh user enrolled from 5
frames of the last third of their real webcam video; a faceidd with the
shipped config's liveness (mode basic); pam_exec runs faceid-helper with the
video file as the camera, as tests/test_pam.py does. The whole real video
must log them in; the same video replayed on a phone and filmed by a webcam
must fall through to the password (pam_deny here), with faceidd's verdict
``not_live``. Skips when ../shared/spoof is absent (it is never copied here).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
from faceidd_util import REPO, enrol, require_model
from test_pam import authenticate

from pam_faceid.helper import main as helper

VIDEOS = REPO.parent / "shared" / "spoof" / "videos"
PEOPLE = ("apfol", "zubair")


def video_of(kind: str, person: str):
    if not VIDEOS.is_dir():
        pytest.skip(f"{VIDEOS} is absent (real captures ship beside the repo, not in it)")
    return next((VIDEOS / kind).glob(f"{person}.*"))


def enrolment_frames(path, folder, count: int = 5) -> list:
    """``count`` frames spread over the last third of the video, written as JPEG files."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    last_third = frames[2 * len(frames) // 3:]
    folder.mkdir()
    paths = []
    for i in np.linspace(0, len(last_third) - 1, count).round().astype(int):
        paths.append(folder / f"{i:04d}.jpg")
        cv2.imwrite(str(paths[-1]), last_third[i])
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("person", PEOPLE)
def test_the_real_person_is_let_in_and_the_replay_of_their_video_is_refused(person, faceidd, make_user,
                                                                               pam_service):
    require_model()
    real, replay = video_of("real", person), video_of("replay", person)
    user = make_user()
    d = faceidd({"liveness": {"mode": "basic"}})
    enrol(d.state_dir, user, enrolment_frames(real, d.base / "enrol"))
    d.start()
    service = pam_service(d.config_path)
    for video in (real, replay):
        assert os.access(video, os.R_OK)
    d.rewrite_config({"camera": {"device": str(real)}})
    ok, shown, _ = authenticate(service, user)
    assert ok and shown[-1] == helper.NOTICE_MATCH, d.logs()
    d.wait_log("verdict=match")
    assert "liveness=live" in d.logs()
    d.rewrite_config({"camera": {"device": str(replay)}})
    ok, shown, _ = authenticate(service, user)
    assert not ok and shown[-1] == helper.NOTICE_NO_MATCH, d.logs()
    d.wait_log("verdict=not_live")
    assert "liveness=not_live:spoof" in d.logs()
