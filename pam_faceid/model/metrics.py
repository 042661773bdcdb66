"""The one definition of "threshold at FAR" and "TAR at FAR" (numpy only).

A score is accepted when ``score >= threshold``. For a target false-accept
rate f over n impostor scores:

- threshold at FAR f is the lowest threshold whose impostor acceptance rate
  is <= f. At most k = floor(f * n) impostors may be accepted, so with the
  impostor scores sorted high to low (s[0] >= s[1] >= ...) it is the smallest
  float64 above s[k]: every impostor tied with s[k] is refused too, so ties
  never push the rate over f. f * n is floored with a 1e-9 allowance so that
  0.29 * 100 counts as 29, not 28.999999999999996.
- TAR at FAR f is the share of genuine scores >= that threshold.

Fewer than 1/f impostors means k = 0: the threshold is just above the
highest impostor. With no impostor scores the FAR is undefined and these
raise ValueError; callers report "no figure" instead.
"""
from __future__ import annotations

import numpy as np

_FLOOR_SLACK = 1e-9


def allowed_impostors(far: float, impostors: int) -> int:
    """How many of ``impostors`` scores may be accepted at FAR ``far``: floor(far * n)."""
    if not 0 <= far < 1:
        raise ValueError(f"FAR {far} is not in [0, 1)")
    return int(np.floor(far * impostors + _FLOOR_SLACK))


def threshold_at_far(impostor: np.ndarray, far: float, *, count: int | None = None) -> float:
    """Lowest threshold t with share(impostor >= t) <= ``far`` (see the module docstring).

    ``count`` is the number of impostor scores when ``impostor`` holds only the
    highest of them (enough when it has more than floor(far * count)): an
    evaluation with millions of impostors keeps just those.
    """
    scores = np.asarray(impostor, dtype=np.float64).ravel()
    count = scores.size if count is None else count
    if count == 0:
        raise ValueError("no impostor scores: FAR is undefined")
    k = allowed_impostors(far, count)
    if k >= scores.size:
        raise ValueError(f"{scores.size} highest of {count} impostor scores cannot give FAR {far:g}")
    kth_highest = np.partition(scores, scores.size - 1 - k)[scores.size - 1 - k]
    return float(np.nextafter(kth_highest, np.inf))


def acceptance(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` accepted at ``threshold`` (score >= threshold); 0.0 for no scores."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(np.mean(scores >= threshold)) if scores.size else 0.0


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """Genuine acceptance at ``threshold_at_far(impostor, far)``."""
    return acceptance(genuine, threshold_at_far(impostor, far))


def rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold``; each is 0.0 when its side has no scores."""
    frr = 1.0 - acceptance(genuine, threshold) if np.size(genuine) else 0.0
    return acceptance(impostor, threshold), frr


def far_key(far: float) -> str:
    """The report key for TAR at ``far``: 1e-3 -> 'tar_at_far_1e-3'."""
    return f"tar_at_far_{far:.0e}".replace("e-0", "e-")


def round_up(threshold: float, digits: int = 4) -> float:
    """``threshold`` rounded up to ``digits`` decimals, for config files: rounding down could accept
    the impostor the threshold was chosen to refuse."""
    step = 10.0 ** -digits
    value = round(np.ceil(threshold / step) * step, digits)
    return value if value >= threshold else round(value + step, digits)
