"""Face detection, selection and alignment: the step between camera and embedder.

YuNet (vendored, sha256-checked) finds faces with 5 landmarks; one face is
chosen or refused with a reason; a similarity transform maps the landmarks
onto the model's five-point template, in a crop of the model's size (both
from its model.json: ``embedder.InputSpec``). Training, enrolment,
evaluation and authentication all go through this one module so their
crops agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from pam_faceid.vision.embedder import InputSpec, default_input
from pam_faceid.common.images import brightness_percent

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"

REFUSALS = {
    "no_face": "look straight at the camera, with your whole face in view and nothing covering it",
    "face_too_small": "come closer to the camera",
    "several_faces": "make sure only your face is in view",
    "too_dark": "turn on a light or face a window",
}
"""What to do about each reason FacePipeline refuses a frame: FaceRefused's message and the CLI's retry hint."""


class FaceRefused(Exception):
    """A frame that cannot be used, with a reason key from REFUSALS."""

    def __init__(self, reason: str):
        super().__init__(f"{reason.replace('_', ' ')}: {REFUSALS.get(reason, 'try again')}")
        self.reason = reason


class DetectorError(Exception):
    """The vendored detector is missing or not the file we shipped."""


@dataclass(frozen=True)
class Face:
    box: np.ndarray  # x, y, w, h in pixels
    landmarks: np.ndarray  # 5x2: right eye, left eye, nose, right mouth, left mouth
    score: float

    @property
    def area(self) -> float:
        return float(self.box[2] * self.box[3])

    @property
    def centre(self) -> np.ndarray:
        return self.box[:2] + self.box[2:] / 2


def detector_path() -> Path:
    return Path(str(resources.files("pam_faceid") / "data" / YUNET_FILE))


def _checked_model_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DetectorError(f"face detector {path}: {exc.strerror}; reinstall pam_faceid") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != YUNET_SHA256:
        raise DetectorError(
            f"face detector {path}: sha256 {digest} is not the shipped {YUNET_SHA256}; reinstall pam_faceid"
        )
    return data


class FaceDetector:
    """YuNet through cv2.FaceDetectorYN; the input size follows each frame."""

    def __init__(self, score_threshold: float = 0.7, nms_threshold: float = 0.3, model_path: Path | None = None):
        path = model_path or detector_path()
        data = _checked_model_bytes(path)
        # Load from the checked bytes, so the file cannot change between check and use.
        self._net = cv2.FaceDetectorYN.create(
            "onnx", np.frombuffer(data, np.uint8), np.empty(0, np.uint8), (320, 320),
            score_threshold, nms_threshold, 50,
        )
        self._size: tuple[int, int] = (320, 320)

    def detect(self, frame: np.ndarray) -> list[Face]:
        """All faces in a BGR frame, most confident first."""
        h, w = frame.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, rows = self._net.detect(frame)
        if rows is None:
            return []
        faces = [
            Face(box=row[0:4].astype(np.float32), landmarks=row[4:14].reshape(5, 2).astype(np.float32), score=float(row[14]))
            for row in rows
        ]
        return sorted(faces, key=lambda f: -f.score)


def select_face(
    faces: list[Face],
    frame: np.ndarray,
    *,
    policy: str = "largest",
    min_size: int = 40,
    similar_ratio: float = 0.7,
    dark_threshold: float = 0.0,
) -> Face:
    """Choose the one face to use, or refuse with a reason.

    ``largest`` is for a live camera: the person at the keyboard is the
    largest face, and a second face nearly as large is ambiguous, so refused.
    ``centre`` is for photo collections (LFW centres the labelled person,
    while a bystander may be larger): the face nearest the centre wins.
    """
    if dark_threshold > 0 and brightness_percent(frame) < dark_threshold:
        raise FaceRefused("too_dark")
    if not faces:
        raise FaceRefused("no_face")
    if policy == "centre":
        mid = np.array([frame.shape[1] / 2, frame.shape[0] / 2], dtype=np.float32)
        big_enough = [f for f in faces if min(f.box[2], f.box[3]) >= min_size] or faces
        chosen = min(big_enough, key=lambda f: float(np.linalg.norm(f.centre - mid)))
    elif policy == "largest":
        ordered = sorted(faces, key=lambda f: -f.area)
        chosen = ordered[0]
        if len(ordered) > 1 and ordered[1].area >= similar_ratio * chosen.area:
            raise FaceRefused("several_faces")
    else:
        raise ValueError(f"unknown face selection policy {policy!r}")
    if min(chosen.box[2], chosen.box[3]) < min_size:
        raise FaceRefused("face_too_small")
    return chosen


def similarity_matrix(landmarks: np.ndarray, spec: InputSpec | None = None) -> np.ndarray:
    """2x3 similarity transform (rotation, uniform scale, shift) of the landmarks onto the model's template."""
    template = (spec or default_input()).template
    matrix, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float32), template, method=cv2.LMEDS)
    if matrix is None:
        raise FaceRefused("no_face")
    return matrix


def align(frame: np.ndarray, face: Face | np.ndarray, spec: InputSpec | None = None) -> np.ndarray:
    """The aligned BGR crop the model (default: the bundled one) takes.

    Where the crop reaches past the frame (tight photo crops), the frame is
    mirrored at its border rather than smeared.
    """
    spec = spec or default_input()
    landmarks = face.landmarks if isinstance(face, Face) else face
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return cv2.warpAffine(
        frame, similarity_matrix(landmarks, spec), (spec.size, spec.size),
        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101,
    )


class FacePipeline:
    """Frame in, aligned crop (or the reason there is none) out."""

    def __init__(self, *, policy: str = "largest", min_size: int = 40, dark_threshold: float = 0.0,
                 detector: FaceDetector | None = None, spec: InputSpec | None = None):
        self.detector = detector or FaceDetector()
        self.spec = spec  # None: the bundled model's, read when a crop is first made
        self.policy = policy
        self.min_size = min_size
        self.dark_threshold = dark_threshold

    def find(self, frame: np.ndarray) -> Face:
        """The selected face; raises FaceRefused.

        Tightly cropped photos (the face fills the frame) defeat the detector,
        so when nothing is found the frame is padded once and searched again.
        """
        faces = self.detector.detect(frame)
        if not faces and self.policy == "centre":
            pad = max(frame.shape[:2]) // 3
            padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
            faces = [
                Face(box=f.box - np.array([pad, pad, 0, 0], np.float32), landmarks=f.landmarks - pad, score=f.score)
                for f in self.detector.detect(padded)
            ]
        return select_face(faces, frame, policy=self.policy, min_size=self.min_size,
                           dark_threshold=self.dark_threshold)

    def process(self, frame: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        try:
            face = self.find(frame)
        except FaceRefused as refused:
            return None, refused.reason
        return align(frame, face, self.spec), None

