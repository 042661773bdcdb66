"""Liveness: is the face in front of the camera a live person, or a print, a screen or a mask?

A learned presentation-attack detector decides (``vision.antispoof``:
MiniFASNet, two small CNNs trained on about 5 M real and attack images):
each frame whose face matched gets the probability that it is real, and the
session is live once enough frames were seen and their mean reaches the
mode's threshold. The mean is taken over all of the session's frames so
far, so a replay that scores high on one lucky frame is outweighed by the
rest, and a genuine frame blurred by motion costs a real person little.

The hand-made cues this replaced (3-D motion from tracked points, screen
moire, glare, blink, infrared flatness) were measured on real captures
(docs/liveness.md): they let replays in and refused real people, and none
refused an attack the model let in, so they are gone.

An infrared camera's frames are grey, and the model, trained on colour,
calls live people in grey frames attacks (0.02-0.16 on grey copies of the
real webcam videos): such frames are not scored, and a session of them ends
``not_live`` with the reason ``infrared`` rather than a verdict the model
cannot give. With an IR camera, liveness.mode off is the admin's choice.

What the model does not stop, with figures: docs/liveness.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pam_faceid.vision.antispoof import shared

MODES = ("off", "basic", "strict")

REASONS = {
    "off": "liveness check is off",
    "live": "the face looks live to the anti-spoofing model",
    "too_few_frames": "not enough frames yet",
    "spoof": "the face looks like a print, a screen or a mask to the anti-spoofing model",
    "infrared": "infrared (grey) frames, which the anti-spoofing model cannot judge: with an IR camera set "
                "liveness.mode off, knowing what it lets in (docs/liveness.md)",
}


def looks_infrared(frame: np.ndarray) -> bool:
    """True for a frame from an IR camera: single channel, or three equal ones (a grey frame survives JPEG exactly).

    No colour camera gives equal channels (Bayer noise and white balance differ per channel), so the
    camera kind needs no configuration.
    """
    if frame.ndim == 2 or frame.shape[2] == 1:
        return True
    sample = frame[::4, ::4].astype(np.int16)
    return int(np.abs(sample[..., 0] - sample[..., 1]).max(initial=0)) <= 2 and \
        int(np.abs(sample[..., 1] - sample[..., 2]).max(initial=0)) <= 2


@dataclass(frozen=True)
class Policy:
    """What one mode needs: frames seen, and their mean P(real) (fit by bench/liveness.py, docs/liveness.md)."""

    min_frames: int
    threshold: float


POLICIES = {
    "basic": Policy(min_frames=2, threshold=0.5),
    "strict": Policy(min_frames=5, threshold=0.55),
}


@dataclass(frozen=True)
class LivenessResult:
    live: bool
    reason: str  # a key of REASONS
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return REASONS.get(self.reason, self.reason)


class LivenessCheck:
    """Liveness evidence gathered over one authentication session.

    Call ``add`` for every frame whose face matched, in order, and
    ``verdict`` whenever a decision is wanted (it is cheap). Mode ``off`` is
    always live and runs no model. ``model`` is anything with
    ``score(frame, box) -> P(real)``; the default is the shipped one, loaded
    once per process. ``policy`` replaces the mode's (measuring other
    operating points: model.pad).
    """

    def __init__(self, mode: str = "basic", model: Any = None, policy: Policy | None = None):
        if mode not in MODES:
            raise ValueError(f"liveness mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.policy = POLICIES.get(mode) if policy is None or mode == "off" else policy
        self.frame_scores: list[float] = []
        self.infrared_frames = 0
        self._model = model

    @property
    def frames(self) -> int:
        return len(self.frame_scores)

    def add(self, frame: np.ndarray, face: Any) -> float | None:
        """Score one frame (BGR) and the face the detector found in it; the frame's P(real), or None for an
        infrared (grey) frame, which is counted and not scored."""
        if self.policy is None:
            return None
        if looks_infrared(frame):
            self.infrared_frames += 1
            return None
        if self._model is None:
            self._model = shared()
        score = float(self._model.score(frame, face.box))
        self.observe(score)
        return score

    def observe(self, score: float) -> None:
        """Take one frame's P(real), already computed."""
        self.frame_scores.append(float(score))

    def mean(self) -> float:
        return float(np.mean(self.frame_scores)) if self.frame_scores else 0.0

    def scores(self) -> dict[str, float]:
        """The numbers behind the verdict, for the audit log and the measuring command."""
        if not self.frame_scores:
            return {"frames": 0.0, **({"infrared": float(self.infrared_frames)} if self.infrared_frames else {})}
        return {"frames": float(self.frames), "real": round(self.mean(), 4),
                "real_min": round(min(self.frame_scores), 4), "real_max": round(max(self.frame_scores), 4)}

    def verdict(self) -> LivenessResult:
        """Live or not, with the reason (a key of REASONS) and the scores."""
        if self.policy is None:
            return LivenessResult(True, "off", {"frames": float(self.frames)})
        scores = self.scores()
        if self.frames < self.policy.min_frames:
            return LivenessResult(False, "infrared" if self.infrared_frames else "too_few_frames", scores)
        if self.mean() < self.policy.threshold:
            return LivenessResult(False, "spoof", scores)
        return LivenessResult(True, "live", scores)
