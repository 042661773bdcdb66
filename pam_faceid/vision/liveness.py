"""Liveness: is the face in front of the camera a live head, or a picture of one?

A photo, printed or on a screen, is flat. When it moves, every point on it
moves by one homography (the image of a plane under any pose change), while a
real head is 3-D: as it turns even a degree or two, the nose, cheeks and face
outline slide against each other (parallax) in a way no homography explains.
So the main signal tracks up to 60 corner points on the face from frame to frame
(pyramidal Lucas-Kanade with a forward-backward check, precise to ~0.1 px,
where the detector's five landmarks jitter by several pixels) and measures how
far they are from the best homography fitted to them. Two cheaper, direct
spoof cues refuse on their own: screen moire (isolated peaks in the face
region's spectrum, in luminance or colour) and glare (a large saturated patch
on the face). With an infrared camera a screen shows nothing and most prints
show little, so a face region that is dark or flat in IR is refused.

``basic`` needs a few frames in which the tracked face shows 3-D motion;
``strict`` needs more frames, more 3-D motion and, in addition, a blink (the
eye regions change while the rest of the registered face does not).

What this cannot stop, and does not claim to:
- a video of the person (their head moving, blinking) replayed on a screen,
  unless the screen shows moire: the motion in the video is genuinely 3-D;
- a 3-D mask or a head model; a print bent into a curve and swung: its
  motion is genuinely non-planar, so ``basic`` accepts most of them (only
  ``strict``'s blink requirement stops them);
- a person who holds perfectly still is refused like a photo (the password
  prompt follows; moving the head a little avoids it), and a face whose frames
  jump (frames skipped, detector lost) gives no evidence until it is tracked
  again.
All numbers are measured on synthetic sessions built from still photographs
(``bench/spoof_set.py``, ``bench/liveness.py``), not on video of live people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .faces import Face

MODES = ("off", "basic", "strict")

REASONS = {
    "off": "liveness check is off",
    "live": "3-D face motion seen",
    "too_few_frames": "not enough frames yet",
    "flat_motion": "no 3-D motion: the face moved like a flat picture, or not at all",
    "no_blink": "no blink seen (strict mode)",
    "moire": "screen pattern (moire) on the face",
    "glare": "glare patch on the face, as from a glossy print or screen",
    "ir_flat": "face region dark or flat in infrared, as a screen or print shows",
}


@dataclass(frozen=True)
class Policy:
    """The thresholds of one mode (set on the train/celeba tuning split with bench/liveness.py --scores)."""

    min_frames: int
    depth: float  # parallax field RMS, in inter-ocular distances, for a frame to count as 3-D evidence
    depth_ratio: float  # ... and that field against the tracking noise it does not explain
    depth_frames: int  # evidence frames needed within one tracked segment
    blink: float | None  # eye change beyond the rest of the face needed; None = no blink needed
    moire: float = 1.35  # median over frames of the spectral peak prominence (natural log units)
    glare: float = 0.04  # median over frames of the largest saturated blob, as a fraction of the face box
    ir_mean: float = 20.0  # grey levels: a face lit by the camera's IR emitter is brighter than this
    ir_std: float = 12.0  # grey levels: and has at least this much contrast


POLICIES = {
    "basic": Policy(min_frames=3, depth=0.0035, depth_ratio=1.4, depth_frames=2, blink=None),
    "strict": Policy(min_frames=8, depth=0.005, depth_ratio=1.6, depth_frames=3, blink=0.15),
}


@dataclass(frozen=True)
class LivenessResult:
    live: bool
    reason: str  # a key of REASONS
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def message(self) -> str:
        return REASONS.get(self.reason, self.reason)


# ---------------------------------------------------------------- per-frame cues

_WIN = 64
_HANN = np.outer(np.hanning(_WIN), np.hanning(_WIN)).astype(np.float32)
_KY, _KX = np.meshgrid(np.fft.fftfreq(_WIN) * _WIN, np.fft.fftfreq(_WIN) * _WIN, indexing="ij")
# Mid to high frequencies, minus JPEG's 8-pixel block grid (every webcam's MJPEG has it).
_BAND = ((np.hypot(_KX, _KY) >= 5) & (np.hypot(_KX, _KY) <= 28)
         & (np.mod(_KX, 8) != 0) & (np.mod(_KY, 8) != 0))


def _peak_prominence(patch: np.ndarray) -> float:
    """How far the strongest few spectral peaks rise above their neighbourhood (log units).

    Skin, hair and noise have smooth spectra; a screen's pixel grid aliased by
    the sensor puts energy into a few isolated frequencies.
    """
    p = patch.astype(np.float32)
    p = (p - p.mean()) * _HANN
    log_mag = np.log(np.abs(np.fft.fft2(p)) + 1e-3).astype(np.float32)
    shifted = np.fft.fftshift(log_mag)
    background = np.fft.ifftshift(cv2.medianBlur(shifted, 5))
    prominence = (log_mag - background)[_BAND]
    top = np.partition(prominence, prominence.size - 8)[-8:]
    return float(top.mean())


def moire_score(frame: np.ndarray, face: Face, colour: bool = True) -> float:
    """Spectral peak prominence of a 64x64 window at the face centre, worst of luminance and chroma."""
    h, w = frame.shape[:2]
    if h < _WIN or w < _WIN:
        return 0.0
    cx, cy = face.landmarks.mean(axis=0)
    x0 = int(min(max(round(cx - _WIN / 2), 0), w - _WIN))
    y0 = int(min(max(round(cy - _WIN / 2), 0), h - _WIN))
    patch = frame[y0:y0 + _WIN, x0:x0 + _WIN]
    if patch.ndim == 2:
        return _peak_prominence(patch)
    if not colour:
        return _peak_prominence(cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY))
    ycc = cv2.cvtColor(patch, cv2.COLOR_BGR2YCrCb)
    return max(_peak_prominence(ycc[..., c]) for c in range(3))


def _box_region(image: np.ndarray, face: Face, shrink: float = 0.0) -> np.ndarray:
    x, y, w, h = (float(v) for v in face.box)
    x0, y0 = int(max(x + shrink * w, 0)), int(max(y + shrink * h, 0))
    x1, y1 = int(min(x + (1 - shrink) * w, image.shape[1])), int(min(y + (1 - shrink) * h, image.shape[0]))
    return image[y0:max(y1, y0), x0:max(x1, x0)]


def glare_score(frame: np.ndarray, face: Face) -> float:
    """Largest connected saturated patch (all channels >= 250) as a fraction of the face box."""
    region = _box_region(frame, face)
    if region.size == 0:
        return 0.0
    saturated = (region.min(axis=2) if region.ndim == 3 else region) >= 250
    if not saturated.any():
        return 0.0
    count, _, stats, _ = cv2.connectedComponentsWithStats(saturated.astype(np.uint8), connectivity=8)
    return float(stats[1:, cv2.CC_STAT_AREA].max()) / saturated.size if count > 1 else 0.0


def looks_infrared(frame: np.ndarray) -> bool:
    """True for a frame from an IR camera: single channel, or three equal ones (a grey frame survives JPEG exactly).

    No colour camera gives equal channels (Bayer noise and white balance differ per channel), and on
    a grey frame the colour cue has nothing to measure, so the camera kind needs no configuration.
    """
    if frame.ndim == 2 or frame.shape[2] == 1:
        return True
    sample = frame[::4, ::4].astype(np.int16)
    return int(np.abs(sample[..., 0] - sample[..., 1]).max(initial=0)) <= 2 and \
        int(np.abs(sample[..., 1] - sample[..., 2]).max(initial=0)) <= 2


def _grey(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


# ---------------------------------------------------------------- tracking

TRACK_FACE_WIDTH = 200.0
"""Faces wider than this (pixels) are tracked in a downscaled frame: the cost stays flat when the face is
close, and LK's window sees the same facial detail as at the sizes the thresholds were set on (130-210 px)."""


def _scale_face(face: Face, scale: float) -> Face:
    return Face(box=face.box * scale, landmarks=face.landmarks * scale, score=face.score)


def _rescaled(grey: np.ndarray, face: Face, scale: float) -> tuple[np.ndarray, Face]:
    if scale >= 1.0:
        return grey, face
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA), _scale_face(face, scale)

_LK = dict(winSize=(13, 13), maxLevel=3,
           criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float32) - a.mean()
    b = b.astype(np.float32) - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 1e-6 else 1.0


def _highpass(grey: np.ndarray) -> np.ndarray:
    """Detail only, as 8-bit: smooth shading and soft glare drop out, so points track texture, not light."""
    blur = cv2.blur(cv2.blur(grey, (7, 7)), (7, 7))
    return cv2.addWeighted(grey, 2.0, blur, -2.0, 128.0)


def _bandpass(grey: np.ndarray) -> np.ndarray:
    """Facial structure without sensor noise or shading, for comparing consecutive frames."""
    fine = cv2.GaussianBlur(grey, (0, 0), 1.5).astype(np.float32)
    return fine - cv2.blur(cv2.blur(fine, (13, 13)), (13, 13))


def _block_ncc(a: np.ndarray, b: np.ndarray, grid: int = 4) -> float:
    """Median NCC over a grid of blocks: a blink or a glint changes a block or two, another photo changes all."""
    h, w = (a.shape[0] // grid) * grid, (a.shape[1] // grid) * grid
    if h < grid * 4 or w < grid * 4:
        return 1.0

    def blocks(x: np.ndarray) -> np.ndarray:
        x = x[:h, :w].reshape(grid, h // grid, grid, w // grid).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
        return x - x.mean(axis=1, keepdims=True)

    ba, bb = blocks(a), blocks(b)
    den = np.sqrt((ba * ba).sum(axis=1) * (bb * bb).sum(axis=1))
    ncc = (ba * bb).sum(axis=1) / np.maximum(den, 1e-6)
    return float(np.median(ncc))


def _quadratic_field(points: np.ndarray, residual: np.ndarray, scale: float) -> tuple[float, float]:
    """Fit a smooth (quadratic) 2-D field to the residual motion, robustly.

    A turning head leaves a smooth parallax field (depth varies smoothly over
    the face); tracking noise is independent from point to point. Returns the
    field's RMS and its ratio to the typical size of what it does not explain.
    """
    x = (points - points.mean(axis=0)) / scale
    design = np.c_[np.ones(len(x)), x, x[:, 0] ** 2, x[:, 0] * x[:, 1], x[:, 1] ** 2]
    weight = np.ones(len(x))
    for _ in range(3):  # iteratively reweighted least squares: a few bad tracks do not make a field
        weighted = design * weight[:, None]
        coef = np.linalg.solve(weighted.T @ design + 1e-9 * np.eye(6), weighted.T @ residual)
        err = np.sqrt(((residual - design @ coef) ** 2).sum(axis=1))
        spread = 1.4826 * float(np.median(err)) + 1e-6
        weight = np.minimum(1.0, 2.0 * spread / np.maximum(err, 1e-9))
    fitted = design @ coef
    field_rms = float(np.sqrt((fitted ** 2).sum(axis=1).mean()))
    return field_rms, field_rms / (float(np.median(err)) + 1e-3)


def _mask_straight_edges(crop: np.ndarray, mask: np.ndarray, iod: float, band: float) -> None:
    """Clear ``mask`` along long straight edges: the border of a print or screen held close to the face.

    Points there track the room behind the border as much as the picture, and a picture moving against
    a still room is parallax too. A face has no straight edge nearly as long as its eyes are apart.
    """
    edges = cv2.Canny(cv2.GaussianBlur(crop, (5, 5), 0), 40, 120)
    lines = cv2.HoughLinesP(edges, 1, math.pi / 180, threshold=max(int(0.4 * iod), 10),
                            minLineLength=max(int(0.8 * iod), 10), maxLineGap=max(int(0.15 * iod), 2))
    if lines is None:
        return
    width = max(int(2 * band * iod), 3)
    for x0, y0, x1, y1 in lines.reshape(-1, 4):
        cv2.line(mask, (int(x0), int(y0)), (int(x1), int(y1)), 0, width)


class _Segment:
    """Points tracked against one reference frame; a new segment starts whenever tracking breaks.

    Each frame is first warped back onto the reference with the previous
    frame's homography (plane + parallax registration), so what the tracker
    still has to find is small: the frame-to-frame change and, for a head, the
    parallax. Matching always against the reference keeps error from
    accumulating, and matching nearly undistorted patches keeps the tracker
    unbiased when a photo is tilted.
    """

    MIN_POINTS = 12
    MASK = (0.95, 1.2)  # half-axes of the inner-face ellipse points are taken from, in inter-ocular distances
    EDGE_BAND = 0.15  # no points this close (IODs) to a long straight edge: a print's or screen's border
    MIN_CONTINUITY = 0.5  # band-passed NCC with the previous frame; a different photo falls far below

    def __init__(self, grey: np.ndarray, face: Face, scale: float = 1.0):
        self.scale = scale  # frames are resized by this before tracking (see LivenessCheck.add)
        self.ref_grey = grey
        self.ref_face = face
        self.iod = max(float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])), 1.0)
        x, y, w, h = (float(v) for v in face.box)
        height, width = grey.shape[:2]
        self.roi = (int(max(x - 0.1 * w, 0)), int(max(y - 0.1 * h, 0)),
                    int(min(x + 1.1 * w, width)), int(min(y + 1.1 * h, height)))
        x0, y0, x1, y1 = self.roi
        if x1 - x0 < 24 or y1 - y0 < 24:  # a box at or beyond the frame edge: nothing to track
            self.roi = x0, y0, x1, y1 = 0, 0, min(width, 24), min(height, 24)
        crop = grey[y0:y1, x0:x1]
        self.ref_hp = _highpass(crop)
        self.ref_light = cv2.blur(crop, (15, 15))
        # Inner face only (brows to chin, cheek to cheek): a print's edge against the room, or hair against
        # the background, is real parallax too, and would make a photo held up to the camera look 3-D.
        lm = face.landmarks
        eyes = lm[1] - lm[0]
        centre = lm.mean(axis=0) - np.array([x0, y0])
        mask = np.zeros(crop.shape, np.uint8)
        axes = (max(int(self.MASK[0] * self.iod), 1), max(int(self.MASK[1] * self.iod), 1))
        cv2.ellipse(mask, (int(centre[0]), int(centre[1])), axes,
                    math.degrees(math.atan2(eyes[1], eyes[0])), 0, 360, 255, -1)
        mask[cv2.dilate(crop, np.ones((9, 9), np.uint8)) >= 250] = 0  # nothing near glare
        if self.EDGE_BAND > 0:
            _mask_straight_edges(crop, mask, self.iod, self.EDGE_BAND)
        corners = None
        if crop.shape[0] >= 24 and crop.shape[1] >= 24:
            corners = cv2.goodFeaturesToTrack(crop, maxCorners=60, qualityLevel=0.01,
                                              minDistance=max(3.0, self.iod / 12), mask=mask, blockSize=5)
        self.ref_pts = corners.reshape(-1, 2).astype(np.float32) if corners is not None else np.empty((0, 2), np.float32)
        self.to_full = np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
        self.matrix = self.to_full.copy()  # reference ROI -> current frame, full-frame pixels
        self.prev_face = face
        self.prev_band = _bandpass(crop)
        self.last: tuple[float, float] = (0.0, 0.0)
        self.continuity = 1.0

    @property
    def usable(self) -> bool:
        return len(self.ref_pts) >= self.MIN_POINTS

    def track(self, grey: np.ndarray, face: Face) -> bool:
        """Register ``grey`` to the reference; False when tracking broke (then a new segment is due)."""
        self.continuity = float("nan")
        if not self.usable or grey.shape != self.ref_grey.shape:
            return False
        jump = float(np.linalg.norm(face.landmarks.mean(axis=0) - self.prev_face.landmarks.mean(axis=0)))
        if jump > 0.8 * self.iod:
            return False
        size = self.ref_hp.shape[::-1]
        warped = cv2.warpPerspective(grey, self.matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE)
        warped_hp = _highpass(warped)
        ref = self.ref_pts.reshape(-1, 1, 2)
        found, ok, _ = cv2.calcOpticalFlowPyrLK(self.ref_hp, warped_hp, ref, None, **_LK)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(warped_hp, self.ref_hp, found, ref.copy(),
                                                    flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **_LK)
        fb = np.linalg.norm((back - ref).reshape(-1, 2), axis=1)
        flat = found.reshape(-1, 2)
        inside = np.all((flat >= 0) & (flat < np.array(size) - 1), axis=1)
        cols = np.clip(flat[:, 0], 0, size[0] - 1).astype(int)
        rows = np.clip(flat[:, 1], 0, size[1] - 1).astype(int)
        # A highlight sliding over a print drags points with it: drop points that are saturated or that
        # brightened far more than the face as a whole (exposure changes move everything together).
        unsaturated = warped[rows, cols] < 240
        ref_cols, ref_rows = self.ref_pts[:, 0].astype(int), self.ref_pts[:, 1].astype(int)
        lift = cv2.blur(warped, (15, 15))[rows, cols].astype(np.float32) - self.ref_light[ref_rows, ref_cols]
        unlit = lift - np.median(lift) < 20
        keep = (ok.ravel() == 1) & (ok_back.ravel() == 1) & (fb < 0.5) & inside & unsaturated & unlit
        if keep.sum() < max(self.MIN_POINTS, 0.5 * len(ref)):
            return False
        found = flat
        delta, _ = cv2.findHomography(self.ref_pts[keep], found[keep], 0)
        if delta is None:
            return False
        matrix = self.matrix @ delta
        registered = cv2.warpPerspective(grey, matrix, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                         borderMode=cv2.BORDER_REPLICATE)
        band = _bandpass(registered)
        self.continuity = _block_ncc(band, self.prev_band)
        if self.continuity < self.MIN_CONTINUITY:
            return False
        self.ref_pts = self.ref_pts[keep]
        found = found[keep]
        mapped = cv2.perspectiveTransform(self.ref_pts.reshape(-1, 1, 2).astype(np.float64), delta).reshape(-1, 2)
        field, ratio = _quadratic_field(self.ref_pts, found - mapped, self.iod)
        self.last = (field / self.iod, ratio)
        self.matrix = matrix
        self.prev_face = face
        self.prev_band = band
        return True

    def homography(self) -> np.ndarray:
        """Reference frame to current frame, full-frame pixels."""
        return self.matrix @ np.linalg.inv(self.to_full)

    def eye_change(self, grey: np.ndarray, matrix: np.ndarray) -> float:
        """How much more the eyes changed than the nose bridge and cheeks, after registration (0 = no blink).

        The current frame is warped back onto the reference with the tracked
        homography; 1 - NCC of each eye patch is compared with that of control
        patches that a blink leaves alone.
        """
        try:
            back = np.linalg.inv(matrix)
        except np.linalg.LinAlgError:
            return 0.0
        lm = self.ref_face.landmarks
        half = max(int(0.22 * self.iod), 4)
        eye_h = max(int(0.14 * self.iod), 3)

        def patch(image: np.ndarray, centre: np.ndarray, warp: np.ndarray | None) -> np.ndarray:
            shift = np.array([[1, 0, half - centre[0]], [0, 1, eye_h - centre[1]], [0, 0, 1]])
            full = shift if warp is None else shift @ warp
            return cv2.warpPerspective(image, full, (2 * half + 1, 2 * eye_h + 1), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)

        eyes = [lm[0], lm[1]]
        down = (lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2
        controls = [lm[0] + 0.45 * down, lm[1] + 0.45 * down, (lm[0] + lm[1]) / 2 + 0.1 * down]
        eye = [1 - _ncc(patch(self.ref_grey, c, None), patch(grey, c, back)) for c in eyes]
        control = [1 - _ncc(patch(self.ref_grey, c, None), patch(grey, c, back)) for c in controls]
        return float(min(eye) - max(control))


# ---------------------------------------------------------------- the check


class LivenessCheck:
    """Liveness evidence gathered over one authentication session.

    Call ``add`` for every frame in which a face was found, in order, and
    ``verdict`` whenever a decision is wanted: it is cheap and may be called
    after every frame (3-D evidence only accumulates, so a daemon can stop at
    the first live verdict). Mode ``off`` is always live. ``ir=True`` is for
    infrared cameras (greyscale frames): the colour cue is skipped and a face
    region that is dark or flat is refused.
    """

    def __init__(self, mode: str = "basic", ir: bool = False):
        if mode not in MODES:
            raise ValueError(f"liveness mode {mode!r}: choose one of {', '.join(MODES)}")
        self.mode = mode
        self.ir = ir
        self.policy = POLICIES.get(mode)
        self.frames = 0
        self.segments = 0
        self.tracked = 0
        self.best_run = 0  # most 3-D evidence frames within one tracked segment
        self.parallax = 0.0
        self.parallax_ratio = 0.0
        self.blink = 0.0
        self.moire: list[float] = []
        self.glare: list[float] = []
        self.ir_level: list[tuple[float, float]] = []
        self._segment: _Segment | None = None
        self._run = 0

    def add(self, frame: np.ndarray, face: Face) -> None:
        """Take one frame (BGR, or greyscale for IR) and the face the detector found in it."""
        self.frames += 1
        if self.policy is None:
            return
        grey = _grey(frame)
        self.moire.append(moire_score(frame, face, colour=not self.ir))
        self.glare.append(glare_score(frame, face))
        if self.ir:
            region = _box_region(grey, face, shrink=0.15)
            self.ir_level.append((float(region.mean()), float(region.std())) if region.size else (0.0, 0.0))
        segment = self._segment
        if segment is not None:
            scaled, scaled_face = _rescaled(grey, face, segment.scale)
            if segment.track(scaled, scaled_face):
                self.tracked += 1
                field, ratio = segment.last
                self.parallax = max(self.parallax, field)
                self.parallax_ratio = max(self.parallax_ratio, ratio)
                if field >= self.policy.depth and ratio >= self.policy.depth_ratio:
                    self._run += 1
                    self.best_run = max(self.best_run, self._run)
                if self.policy.blink is not None:
                    self.blink = max(self.blink, segment.eye_change(scaled, segment.homography()))
                return
        scale = min(1.0, TRACK_FACE_WIDTH / max(float(face.box[2]), 1.0))
        self._segment = _Segment(*_rescaled(grey, face, scale), scale)
        self.segments += 1
        self._run = 0

    def scores(self) -> dict[str, float]:
        """The numbers behind the verdict, for the audit log and the benchmark."""
        out = {"frames": self.frames, "segments": self.segments, "tracked": self.tracked,
               "motion_frames": self.best_run, "parallax": self.parallax, "parallax_ratio": self.parallax_ratio,
               "moire": float(np.median(self.moire)) if self.moire else 0.0,
               "glare": float(np.median(self.glare)) if self.glare else 0.0}
        if self.policy is not None and self.policy.blink is not None:
            out["blink"] = self.blink
        if self.ir:
            level = np.median(np.array(self.ir_level), axis=0) if self.ir_level else (0.0, 0.0)
            out["ir_mean"], out["ir_std"] = float(level[0]), float(level[1])
        return {k: round(float(v), 4) for k, v in out.items()}

    def verdict(self) -> LivenessResult:
        """Live or not, with the reason (a key of REASONS) and the scores.

        Direct spoof cues (IR flatness, moire, glare) refuse first; then the
        session needs enough frames and, within one tracked stretch, enough
        frames whose motion no plane explains; strict mode also needs a blink.
        """
        if self.policy is None:
            return LivenessResult(True, "off", {"frames": float(self.frames)})
        policy = self.policy
        scores = self.scores()
        if self.ir and self.ir_level and (scores["ir_mean"] < policy.ir_mean or scores["ir_std"] < policy.ir_std):
            return LivenessResult(False, "ir_flat", scores)
        if self.moire and scores["moire"] >= policy.moire:
            return LivenessResult(False, "moire", scores)
        if self.glare and scores["glare"] >= policy.glare:
            return LivenessResult(False, "glare", scores)
        if self.frames < policy.min_frames:
            return LivenessResult(False, "too_few_frames", scores)
        if self.best_run < policy.depth_frames:
            return LivenessResult(False, "flat_motion", scores)
        if policy.blink is not None and self.blink < policy.blink:
            return LivenessResult(False, "no_blink", scores)
        return LivenessResult(True, "live", scores)
