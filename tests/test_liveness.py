"""Liveness on camera sessions rendered from real photographs: photos and screens refused, a moving head live.

Sessions come from bench/spoof_sessions.py (the renderer bench/spoof_set.py
writes the benchmark set with): real dev/lfw photos of faces_support.PERSON shown to
a simulated webcam as a held print, a moved print, a screen, or as a head
turning a few degrees through a face-shaped depth map. A live person's session
is continuous frames of one head moving a little, never a run of different
photographs (that is a slideshow attack), so the genuine stand-in here is the
moving head, built from several different photos of the person. Faces are
found by the daemon's FacePipeline; the daemon test runs a real faceidd.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest
from faces_support import OTHER_PERSON, PERSON, images_of
from faceidd_util import enrol, require_model
from bench.spoof_sessions import Source, add_glare, genuine_session, load_sources, make_session

from pam_faceid.common import protocol
from pam_faceid.daemon.decision import Decision
from pam_faceid.vision.faces import Face, FacePipeline, FaceRefused
from pam_faceid.vision.liveness import MODES, LivenessCheck, looks_infrared

FRAMES = 10


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline()


def sources_of(name: str, count: int) -> list[Source]:
    """The first ``count`` photos of ``name`` in which a face is found, located once."""
    folder = images_of(name)[0].parent
    found = load_sources(folder, FacePipeline(policy="centre"), count)
    assert len(found) == count, f"only {len(found)} usable photos of {name}"
    return found


@pytest.fixture(scope="module")
def person() -> list[Source]:
    return sources_of(PERSON, 6)


def faces_in(frames: list[np.ndarray], pipeline: FacePipeline, every: bool = True) -> list[tuple[np.ndarray, Face]]:
    """(frame, face) where the detector finds one; ``every``: it must, in all frames but one."""
    out = []
    for frame in frames:
        try:
            out.append((frame, pipeline.find(frame)))
        except FaceRefused:
            continue
    assert not every or len(out) >= len(frames) - 1, "the detector lost the face in the rendered session"
    return out


def run(frames: list[np.ndarray], mode: str, pipeline: FacePipeline, ir: bool = False,
        every: bool = True, without: str | None = None) -> tuple[bool, str]:
    """(live after any frame, as a daemon stopping at the first live verdict sees it; the final reason).

    ``without`` names a Policy cue ("moire", "glare") whose threshold is lifted out of reach, to show
    what the session's verdict would be if that cue did not exist.
    """
    check = LivenessCheck(mode, ir=ir)
    if without is not None:
        check.policy = dataclasses.replace(check.policy, **{without: math.inf})
    live = False
    for frame, face in faces_in(frames, pipeline, every):
        check.add(frame, face)
        live = live or check.verdict().live
    return live, check.verdict().reason


@pytest.mark.parametrize("kind", ["photo_still", "photo_moved"])
def test_a_photo_held_or_moved_in_front_of_the_camera_is_refused(kind, person, pipeline):
    """One print: hand tremor, shifts, tilts (perspective), rotation, scale, sensor noise, MJPEG."""
    for seed in range(3):
        session = make_session(kind, person, np.random.default_rng(seed), FRAMES)
        assert run(session.frames, "basic", pipeline) == (False, "flat_motion"), (kind, seed, session.params)
        assert not run(session.frames, "strict", pipeline)[0]


def test_prints_of_different_photos_in_turn_are_refused(person, pipeline):
    """Changing photographs is not motion: a slideshow of the person's prints gives no 3-D evidence."""
    for seed in range(2):
        session = make_session("slideshow_print", person, np.random.default_rng(seed), FRAMES)
        assert session.params["photos"] >= 3
        assert run(session.frames, "basic", pipeline) == (False, "flat_motion"), session.params


def test_moire_alone_refuses_a_moving_head_replayed_on_a_screen(person, pipeline):
    """A video of the head turning, on a screen: its motion is genuinely 3-D, so only the moire cue can refuse.

    Seeds 3 and 9 render screens whose pixel grid aliases into moire; with that cue out of reach the same
    frames are live, so this fails if the moire detector goes.
    """
    for seed in (3, 9):
        session = make_session("screen_video", person, np.random.default_rng(seed), FRAMES)
        assert run(session.frames, "basic", pipeline, without="moire") == (True, "live"), session.params
        assert run(session.frames, "basic", pipeline) == (False, "moire"), session.params


def glared(frames: list[np.ndarray], pipeline: FacePipeline) -> list[np.ndarray]:
    """The frames with a saturated highlight on the cheek, as a glossy print or screen under a lamp shows."""
    out = []
    for frame in frames:
        face = pipeline.find(frame)
        width = float(face.box[2])
        cheek = face.landmarks[[0, 1, 3, 4]].mean(axis=0) + np.array([0.2 * width, 0.0])
        lit = add_glare(frame.astype(np.float32), cheek, np.array([0.18, 0.12]) * width, 300.0, 0.3)
        out.append(np.clip(lit, 0, 255).astype(np.uint8))
    return out


def test_glare_alone_refuses_a_moving_head_under_a_highlight(person, pipeline):
    """A live-moving head with a saturated patch on the face: 3-D motion is there, so only the glare cue refuses."""
    for seed in range(3):
        head = genuine_session("genuine_head", [person[seed]], np.random.default_rng(seed), FRAMES).frames
        lit = glared(head, pipeline)
        assert run(lit, "basic", pipeline, without="glare") == (True, "live"), seed
        assert run(lit, "basic", pipeline) == (False, "glare"), seed


def test_a_head_turning_a_little_is_live_in_basic_for_several_photos_of_the_person(person, pipeline):
    for index, source in enumerate(person[:4]):
        session = genuine_session("genuine_head", [source], np.random.default_rng(index), FRAMES)
        assert run(session.frames, "basic", pipeline) == (True, "live"), (source.path.name, session.params)


def test_strict_also_needs_a_blink(person, pipeline):
    """Seeds 0-2 turn the head 2.5-3.1 degrees: strict's 3-D evidence is there, so the blink decides."""
    for seed in range(3):
        blinking = genuine_session("genuine_head", [person[seed]], np.random.default_rng(seed), FRAMES, blink=True)
        staring = genuine_session("genuine_head", [person[seed]], np.random.default_rng(seed), FRAMES, blink=False)
        assert blinking.params["head_motion_deg"] >= 2.5
        assert run(blinking.frames, "strict", pipeline) == (True, "live"), blinking.params
        assert run(staring.frames, "strict", pipeline) == (False, "no_blink"), staring.params


def test_off_is_always_live(person, pipeline):
    assert LivenessCheck("off").verdict().live
    session = make_session("photo_still", person, np.random.default_rng(0), FRAMES)
    assert run(session.frames, "off", pipeline) == (True, "off")
    with pytest.raises(ValueError, match="choose one of off, basic, strict"):
        LivenessCheck("on")
    assert MODES == ("off", "basic", "strict")


def test_infrared_frames_are_recognised_and_a_dark_face_in_ir_is_refused(person, pipeline):
    session = genuine_session("genuine_head", [person[0]], np.random.default_rng(0), FRAMES)
    grey = [cv2.cvtColor(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for f in session.frames]
    through_jpeg = cv2.imdecode(cv2.imencode(".jpg", grey[0])[1], cv2.IMREAD_COLOR)
    assert looks_infrared(through_jpeg) and not looks_infrared(session.frames[0])
    assert run(grey, "basic", pipeline, ir=True, every=False) == (True, "live")
    # A screen shows nothing to an IR camera: where the face was, the frame is dark and flat.
    check = LivenessCheck("basic", ir=True)
    for frame, face in faces_in(grey, pipeline, every=False):
        dark = frame.copy()
        x, y, w, h = (int(v) for v in face.box)
        dark[max(y, 0):y + h, max(x, 0):x + w] = 12
        check.add(dark, face)
    assert check.verdict().reason == "ir_flat"


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


def test_decision_refuses_a_matching_photo_as_not_live_and_off_lets_it_match(person, pipeline):
    photo = make_session("photo_still", person, np.random.default_rng(1), FRAMES).frames
    verdict = decide([(f, 0.9) for f in photo], "basic", pipeline)
    assert verdict.result == "not_live" and verdict.reason.startswith("liveness flat_motion: ")
    assert verdict.liveness == "not_live:flat_motion" and verdict.fields()["score"] == 0.9
    assert "liveness" not in verdict.fields()  # the audit log's, never sent to the client
    verdict = decide([(f, 0.9) for f in photo], "off", pipeline)
    assert verdict.result == "match" and verdict.liveness == "off" and verdict.frames == 2


def test_decision_matches_a_moving_head_once_it_is_live(person, pipeline):
    head = genuine_session("genuine_head", [person[1]], np.random.default_rng(1), FRAMES).frames
    verdict = decide([(f, 0.9) for f in head], "basic", pipeline)
    assert verdict.result == "match" and verdict.liveness == "live" and 3 <= verdict.frames < FRAMES


def test_a_live_stranger_lends_a_photo_no_motion(person, pipeline):
    """Liveness sees only frames whose face matched: a stranger's moving head, then the user's photo, is refused."""
    stranger = genuine_session("genuine_head", sources_of(OTHER_PERSON, 1), np.random.default_rng(0), FRAMES).frames
    photo = make_session("photo_still", person, np.random.default_rng(2), FRAMES).frames
    verdict = decide([(f, 0.1) for f in stranger] + [(f, 0.9) for f in photo], "basic", pipeline)
    assert verdict.result == "not_live" and verdict.liveness == "not_live:flat_motion", verdict
    # ... while the same stranger's frames alone were live evidence.
    assert run(stranger, "basic", pipeline)[0]


def test_a_session_whose_face_never_matched_stays_no_match(person, pipeline):
    photo = make_session("photo_still", person, np.random.default_rng(0), FRAMES).frames
    verdict = decide([(f, 0.2) for f in photo], "basic", pipeline)
    assert verdict.result == "no_match" and verdict.liveness == "not_live:too_few_frames"


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


def test_faceidd_refuses_a_photo_with_the_liveness_reason_and_off_lets_it_match(faceidd, person):
    """Root enrolled from 4 real photos; a print of a fifth held to the camera; then liveness.mode: off."""
    require_model()
    d = faceidd({**ANY_FACE, "daemon": {"max_frames_per_session": 30}})
    enrol(d.state_dir, "root", [s.path for s in person[:4]])
    d.start()
    photo = jpegs(make_session("photo_still", person[4:5], np.random.default_rng(3), 16).frames)
    verdict = session(d.socket, photo)
    assert verdict.get("result") == "not_live", verdict.fields
    assert verdict.get("reason").startswith("liveness flat_motion") and verdict.get("score") is not None
    d.wait_log("verdict=not_live")
    assert "liveness=not_live:flat_motion" in d.logs()
    d.rewrite_config({"liveness": {"mode": "off"}})
    protocol.request_reload(d.socket)
    verdict = session(d.socket, photo)
    assert verdict.get("result") == "match", verdict.fields
    d.wait_log("verdict=match")
    assert "liveness=off" in d.logs()


def test_faceidd_lets_a_moving_head_in_with_liveness_basic(faceidd, person):
    require_model()
    d = faceidd(ANY_FACE)
    enrol(d.state_dir, "root", [s.path for s in person[:4]])
    d.start()
    head = jpegs(genuine_session("genuine_head", person[4:5], np.random.default_rng(4), 16).frames)
    verdict = session(d.socket, head)
    assert verdict.get("result") == "match", verdict.fields
    d.wait_log("verdict=match")
    assert "liveness=live" in d.logs()

