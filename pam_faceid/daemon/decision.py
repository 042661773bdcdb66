"""The pure part of an authentication session: per-frame scores in, one verdict out.

No sockets and no clock of its own (the caller passes ``now``), so every
threshold, frame and time rule is testable without a daemon; session.py
feeds it frames and sends what it decides.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pam_faceid.vision.liveness import MODES, LivenessCheck


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The one answer of a session (see protocol.RESULTS)."""

    result: str
    score: float | None = None
    frames: int = 0
    reason: str | None = None
    liveness: str | None = dataclasses.field(default=None, compare=False)
    """For the audit log: "live(0.97)", "off", "not_live:<reason>(0.12)", or None (no liveness check); root peers
    get the word without the mean P(real) in brackets."""
    matches: int = 0
    """Frames whose score reached the threshold, so a client can say how many of min_matching_frames it saw."""

    def fields(self) -> dict[str, Any]:
        score = None if self.score is None else round(float(self.score), 4)
        return {"result": self.result, "score": score, "frames": self.frames, "matches": self.matches,
                "reason": self.reason}


class Decision:
    """Turns per-frame scores into a session verdict; pure (the caller passes the clock).

    A frame matches when its best similarity to the user's templates is at
    least ``threshold``. The session is a match once ``min_matching_frames``
    frames have matched within ``timeout`` seconds of ``started``. It ends
    without a match when the time is up, ``max_frames`` frames were seen or
    the client has no more frames: ``no_face`` when no frame had a face,
    ``no_match`` when faces were seen, ``timeout`` when no frame came at all.
    The clock starts at ``started``, or at the first frame when None (the
    camera's start-up does not eat the user's time).

    With ``liveness`` (a liveness.mode: off, basic, strict) a match also needs
    the liveness check to call the face live; the check sees only the frames
    whose face matched (with their frame and Face), so a live stranger moving
    before a photo of the user is shown lends the photo no motion. A session
    whose face matched but was never found live ends ``not_live``, with the
    liveness reason. Without ``liveness`` (None) there is no such check.
    ``liveness_model`` scores frames (faceidd passes the one it loaded; None
    loads the shipped one at the first matching frame).
    """

    def __init__(self, threshold: float, min_matching_frames: int, timeout: float, max_frames: int,
                 started: float | None = None, liveness: str | None = None, liveness_model: Any = None):
        self.threshold = float(threshold)
        self.min_matching_frames = int(min_matching_frames)
        self.timeout = float(timeout)
        self.max_frames = int(max_frames)
        self.started = started
        self.frames = 0
        self.faces = 0
        self.matches = 0
        self.best: float | None = None
        self.last_reason: str | None = None
        self.verdict: Verdict | None = None
        if liveness is not None:
            if liveness not in MODES:
                raise ValueError(f"liveness mode {liveness!r}: choose one of {', '.join(MODES)}")
        self.liveness_mode = liveness
        self.liveness_model = liveness_model  # None: the shipped anti-spoofing model (vision.antispoof)
        self.liveness: Any = None  # a liveness.LivenessCheck from the first matching frame on

    def expired(self, now: float) -> bool:
        return self.started is not None and now - self.started > self.timeout

    def live(self) -> Any:
        """The liveness.LivenessResult so far, or None when this decision has no liveness check."""
        if self.liveness_mode is None:
            return None
        if self.liveness is None:
            return LivenessCheck(self.liveness_mode).verdict()
        return self.liveness.verdict()

    def liveness_word(self) -> str | None:
        """The liveness result as the audit log shows it, with the frames' mean P(real) when one was scored:
        "live(0.97)", "not_live:spoof(0.12)", "off" (an admin sees how near the line their camera puts them)."""
        result = self.live()
        if result is None:
            return None
        if result.reason == "off":
            return "off"
        word = "live" if result.live else f"not_live:{result.reason}"
        real = result.scores.get("real")
        return word if real is None else f"{word}({real:.2f})"

    def _see_live(self, frame: Any, face: Any) -> None:
        if self.liveness_mode is None or frame is None or face is None:
            return
        if self.liveness is None:
            self.liveness = LivenessCheck(self.liveness_mode, self.liveness_model)
        self.liveness.add(frame, face)

    def observe(self, score: float | None, reason: str | None, now: float, frame: Any = None,
                face: Any = None) -> Verdict | None:
        """Count one frame (score None = no usable face, with ``reason``); the verdict once decided.

        ``frame`` (BGR array) and ``face`` (faces.Face) feed the liveness check; without them a
        frame gives liveness no evidence.
        """
        if self.verdict is not None:
            return self.verdict
        if self.started is None:
            self.started = now
        if self.expired(now):
            return self.finish(now, "time is up")
        self.frames += 1
        self.last_reason = reason
        if score is not None:
            self.faces += 1
            self.best = score if self.best is None else max(self.best, score)
            if score >= self.threshold:
                self.matches += 1
                self._see_live(frame, face)
        live = self.live() if self.matches >= self.min_matching_frames else None
        if self.matches >= self.min_matching_frames and (live is None or live.live):
            self.verdict = Verdict("match", self.best, self.frames, None, self.liveness_word(), self.matches)
        elif self.frames >= self.max_frames:
            return self.finish(now, f"{self.max_frames} frames seen")
        elif self.expired(now):
            return self.finish(now, "time is up")
        return self.verdict

    def finish(self, now: float, why: str | None = None) -> Verdict:
        """End the session without further frames; the verdict from what was seen."""
        if self.verdict is not None:
            return self.verdict
        if self.frames == 0:
            result = "timeout"
        elif self.faces == 0:
            result = "no_face"
            why = self.last_reason or why
        elif self.matches >= self.min_matching_frames:  # only liveness can have held the match back
            result = "not_live"
            live = self.live()
            why = f"liveness {live.reason}: {live.message}"
        else:
            result = "no_match"
        self.verdict = Verdict(result, self.best, self.frames, why, self.liveness_word(), self.matches)
        return self.verdict

    def progress(self) -> dict[str, Any]:
        return {"frames": self.frames, "faces": self.faces, "matches": self.matches, "reason": self.last_reason}


def verdict_fields(verdict: Verdict, uid: int) -> dict[str, Any]:
    """The verdict as sent to a peer of ``uid``: no similarity score for a non-root one.

    A process running as the user could otherwise climb the score with a
    printed face, frame by frame, against that user's own templates; the
    root helper and the admin CLI keep it (the audit log always has it).
    """
    fields = verdict.fields()
    if uid != 0:
        fields["score"] = None
    else:  # the root helper hands a sealed keyring password on only after a live face (common.sealed)
        fields["liveness"] = verdict.liveness.split("(", 1)[0] if verdict.liveness else verdict.liveness
    return fields
