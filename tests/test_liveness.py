"""Liveness decided by the anti-spoofing model: replays and photos refused, live people let in.

Real captures come from ../shared/spoof (webcam videos of two people and the
same videos replayed on a phone; the tests that need them skip when it is
absent); the bundled sample photographs (pam_faceid/data/samples) stand in
for a photo moved about in front of the camera, as `faceid demo` shows it.
Faces are found by the daemon's FacePipeline; the daemon tests run a real
faceidd. The checks on the model itself are tests/test_antispoof.py's.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from faceidd_util import REPO, enrol, require_model

from pam_faceid.cli.demo import camera_frames
from pam_faceid.common import protocol
from pam_faceid.common.images import read_image
from pam_faceid.daemon.decision import Decision
from pam_faceid.vision.camera import encode_jpeg
from pam_faceid.vision.faces import FacePipeline, FaceRefused
from pam_faceid.vision.liveness import (
    MODES,
    POLICIES,
    LivenessCheck,
    Policy,
    looks_infrared,
)

SPOOF = REPO.parent / "shared" / "spoof"
SAMPLE = Path(str(resources.files("pam_faceid") / "data" / "samples" / "sample_person" / "eileen_collins.jpg"))


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline()


def video(kind: str, person: str, limit: int = 20) -> list[np.ndarray]:
    """The first ``limit`` frames of a ../shared/spoof video, as faceidd decodes them (the helper's JPEG)."""
    if not SPOOF.is_dir():
        pytest.skip(f"{SPOOF} is absent (real captures ship beside the repo, not in it)")
    capture = cv2.VideoCapture(str(next((SPOOF / "videos" / kind).glob(f"{person}.*"))))
    frames = []
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.imdecode(np.frombuffer(encode_jpeg(frame), np.uint8), cv2.IMREAD_COLOR))
    return frames


def photo_frames(count: int = 10) -> list[np.ndarray]:
    """The bundled sample photograph moved about in front of the camera (faceid demo's frames)."""
    return camera_frames(read_image(SAMPLE), count, seed=1)


def run(frames: list[np.ndarray], mode: str, pipeline: FacePipeline) -> tuple[bool, str]:
    """(live after any frame, as a daemon stopping at the first live verdict sees it; the final reason)."""
    check = LivenessCheck(mode)
    live = False
    for frame in frames:
        try:
            check.add(frame, pipeline.find(frame))
        except FaceRefused:
            continue
        live = live or check.verdict().live
    return live, check.verdict().reason


def test_a_photo_moved_in_front_of_the_camera_is_refused_in_every_mode(pipeline):
    for mode in ("basic", "strict"):
        assert run(photo_frames(), mode, pipeline) == (False, "spoof")


@pytest.mark.parametrize("person", ["apfol", "zubair"])
def test_a_live_person_is_live_and_their_video_replayed_on_a_phone_is_not(person, pipeline):
    for mode in ("basic", "strict"):
        assert run(video("real", person), mode, pipeline)[0], (person, mode)
        assert run(video("replay", person), mode, pipeline) == (False, "spoof"), (person, mode)


def test_infrared_frames_are_not_scored_and_end_not_live_infrared(pipeline):
    """Grey frames (an IR camera's; one channel or three equal ones after JPEG) are outside what the model
    judges: live people score 0.02-0.16 on grey copies of ../shared/spoof's videos, so no verdict is drawn."""
    grey = [cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for f in photo_frames(4)]
    through_jpeg = cv2.imdecode(cv2.imencode(".jpg", grey[0])[1], cv2.IMREAD_COLOR)
    assert looks_infrared(through_jpeg) and looks_infrared(grey[0][..., 0]) and not looks_infrared(photo_frames(1)[0])
    assert run(grey, "basic", pipeline) == (False, "infrared")
    verdict = decide([(f, 0.9) for f in grey], "basic", pipeline)
    assert verdict.result == "not_live" and verdict.liveness == "not_live:infrared"
    assert "liveness.mode off" in verdict.reason


def test_the_session_mean_decides_after_the_modes_frames():
    """Frames seen, then their mean P(real): one high frame among low ones does not make a replay live."""
    check = LivenessCheck("basic", policy=Policy(min_frames=3, threshold=0.5))
    check.observe(0.9)
    check.observe(0.9)
    assert check.verdict().reason == "too_few_frames"
    check.observe(0.0)
    assert check.verdict().live and check.verdict().scores["real"] == 0.6
    check.observe(0.0)
    assert check.verdict().reason == "spoof" and check.verdict().scores["real_min"] == 0.0
    assert POLICIES["strict"].min_frames >= POLICIES["basic"].min_frames
    assert POLICIES["strict"].threshold >= POLICIES["basic"].threshold


def test_the_config_reference_states_the_modes_as_they_are():
    from pam_faceid.common.config import KEYS

    doc = KEYS["liveness.mode"].doc
    for mode, policy in POLICIES.items():
        assert f"{mode} needs the anti-spoofing model's mean P(real) of" in doc or f"{mode} of" in doc
        assert f"{policy.min_frames} matched frames >= {policy.threshold:g}" in doc or \
            f"of {policy.min_frames} >= {policy.threshold:g}" in doc, (mode, doc)


def test_off_is_always_live_and_runs_no_model(pipeline):
    check = LivenessCheck("off", model=object())  # an object without score(): off never calls it
    for frame in photo_frames(3):
        check.add(frame, pipeline.find(frame))
    assert check.verdict().live and check.verdict().reason == "off"
    with pytest.raises(ValueError, match="choose one of off, basic, strict"):
        LivenessCheck("on")
    assert MODES == ("off", "basic", "strict")


# ---------------------------------------------------------------- the decision: match needs a live face


def decide(frames_scores: list[tuple[np.ndarray, float]], mode: str | None, pipeline: FacePipeline):
    decision = Decision(0.5, 2, timeout=10.0, max_frames=60, started=0.0, liveness=mode)
    for n, (frame, score) in enumerate(frames_scores):
        try:
            face = pipeline.find(frame)
        except FaceRefused:
            verdict = decision.observe(None, "no_face", 0.1 * (n + 1))
        else:
            verdict = decision.observe(score, None, 0.1 * (n + 1), frame, face)
        if verdict is not None:
            return verdict
    return decision.finish(5.0, "client ended")


def test_decision_refuses_a_matching_photo_as_not_live_and_off_lets_it_match(pipeline):
    photo = photo_frames()
    verdict = decide([(f, 0.9) for f in photo], "basic", pipeline)
    assert verdict.result == "not_live" and verdict.reason.startswith("liveness spoof: ")
    assert verdict.liveness.startswith("not_live:spoof(0.0") and verdict.fields()["score"] == 0.9
    assert "liveness" not in verdict.fields()  # the audit log's, never sent to the client
    verdict = decide([(f, 0.9) for f in photo], "off", pipeline)
    assert verdict.result == "match" and verdict.liveness == "off" and verdict.frames == 2


def test_decision_matches_a_live_person_at_the_first_frames_the_mode_needs(pipeline):
    verdict = decide([(f, 0.9) for f in video("real", "apfol")], "basic", pipeline)
    assert verdict.result == "match" and verdict.liveness.startswith("live(0.9")
    assert verdict.frames == max(2, POLICIES["basic"].min_frames)


def test_a_live_stranger_lends_a_photo_no_liveness(pipeline):
    """Liveness sees only frames whose face matched: a live stranger, then the user's photo, is refused."""
    stranger = video("real", "apfol", 10)
    verdict = decide([(f, 0.1) for f in stranger] + [(f, 0.9) for f in photo_frames()], "basic", pipeline)
    assert verdict.result == "not_live" and verdict.liveness.startswith("not_live:spoof("), verdict
    assert run(stranger, "basic", pipeline)[0]  # ... while the stranger's frames alone were live


def test_a_session_whose_face_never_matched_stays_no_match(pipeline):
    verdict = decide([(f, 0.2) for f in photo_frames()], "basic", pipeline)
    assert verdict.result == "no_match" and verdict.liveness == "not_live:too_few_frames"


def test_a_missing_model_is_logged_and_sessions_answer_error(monkeypatch, tmp_path):
    """faceidd starts without it (never stops), says why, and a session with liveness on answers error: the
    password is asked, as for any error; with liveness off nothing is loaded."""
    from pam_faceid.daemon import engine
    from pam_faceid.vision import antispoof

    monkeypatch.setattr(antispoof, "model_dir", lambda: tmp_path)
    antispoof.shared.cache_clear()
    try:
        model, error = engine._liveness_model("basic")
        assert model is None and "minifasnet.json" in error and "reinstall pam_faceid" in error
        assert engine._liveness_model("off") == (None, None)
    finally:
        antispoof.shared.cache_clear()


# ---------------------------------------------------------------- faceidd


def jpegs(frames: list[np.ndarray]) -> list[bytes]:
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in frames]


def session(path: str, payloads: list[bytes]) -> protocol.Message:
    with protocol.Client(path, 5) as client:
        assert client.request("hello", protocol.hello_fields("root", "test"), timeout=5).type == "ready"
        for payload in payloads:
            reply = client.request("frame", payload=payload, timeout=10)
            if reply.type == "verdict":
                return reply
        return client.request("end", timeout=5)


# auth.threshold -1: every face found matches, so the verdict is the liveness check's alone, whatever the
# model's accuracy (recognition is test_daemon.py's); the frames still go through the real model.
ANY_FACE = {"auth": {"threshold": -1.0}}


def test_faceidd_refuses_a_photo_with_the_liveness_reason_and_off_lets_it_match(faceidd):
    require_model()
    d = faceidd({**ANY_FACE, "daemon": {"max_frames_per_session": 30}})
    enrol(d.state_dir, "root", [SAMPLE])
    d.start()
    photo = jpegs(photo_frames(8))
    verdict = session(d.socket, photo)
    assert verdict.get("result") == "not_live", verdict.fields
    assert verdict.get("reason").startswith("liveness spoof") and verdict.get("score") is not None
    d.wait_log("verdict=not_live")
    assert "liveness=not_live:spoof(0.0" in d.logs() and "liveness=basic" in d.logs()
    assert protocol.request_status(d.socket)["liveness"] == {"mode": "basic", "loaded": True, "error": None}
    d.rewrite_config({"liveness": {"mode": "off"}})
    protocol.request_reload(d.socket)
    verdict = session(d.socket, photo)
    assert verdict.get("result") == "match", verdict.fields
    d.wait_log("verdict=match")
    assert "liveness=off" in d.logs()


def test_faceidd_lets_a_live_person_in_and_refuses_the_replay(faceidd):
    require_model()
    real, replay = video("real", "apfol", 12), video("replay", "apfol", 12)
    d = faceidd(ANY_FACE)
    enrol(d.state_dir, "root", [SAMPLE])
    d.start()
    assert session(d.socket, jpegs(real)).get("result") == "match"
    d.wait_log("verdict=match")
    assert "liveness=live(0.9" in d.logs()
    assert session(d.socket, jpegs(replay)).get("result") == "not_live"
