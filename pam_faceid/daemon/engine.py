"""What faceidd loads: the model (Engine) and the enrolments, swapped whole as one State on reload.

Loading once is why there is a daemon: each PAM call then costs one frame's
detection and embedding, not a model load. A missing model or a bad
enrolment file is recorded in the State (sessions answer "error", `faceid
status` says why), never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pam_faceid.common import protocol
from pam_faceid.common.images import brightness_percent
from pam_faceid.common.config import Config, load_config
from pam_faceid.common.store import Enrolment, Store, StoreError
from pam_faceid.common.userhead import UserHead, load_head
from pam_faceid.vision import antispoof
from pam_faceid.vision.embedder import META_FILE, ONNX_FILE, Embedder, default_model_dir, model_id_of
from pam_faceid.vision.faces import FacePipeline, FaceRefused, align
from pam_faceid.vision.operating import OperatingPoint, effective

log = logging.getLogger("faceidd")


DETECT_MAX_SIDE = 640
"""Frames are scaled down to this long side before detection: the helper sends no more (camera.MAX_SEND_SIDE),
and a client sending bigger frames must not buy more of the one serialised detector (three connections
streaming 2048 px frames held an owner's login for 7 s)."""


class FrameRefused(Exception):
    """A frame no camera sends (progressive, arithmetic-coded, marker soup...): the session ends ``refused``."""


class Engine:
    """Frame bytes -> best similarity to a user's templates, through FacePipeline and Embedder.

    One lock serialises the detector (OpenCV's FaceDetectorYN keeps per-call
    state); on two cores nothing is lost by it.
    """

    def __init__(self, model_path: str, backend: str, pipeline: Any = None, lock: threading.Lock | None = None):
        self.key = (model_path, backend, _model_stamp(model_path))
        self.embedder = Embedder(model_path or None, backend)
        self.pipeline = pipeline if pipeline is not None else FacePipeline(spec=self.embedder.input)
        self.model_id = model_id_of(self.embedder)
        self.threshold = float(self.embedder.threshold)
        self.lock = lock or threading.Lock()
        # One embedding at load: warms the runtime up and tells the vector size enrolments must have.
        size = self.embedder.input.size
        self.dim = int(self.embedder.embed_one(np.zeros((size, size, 3), np.uint8)).size)

    def examine(self, jpeg: bytes, templates: np.ndarray, head: UserHead | None = None,
                dark_threshold: float = 0.0) -> tuple[float | None, str | None, Any, Any]:
        """(best cosine similarity, None) or (None, why there is no usable face), plus the decoded frame and
        the faces.Face scored (None when there is none).

        With a per-user ``head`` (faceid retrain) the frame's vector is mapped
        by it, as the templates were when they were loaded. A frame darker
        than ``dark_threshold`` percent is ``too_dark`` (the helper sends an
        image folder's JPEG files unchecked). Raises FrameRefused, before any
        decoding, for a frame no camera sends (protocol.frame_problem).
        """
        frame = decode_frame(jpeg)
        if frame is None:
            return None, "undecodable", None, None
        if dark_threshold > 0 and brightness_percent(frame) < dark_threshold:
            return None, "too_dark", frame, None
        with self.lock:
            try:
                face = self.pipeline.find(frame)
                crop = align(frame, face, self.embedder.input)
            except FaceRefused as refused:
                return None, refused.reason or "no_face", frame, None
            vector = self.embedder.embed_one(crop)
        if head is not None:
            vector = head.apply(vector)
        return float(np.max(templates @ vector)), None, frame, face


def decode_frame(jpeg: bytes) -> np.ndarray | None:
    """A client's JPEG frame as faceidd scores it: checked, decoded, scaled to DETECT_MAX_SIDE; None if undecodable.

    Raises FrameRefused, before any decoding, for a frame no camera sends
    (protocol.frame_problem). ``faceid liveness`` measures through this too.
    """
    problem = protocol.frame_problem(jpeg)
    if problem is not None:
        raise FrameRefused(problem)
    size = protocol.jpeg_size(jpeg) or (0, 0)  # never None here: frame_problem read its SOF
    reduced = cv2.IMREAD_REDUCED_COLOR_2 if max(size) >= 2 * DETECT_MAX_SIDE else cv2.IMREAD_COLOR
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), reduced)
    if frame is None:
        return None
    scale = DETECT_MAX_SIDE / max(frame.shape[:2])
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    return frame


def _model_stamp(model_path: str) -> tuple[float, ...]:
    """Modification times of the model files, so a reload notices a replaced model."""
    folder = Path(model_path) if model_path else default_model_dir()
    stamps = []
    for name in (ONNX_FILE, META_FILE):
        try:
            stamps.append(os.stat(folder / name).st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)


@dataclasses.dataclass
class UserEntry:
    """One enrolled user as sessions need it: templates (mapped by the head, if any), engine, threshold, head."""

    templates: np.ndarray
    engine: Engine | None
    threshold: float | None
    head: UserHead | None = None


@dataclasses.dataclass
class State:
    """Everything one session needs, swapped whole on reload so sessions in flight keep theirs."""

    cfg: Config
    socket_path: str
    state_dir: str
    engine: Engine | None
    engine_error: str | None
    threshold: float | None
    users: dict[str, UserEntry]
    skipped: dict[str, str]
    loaded: float
    liveness_model: Any = None
    """The anti-spoofing model (vision.antispoof.AntiSpoof) when liveness.mode is not off and it loaded."""
    liveness_error: str | None = None

    def engines(self) -> list[Engine]:
        return [self.engine] if self.engine is not None else []

    def summary(self) -> str:
        model = self.engine.model_id if self.engine else f"none ({self.engine_error})"
        own = sum(entry.head is not None for entry in self.users.values())
        return (f"config={self.cfg.path} state_dir={self.state_dir} users={len(self.users)} "
                f"(own head: {own}) skipped={len(self.skipped)} model={model or 'unnamed'} "
                f"threshold={self.threshold} liveness={self.cfg.liveness.mode}"
                + (f" (model not loaded: {self.liveness_error})" if self.liveness_error else ""))


def load_state(config_path: str | None, overrides: dict[str, str], previous: State | None = None) -> State:
    """Read config, model and enrolments. ConfigError propagates; a bad model or user file is recorded, not fatal."""
    cfg = load_config(config_path)
    socket_path = overrides.get("socket") or cfg.daemon.socket
    state_dir = overrides.get("state_dir") or cfg.daemon.state_dir
    cache = {e.key: e for e in previous.engines()} if previous is not None else {}
    backend = cfg.model.backend
    engine: Engine | None = None
    engine_error: str | None = None
    try:
        engine = cache.get((cfg.model.path, backend, _model_stamp(cfg.model.path)))
        if engine is None:
            engine = Engine(cfg.model.path, backend)
    except Exception as exc:  # a missing/corrupt model must not stop the daemon: sessions answer "error"
        engine_error = _one_line(exc)
        log.error("model not loaded: %s", engine_error)

    def threshold_of(model: Engine | None) -> float | None:
        if isinstance(cfg.auth.threshold, float):  # else "auto": the model's own
            return cfg.auth.threshold
        return model.threshold if model else None

    users: dict[str, UserEntry] = {}
    skipped: dict[str, str] = {}
    try:
        good, bad = Store(state_dir).load_all()
    except StoreError as exc:
        good, bad = {}, {"*": str(exc)}
        log.error("enrolments not loaded: %s", exc)
    for user, reason in bad.items():
        log.error("skipping user %s: %s", user, reason)
        skipped[user] = reason
    for user, enrolment in good.items():
        problem = _enrolment_problem(enrolment, engine)
        if problem:
            log.error("skipping user %s: %s", user, problem)
            skipped[user] = problem
            continue
        templates, threshold = enrolment.matrix(), threshold_of(engine)
        if threshold is not None:  # the user's operating point (faceid enroll): never below the global threshold
            threshold = effective(OperatingPoint.from_json(enrolment.operating_point), threshold)
        head = load_head(state_dir, user, engine.model_id) if engine is not None else None
        if head is not None and head.dim == templates.shape[1]:
            templates = head.apply(templates)
            if cfg.auth.threshold == "auto":
                threshold = head.threshold
        else:
            head = None
        users[user] = UserEntry(templates, engine, threshold, head)
    liveness_model, liveness_error = _liveness_model(cfg.liveness.mode)
    return State(cfg, socket_path, state_dir, engine, engine_error, threshold_of(engine), users, skipped,
                 time.time(), liveness_model, liveness_error)


def _liveness_model(mode: str) -> tuple[Any, str | None]:
    """The anti-spoofing model, loaded once per process; or why not (sessions then answer "error")."""
    if mode == "off":
        return None, None
    try:
        model = antispoof.shared()
        model.score(np.zeros((antispoof.SIZE, antispoof.SIZE, 3), np.uint8), (0, 0, antispoof.SIZE, antispoof.SIZE))
        return model, None  # warmed up: the first login does not pay onnxruntime's first run
    except Exception as exc:  # noqa: BLE001 - a missing or changed model must not stop the daemon: the password is asked
        error = _one_line(exc)
        log.error("anti-spoofing model not loaded (liveness.mode %s): %s", mode, error)
        return None, error


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _enrolment_problem(enrolment: Enrolment, engine: Engine | None) -> str | None:
    if engine is None:
        return None
    stale = enrolment.stale_for(engine.model_id)
    if stale:
        return stale
    dim = enrolment.matrix().shape[1]
    if dim != engine.dim:
        return (f"re-enrol: templates have {dim} values, model {engine.model_id} gives {engine.dim} "
                f"(sudo faceid clear {enrolment.user} && sudo faceid enroll {enrolment.user})")
    return None
