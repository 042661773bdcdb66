"""The per-user operating point: the one function that turns a user's templates into the threshold a login uses.

Why per user: the shipped threshold was fit on web photos (dev/lfw), where two
people rarely share a camera, a light and a pose. At a real machine the
impostor is a colleague in front of the same webcam, and everyone's vectors
move together with the camera and the room: impostors score higher, and so do
the user's own frames. The templates tell which case a user is in: photos
taken in one session, with one camera, are far more alike (leave-one-out
similarity about 0.98 on train/yaleb) than photos from the web (about 0.957 on
dev/lfw). A user whose templates are that alike can afford a higher threshold
(their own frames score as high), and needs one (so do the people in the same
room). The threshold rises with the templates' likeness, and the negative bank
adds a floor: at most ``far`` of its faces may pass.

Bounds, so a crafted enrolment cannot lower anyone's bar: the result is never
below the global threshold (the shipped or configured one), whatever the
templates or the bank hold, and never above ``RULE.cap`` (a user is never
locked out by arithmetic: the password is always there, and `faceid status`
shows the value). Enrolment is root-only; the worst a hostile set of
enrolment images can do is raise its own user's threshold.

``fit`` is what `faceid enroll` stores, `faceid calibrate` refits, `faceid
evaluate --enroll K` applies to every enrolled identity, and faceidd reads
(through ``effective``), so the enrol protocol measures what a login does.
numpy only: the daemon imports it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from typing import Any

import numpy as np

RULE_NAME = "likeness-v1"


@dataclasses.dataclass(frozen=True)
class Rule:
    """threshold = min(max(global + slope * (likeness - knee), bank's FAR threshold, global), cap), never below global.

    ``likeness`` is the mean over templates of the best similarity to another
    template (leave one out). slope and knee were fit on train/yaleb's
    yaleB01..yaleB20 (same camera) and train/lfw (web photos), never on the
    held-out yaleB21..yaleB39 nor on dev/ (docs/same-camera.md has the fit).
    The raise starts from the global threshold, so a model with another
    threshold (or an admin's auth.threshold) moves every point with it.
    """

    slope: float = 1.5
    knee: float = 0.97
    cap: float = 0.96
    far: float = 1e-3


RULE = Rule()


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A user's threshold and how it was reached (stored with the enrolment, shown by status and list)."""

    threshold: float
    global_threshold: float
    likeness: float | None
    bank_threshold: float | None
    bank_faces: int
    templates: int
    rule: str = RULE_NAME
    far: float = RULE.far
    fitted: str = ""
    bank_source: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> "OperatingPoint | None":
        """The stored point, or None when it is missing or malformed (the global threshold then applies)."""
        if not isinstance(obj, dict):
            return None
        try:
            point = cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name in obj})
        except TypeError:
            return None
        numbers = (point.threshold, point.global_threshold)
        if not all(isinstance(x, (int, float)) and math.isfinite(x) and -1 <= x <= 1 for x in numbers):
            return None
        return point

    def line(self) -> str:
        """One line for `faceid status` / `faceid list`."""
        like = "-" if self.likeness is None else f"{self.likeness:.3f}"
        bank = "-" if self.bank_threshold is None else f"{self.bank_threshold:.4f}"
        return (f"threshold {self.threshold:.4f} (global {self.global_threshold:.4f}; {self.rule}: template "
                f"likeness {like} over {self.templates}, bank FAR-{self.far:g} threshold {bank} over "
                f"{self.bank_faces} faces{'; fitted ' + self.fitted if self.fitted else ''})")


def likeness(templates: np.ndarray) -> float | None:
    """Mean leave-one-out best similarity among the templates; None for fewer than two."""
    t = np.asarray(templates, np.float32)
    if len(t) < 2:
        return None
    sims = t @ t.T
    np.fill_diagonal(sims, -np.inf)
    return float(np.mean(sims.max(axis=1)))


def bank_threshold(templates: np.ndarray, bank: np.ndarray | None, far: float) -> float | None:
    """Lowest threshold at which at most ``far`` of the bank's faces match the templates (metrics' definition)."""
    if bank is None or not len(bank) or not len(templates):
        return None
    scores = np.sort((np.asarray(bank, np.float32) @ np.asarray(templates, np.float32).T).max(axis=1))[::-1]
    allowed = int(math.floor(far * len(scores) + 1e-9))
    return float(np.nextafter(scores[min(allowed, len(scores) - 1)], np.inf))


def fit(templates: np.ndarray, bank: np.ndarray | None, global_threshold: float, rule: Rule = RULE,
        bank_source: str = "") -> OperatingPoint:
    """The user's operating point from their templates ([N,D] unit vectors) and the negative bank ([M,D] or None)."""
    base = float(global_threshold)
    like = likeness(templates)
    raised = base if like is None else base + rule.slope * (like - rule.knee)
    from_bank = bank_threshold(templates, bank, rule.far)
    chosen = max(raised, from_bank if from_bank is not None else base)
    threshold = float(min(max(chosen, base), max(rule.cap, base)))
    return OperatingPoint(threshold=threshold, global_threshold=base, likeness=like,
                          bank_threshold=from_bank, bank_faces=0 if bank is None else len(bank),
                          templates=len(templates), rule=RULE_NAME, far=rule.far,
                          fitted=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                          bank_source=bank_source)


def effective(point: OperatingPoint | None, global_threshold: float) -> float:
    """The threshold a login uses: the stored point, never below the global threshold (whatever the file says)."""
    if point is None:
        return float(global_threshold)
    return max(float(point.threshold), float(global_threshold))

