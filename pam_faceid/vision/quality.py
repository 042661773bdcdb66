"""Is this frame a good enrolment view? Face count, size, sharpness, light and head pose, each with what to do.

Guided enrolment (`faceid enroll`) asks for a few views, because more and
better templates raise the user's own scores, which is what lets the user's
operating point (vision.operating) sit higher. A login frame is matched
against every template, so a template should be a face a login will see:
one face, big enough, sharp, evenly lit, and in the asked pose.

Pose comes from YuNet's five landmarks (eyes, nose tip, mouth corners), no
extra model: the nose tip sits about half an eye distance in front of the
eye plane, so turning the head by an angle a moves it sideways by about
0.55 * sin(a) eye distances, and nodding moves it up or down against the
eye-to-mouth line. A turn of ~10 degrees is therefore a shift of ~0.1, the
threshold used here. Turns are measured from the person's own straight
view (faces are not symmetric, nor are landmark detectors), so the straight
view is asked for first. "Left" and "right" are the person's own, for a
camera that does not mirror (the nose moves to the image's right when the
person turns to their left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pam_faceid.common.images import brightness_percent
from pam_faceid.vision.embedder import InputSpec
from pam_faceid.vision.faces import REFUSALS, Face, FaceDetector, FaceRefused, align

VIEWS = ("straight", "left", "right", "up", "down")
"""The views guided enrolment asks for, in order (straight first: the others are measured from it)."""

PROMPTS = {
    "straight": "look straight at the camera",
    "left": "turn your head a little to your left",
    "right": "turn your head a little to your right",
    "up": "tilt your head a little up",
    "down": "tilt your head a little down",
    "glasses": "put your glasses on (or take them off) and look straight at the camera",
}

PROBLEMS = dict(REFUSALS, **{
    "too_bright": "move away from the lamp or window behind the camera",
    "uneven_light": "one side of your face is in shadow: face the light",
    "blurry": "hold still for a moment",
})
"""Each check's key and what to do about it (the detector's refusals word theirs as a login does)."""

MIN_FACE = 80
"""Pixels on the face box's shorter side: YuNet's landmarks and the 150 px crop both need about this much."""
FACE_LIGHT = (20.0, 90.0)
"""Mean brightness (percent) of the aligned face crop that is neither too dark nor washed out."""
EVEN_LIGHT = 0.45
"""The darker half of the face (the crop's inner 60 %, no background) must have at least this share of the
brighter half's brightness: under 1 % of dev/lfw's web faces fail it, about 4 in 10 of train/yaleb's side-lit ones."""
MIN_SHARPNESS = 12.0
"""Variance of the Laplacian of the grey aligned crop: below it, motion blur or focus has smeared the features.
Low, because a small face is upscaled to the crop and looks soft: half of dev/lfw's web faces score under 30."""
TURN = 0.10
"""Nose shift (eye distances) from the straight view that counts as a turn of about 10 degrees."""
NOD = 0.08
"""Nose shift along the eye-mouth line (its share) that counts as a tilt of about 10 degrees."""
BYSTANDER = 0.7
"""A second face smaller than this share of the largest is behind the user: ignored, as a login ignores it
(faces.select_face's similar_ratio). A larger one makes the frame ambiguous (whose face would the template be?),
so it is refused."""
STRAIGHT = (0.12, 0.42, 0.68)
"""An absolute straight view before any is measured: |yaw| <= 0.12 and pitch between 0.42 and 0.68."""


@dataclass(frozen=True)
class Pose:
    """yaw: nose offset from the eyes' midpoint in eye distances (+ = towards the image's right);
    pitch: nose depth down the eye-to-mouth line (0 = at the eyes, 1 = at the mouth)."""

    yaw: float
    pitch: float

    @classmethod
    def of(cls, face: Face) -> "Pose":
        """The pose from YuNet's landmarks: right eye, left eye, nose, right and left mouth corners."""
        marks = np.asarray(face.landmarks, np.float64)
        eyes = (marks[0] + marks[1]) / 2
        mouth = (marks[3] + marks[4]) / 2
        span = max(float(np.linalg.norm(marks[1] - marks[0])), 1e-6)
        depth = max(float(mouth[1] - eyes[1]), 1e-6)
        return cls(float((marks[2, 0] - eyes[0]) / span), float((marks[2, 1] - eyes[1]) / depth))


def view_of(pose: Pose, straight: Pose | None) -> str | None:
    """Which view ``pose`` shows, measured from the person's ``straight`` pose (or an absolute one); None = between."""
    if straight is None:
        yaw_ok, low, high = STRAIGHT
        return "straight" if abs(pose.yaw) <= yaw_ok and low <= pose.pitch <= high else None
    dyaw, dpitch = pose.yaw - straight.yaw, pose.pitch - straight.pitch
    if abs(dyaw) >= TURN and abs(dyaw) >= abs(dpitch):
        return "left" if dyaw > 0 else "right"
    if abs(dpitch) >= NOD:
        return "down" if dpitch > 0 else "up"
    if abs(dyaw) < TURN / 2 and abs(dpitch) < NOD / 2:
        return "straight"
    return None


@dataclass
class Assessment:
    """One frame's checks: problems (keys of PROBLEMS, empty = a good template), the view, the measures."""

    problems: list[str] = field(default_factory=list)
    view: str | None = None
    pose: Pose | None = None
    face: Face | None = None
    measures: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def advice(self) -> str:
        """'problem (what to do)' for each problem, most important first; 'ok' when there is none."""
        return "; ".join(f"{p.replace('_', ' ')} ({PROBLEMS[p]})" for p in self.problems) or "ok"


def assess(frame: np.ndarray, faces: list[Face], crop: np.ndarray | None, *, straight: Pose | None = None,
           dark_threshold: float = 0.0) -> Assessment:
    """Check one frame (its detected faces and the aligned crop of the largest); the first failing check stops it.

    Exactly one face: any second detection is refused, not only a nearly
    as large one as at login, because a template of the wrong person would
    let that person in.
    """
    out = Assessment()
    if dark_threshold > 0 and brightness_percent(frame) < dark_threshold:
        out.problems.append("too_dark")
        return out
    if not faces:
        out.problems.append("no_face")
        return out
    if len(faces) > 1:
        out.problems.append("several_faces")
        return out
    face = out.face = faces[0]
    out.pose = Pose.of(face)
    out.view = view_of(out.pose, straight)
    out.measures["face_px"] = float(min(face.box[2], face.box[3]))
    if out.measures["face_px"] < MIN_FACE:
        out.problems.append("face_too_small")
    if crop is not None:
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        light = float(grey.mean()) * 100.0 / 255.0
        edge = grey.shape[0] // 5
        inner = grey[edge:-edge, edge:-edge]
        half = inner.shape[1] // 2
        sides = sorted((float(inner[:, :half].mean()), float(inner[:, half:].mean())))
        out.measures.update(light=light, evenness=sides[0] / max(sides[1], 1e-6),
                            sharpness=float(cv2.Laplacian(grey, cv2.CV_64F).var()))
        if light < FACE_LIGHT[0]:
            out.problems.append("too_dark")  # a dark crop also has no contrast: not called blurred too
        elif light > FACE_LIGHT[1]:
            out.problems.append("too_bright")
        elif out.measures["evenness"] < EVEN_LIGHT:
            out.problems.append("uneven_light")
        elif out.measures["sharpness"] < MIN_SHARPNESS:
            out.problems.append("blurry")
    return out


def examine(detector: FaceDetector, spec: InputSpec | None, frame: np.ndarray, straight: Pose | None = None,
            dark_threshold: float = 0.0) -> tuple[Assessment, np.ndarray | None]:
    """(Assessment, aligned crop or None) of one frame: every face the detector sees, then :func:`assess`.

    What `faceid enroll` runs on each frame and `faceid evaluate --guided` on each image.
    """
    image = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    faces = sorted(detector.detect(image), key=lambda f: -f.area)
    faces = [f for f in faces if f.area >= BYSTANDER * faces[0].area]
    crop = None
    if len(faces) == 1:
        try:
            crop = align(image, faces[0], spec)
        except FaceRefused:
            faces = []
    return assess(image, faces, crop, straight=straight, dark_threshold=dark_threshold), crop
