"""Presentation-attack and genuine camera sessions rendered from real face photographs.

Used by bench/spoof_set.py (which writes whole sets
to disk for bench/liveness.py); no pytest here. Every session is a short
sequence of 640x480 camera frames, rendered through the same simulated webcam
(lens distortion, defocus, exposure flicker, Bayer mosaic with
signal-dependent sensor noise, white balance, MJPEG compression) so that the
camera itself is never what tells attacks from genuine sessions.

Attack kinds (one identity's photo(s) presented to the camera):
- ``photo_still``      one printed photo held by hand: tremor, sensor noise, small shifts and tilts.
- ``photo_moved``      one print moved about: rotation, scale change, perspective tilt, shifts.
- ``photo_bent``       one print bent into a cylinder and swung: the planar-motion test's hardest case.
- ``photo_glare``      one glossy print moved under a light: a saturated highlight slides over it.
- ``screen_still``     one photo on a phone/monitor: subpixel stripes aliased by the sensor (moire).
- ``slideshow_screen`` several photos of the person shown one after another on a screen.
- ``slideshow_print``  several printed photos of the person shown one after another.
- ``screen_video``     a video of the head turning and blinking, replayed on a screen.

Genuine kinds:
- ``genuine_head``     one real photo whose head turns by 1-6 degrees through a face-shaped depth
                       map, blinking in half the sessions: continuous motion, as a live person at a
                       webcam shows it. The nearest thing to a live session that photographs give.
- ``genuine_photos``   several real photos of the person, each for 3-5 frames with that head motion.
- ``genuine_still``    the Extended Yale B subjects (train/yaleb): one person at a fixed pose under a
                       slowly moving light source, the nearest thing to consecutive video frames of a
                       person holding still that ../shared/faces holds. A stress case, not a target.

Honest limitation: there is no video of live people here. ``genuine_photos`` jumps
between different photos, which no live person does within a second, and is built
like ``slideshow_print`` but for the print medium; a check tuned to tell "different
photos" from "same photo" would score perfectly here and fail in front of a real
camera, so thresholds are set from the attack side (the noise floor of a rigid
plane) and genuine figures are a stand-in, not a measurement on people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from pam_faceid.common.images import IMAGE_SUFFIXES, read_image

FRAME_W, FRAME_H = 640, 480
FOCAL = 600.0  # pixels: a 640x480 webcam with about 56 degrees horizontal field of view

ATTACK_KINDS = ("photo_still", "photo_moved", "photo_bent", "photo_glare", "screen_still",
                "slideshow_screen", "slideshow_print", "screen_video")
GENUINE_KINDS = ("genuine_head", "genuine_photos", "genuine_still")
KINDS = ATTACK_KINDS + GENUINE_KINDS


@dataclass
class Source:
    """One real photo with its face located once, so sessions can place the face where a camera would see it."""

    path: Path
    image: np.ndarray
    centre: np.ndarray  # face box centre, pixels
    width: float  # face box width, pixels
    landmarks: np.ndarray  # 5x2, as FaceDetector gives them


@dataclass
class Session:
    kind: str
    identity: str
    frames: list[np.ndarray]
    sources: list[str]
    jpeg_quality: int
    params: dict = field(default_factory=dict)

    @property
    def attack(self) -> bool:
        return self.kind in ATTACK_KINDS


# --------------------------------------------------------------------------- camera


class Camera:
    """A cheap webcam: one set of random imperfections per session, fresh noise per frame.

    Light goes through a soft lens with some radial distortion (so a moving
    flat photo is not exactly a homography), a Bayer colour filter,
    picks up signal-dependent sensor noise on the raw mosaic, is demosaiced
    and then JPEG-compressed (MJPEG), as in a real USB camera.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.read_noise = rng.uniform(1.5, 4.0)
        self.shot_gain = rng.uniform(0.02, 0.08)
        self.blur = rng.uniform(0.3, 0.8)
        self.jpeg_quality = int(rng.integers(75, 93))
        self.white_balance = rng.uniform(0.94, 1.06, size=3).astype(np.float32)
        self.exposure = rng.uniform(0.9, 1.1)
        k1 = rng.uniform(-0.08, 0.02)  # mostly barrel, as in cheap wide lenses
        gx, gy = np.meshgrid(np.arange(FRAME_W, dtype=np.float32), np.arange(FRAME_H, dtype=np.float32))
        nx, ny = (gx - FRAME_W / 2) / FOCAL, (gy - FRAME_H / 2) / FOCAL
        factor = 1 + k1 * (nx * nx + ny * ny)
        self.distortion = (FRAME_W / 2 + nx * factor * FOCAL, FRAME_H / 2 + ny * factor * FOCAL)

    def capture(self, scene: np.ndarray) -> np.ndarray:
        """A uint8 BGR frame of a float BGR scene (0-255)."""
        flicker = self.exposure * (1.0 + self.rng.normal(0.0, 0.015))
        scene = cv2.remap(scene.astype(np.float32), *self.distortion, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        image = cv2.GaussianBlur(scene, (0, 0), self.blur) * (flicker * self.white_balance)
        raw = np.empty(image.shape[:2], np.float32)
        raw[0::2, 0::2] = image[0::2, 0::2, 2]
        raw[0::2, 1::2] = image[0::2, 1::2, 1]
        raw[1::2, 0::2] = image[1::2, 0::2, 1]
        raw[1::2, 1::2] = image[1::2, 1::2, 0]
        sigma = np.sqrt(self.read_noise ** 2 + self.shot_gain * np.clip(raw, 0, 255))
        raw = raw + self.rng.standard_normal(raw.shape).astype(np.float32) * sigma
        raw8 = np.clip(raw + 0.5, 0, 255).astype(np.uint8)
        return cv2.cvtColor(raw8, cv2.COLOR_BayerBG2BGR)

    def encode(self, frame: np.ndarray) -> bytes:
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return data.tobytes()

    def roundtrip(self, frame: np.ndarray) -> np.ndarray:
        """The frame as an MJPEG camera delivers it."""
        return cv2.imdecode(np.frombuffer(self.encode(frame), np.uint8), cv2.IMREAD_COLOR)


def room(rng: np.random.Generator) -> np.ndarray:
    """A static synthetic room behind the subject (no faces in it, so the detector has one face to pick)."""
    base = rng.uniform(60, 200, size=3)
    low = cv2.resize(rng.normal(0, 25, size=(6, 8, 3)).astype(np.float32), (FRAME_W, FRAME_H),
                     interpolation=cv2.INTER_CUBIC)
    scene = np.clip(base + low, 0, 255).astype(np.float32)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, FRAME_W - 40)), int(rng.integers(0, FRAME_H - 40))
        x1, y1 = x0 + int(rng.integers(30, 260)), y0 + int(rng.integers(30, 200))
        cv2.rectangle(scene, (x0, y0), (x1, y1), tuple(float(c) for c in rng.uniform(20, 235, size=3)), -1)
    return cv2.GaussianBlur(scene, (0, 0), 2.0)


# --------------------------------------------------------------------------- geometry


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3-D rotation from angles in degrees (yaw about y, pitch about x, roll about the optical axis)."""
    y, p, r = np.radians([yaw, pitch, roll])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass
class Pose:
    """Where the presented medium is: angles in degrees, shift in pixels, distance as a scale factor."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


def project(points: np.ndarray, pose: Pose, texel: float) -> np.ndarray:
    """Image positions of medium points (N x 3, texture pixels, face centre at the origin)."""
    rot = rotation(pose.yaw, pose.pitch, pose.roll)
    cam = (points * texel) @ rot.T + np.array([pose.dx, pose.dy, FOCAL / pose.scale])
    return FOCAL * cam[:, :2] / cam[:, 2:3] + np.array([FRAME_W / 2, FRAME_H / 2])


def trajectory(rng: np.random.Generator, frames: int, amount: str) -> list[Pose]:
    """A hand holding a medium: ``hold`` = tremor about a fixed pose, ``move`` = a smooth sweep plus tremor."""
    base = Pose(yaw=rng.uniform(-10, 10), pitch=rng.uniform(-10, 10), roll=rng.uniform(-5, 5),
                dx=rng.uniform(-30, 30), dy=rng.uniform(-20, 20), scale=1.0)
    poses = []
    if amount == "hold":
        walk = np.cumsum(rng.normal(0, 1, size=(frames, 6)), axis=0)
        for w in walk:
            poses.append(Pose(base.yaw + 0.4 * w[0], base.pitch + 0.4 * w[1], base.roll + 0.3 * w[2],
                              base.dx + 1.5 * w[3], base.dy + 1.5 * w[4], 1.0 + 0.005 * w[5]))
        return poses
    amp = np.array([rng.uniform(5, 20), rng.uniform(5, 15), rng.uniform(2, 8), rng.uniform(5, 25),
                    rng.uniform(5, 20), rng.uniform(0.03, 0.12)])
    phase = rng.uniform(0, 2 * math.pi, size=6)
    speed = rng.uniform(0.3, 0.9, size=6)
    for t in range(frames):
        s = np.sin(speed * t + phase) * amp + rng.normal(0, 1, size=6) * np.array([0.4, 0.4, 0.3, 1.5, 1.5, 0.005])
        poses.append(Pose(base.yaw + s[0], base.pitch + s[1], base.roll + s[2], base.dx + s[3], base.dy + s[4],
                          1.0 + s[5]))
    return poses


# --------------------------------------------------------------------------- media


def print_medium(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo print: paper margin, lower contrast and saturation, fixed paper grain."""
    img = image.astype(np.float32)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + rng.uniform(0.75, 0.95) * (img - grey)
    img = rng.uniform(10, 30) + rng.uniform(0.8, 0.92) * img
    img += rng.normal(0, 1.5, size=img.shape[:2])[..., None].astype(np.float32)
    margin = int(0.06 * max(image.shape[:2]))
    return cv2.copyMakeBorder(np.clip(img, 0, 255), margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                              value=(235, 238, 240))


def screen_medium(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo shown on a screen: display gamma and tint, black bezel."""
    img = 255.0 * (image.astype(np.float32) / 255.0) ** rng.uniform(0.85, 1.15)
    img *= np.array([rng.uniform(1.0, 1.1), 1.0, rng.uniform(0.9, 1.0)], np.float32)
    margin = int(0.08 * max(image.shape[:2]))
    return cv2.copyMakeBorder(np.clip(img, 0, 255), margin, margin, margin, margin, cv2.BORDER_CONSTANT,
                              value=(8, 8, 8))


def medium_strips(texture: np.ndarray, centre: np.ndarray, bend_radius: float | None,
                  strips: int = 24) -> list[tuple[np.ndarray, np.ndarray]]:
    """The medium as planar strips (texture corners 4x2, surface corners 4x3); one strip when flat.

    A print bent around a vertical axis (radius in texels) is approximated by
    ``strips`` facets, each moved by its own homography.
    """
    h, w = texture.shape[:2]
    if bend_radius is None:
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
        return [(corners, np.c_[corners - centre, np.zeros(4)])]
    out = []
    edges = np.linspace(0, w, strips + 1)
    for u0, u1 in zip(edges[:-1], edges[1:]):
        tex = np.array([[u0, 0], [u1, 0], [u1, h], [u0, h]], np.float64)
        pts = []
        for u, v in tex:
            a = (u - centre[0]) / bend_radius
            pts.append([bend_radius * math.sin(a), v - centre[1], bend_radius * (1 - math.cos(a))])
        out.append((tex, np.array(pts)))
    return out


def render_medium(background: np.ndarray, texture: np.ndarray, centre: np.ndarray, texel: float, pose: Pose,
                  bend_radius: float | None = None) -> np.ndarray:
    """The room with a flat or bent medium held in it."""
    scene = background.copy()
    for tex, surf in medium_strips(texture, centre, bend_radius):
        img_pts = project(surf, pose, texel).astype(np.float32)
        hom = cv2.getPerspectiveTransform(tex.astype(np.float32), img_pts)
        warped = cv2.warpPerspective(texture, hom, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)
        mask = np.zeros((FRAME_H, FRAME_W), np.uint8)
        cv2.fillConvexPoly(mask, np.round(img_pts * 16).astype(np.int32), 255, cv2.LINE_AA, 4)
        alpha = (mask.astype(np.float32) / 255.0)[..., None]
        scene = scene * (1 - alpha) + warped * alpha
    return scene


def _stripes(coord: np.ndarray, freq: tuple[np.ndarray, np.ndarray], centre: float, duty: float, cutoff: float,
             harmonics: int = 5) -> np.ndarray:
    """A periodic bar pattern (period 1 in ``coord``) as the sensor integrates it.

    Each Fourier harmonic is attenuated by the lens (a cone MTF reaching zero at
    ``cutoff`` cycles per camera pixel, roughly a diffraction-limited lens) and
    by the pixel's box aperture, at the frequency it has on the sensor (``freq``
    = cycles per camera pixel along x and y for harmonic 1); sampling the result
    at pixel centres then aliases whatever survives, as a sensor does.
    """
    out = np.full(coord.shape, duty, np.float32)
    for k in range(1, harmonics + 1):
        fx, fy = k * freq[0], k * freq[1]
        lens = np.clip(1.0 - np.sqrt(fx * fx + fy * fy) / cutoff, 0.0, 1.0)
        gain = lens * np.sinc(fx) * np.sinc(fy)
        out += (2 * math.sin(math.pi * k * duty) / (math.pi * k)) * gain * np.cos(2 * math.pi * k * (coord - centre))
    return out


def render_screen(background: np.ndarray, texture: np.ndarray, centre: np.ndarray, texel: float, pose: Pose,
                  pitch: float, cutoff: float) -> np.ndarray:
    """The room with a screen in it whose RGB subpixel stripes reach the sensor as moire.

    ``pitch`` is one screen pixel's size in camera pixels (0.2-0.5 for a phone or
    laptop at arm's length, larger close up); ``cutoff`` is where the lens stops
    passing detail (cycles per camera pixel).
    How strong the moire is follows from those, not from a chosen overlay.
    """
    flat = medium_strips(texture, centre, None)[0]
    img_pts = project(flat[1], pose, texel).astype(np.float32)
    hom = cv2.getPerspectiveTransform(flat[0].astype(np.float32), img_pts)
    x0, y0 = np.floor(img_pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(img_pts.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, FRAME_W), min(y1, FRAME_H)
    scene = background.copy()
    if x1 <= x0 or y1 <= y0:
        return scene
    gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    inv = np.linalg.inv(hom)
    den = inv[2, 0] * gx + inv[2, 1] * gy + inv[2, 2]
    u = (inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]) / den
    v = (inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]) / den
    h, w = texture.shape[:2]
    inside = ((u >= 0) & (u < w) & (v >= 0) & (v < h)).astype(np.float32)
    colour = cv2.remap(texture, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT)
    per_texel = texel / pitch  # screen pixels per texture pixel
    su, sv = (u * per_texel).astype(np.float32), (v * per_texel).astype(np.float32)
    fu = np.gradient(su, axis=1), np.gradient(su, axis=0)
    fv = np.gradient(sv, axis=1), np.gradient(sv, axis=0)
    duty, rows = 1 / 3 - 0.06, 0.85
    row = _stripes(sv, fv, rows / 2, rows, cutoff)
    lit = np.empty_like(colour)
    for c, channel in enumerate((2, 1, 0)):  # R, G, B stripes left to right; the image is BGR
        lit[..., channel] = _stripes(su, fu, (c + 0.5) / 3, duty, cutoff) * row
    emitted = np.clip(colour * lit / (duty * rows), 0, 255)
    alpha = inside[..., None]
    scene[y0:y1, x0:x1] = scene[y0:y1, x0:x1] * (1 - alpha) + emitted * alpha
    return scene


def add_glare(scene: np.ndarray, centre: np.ndarray, radius: np.ndarray, strength: float, angle: float) -> np.ndarray:
    """A specular highlight: a bright elliptical patch that saturates the sensor."""
    yy, xx = np.mgrid[0:FRAME_H, 0:FRAME_W].astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = xx - centre[0], yy - centre[1]
    a = (c * dx + s * dy) / radius[0]
    b = (-s * dx + c * dy) / radius[1]
    blob = np.exp(-0.5 * (a * a + b * b) ** 1.5)
    return scene + strength * blob[..., None]


def render_live(background: np.ndarray, src: Source, target_width: float, angle: float, shift: np.ndarray) -> np.ndarray:
    """A photo standing in for the live scene: the face at the session's size, its edges faded into the room."""
    scale = target_width / src.width
    matrix = cv2.getRotationMatrix2D((float(src.centre[0]), float(src.centre[1])), angle, scale)
    matrix[:, 2] += np.array([FRAME_W / 2, FRAME_H / 2]) + shift - src.centre
    h, w = src.image.shape[:2]
    feather = max(2, int(0.12 * min(h, w)))
    ramp = np.minimum(np.arange(w)[None, :] + 1, np.arange(w)[::-1][None, :] + 1)
    ramp = np.minimum(ramp, np.minimum(np.arange(h)[:, None] + 1, np.arange(h)[::-1][:, None] + 1))
    alpha = np.clip(ramp / feather, 0, 1).astype(np.float32)
    warped = cv2.warpAffine(src.image, matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    alpha = cv2.warpAffine(alpha, matrix, (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR)[..., None]
    return background * (1 - alpha) + warped * alpha


def head_warp(src: Source, yaw: float, pitch: float, roll: float, blink: float = 0.0) -> np.ndarray:
    """The photo with its head turned by small angles (degrees) using a face-shaped depth map, eyes closed by ``blink``.

    The depth is an ellipsoid head (1 inter-ocular distance deep) with a nose
    ridge 0.4 IOD high and shallow eye sockets: a rough anthropometric face, so
    the parallax between nose, cheeks and face outline that a live head shows
    when it turns. The body and background do not move. ``blink`` (0-1) pulls
    the skin above each eye down over it, a crude eyelid.
    """
    lm = src.landmarks.astype(np.float64)
    eye_l, eye_r = lm[0], lm[1]
    iod = float(np.linalg.norm(eye_r - eye_l))
    ang = math.atan2(eye_r[1] - eye_l[1], eye_r[0] - eye_l[0])
    ca, sa = math.cos(ang), math.sin(ang)
    centre = ((eye_l + eye_r) / 2 + (lm[3] + lm[4]) / 2) / 2
    h, w = src.image.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    u = ca * (gx - centre[0]) + sa * (gy - centre[1])
    v = -sa * (gx - centre[0]) + ca * (gy - centre[1])

    def local(p: np.ndarray) -> tuple[float, float]:
        d = p - centre
        return ca * d[0] + sa * d[1], -sa * d[0] + ca * d[1]

    a, b, head_v = 1.15 * iod, 1.6 * iod, -0.15 * iod
    e = 1 - (u / a) ** 2 - ((v - head_v) / b) ** 2
    z = 1.0 * iod * np.sqrt(np.clip(e, 0, None))
    nu, nv = local(lm[2])
    z += 0.4 * iod * np.exp(-((u - nu) ** 2 / (2 * (0.22 * iod) ** 2) + (v - nv + 0.25 * iod) ** 2 / (2 * (0.45 * iod) ** 2)))
    for eye in (eye_l, eye_r):
        eu, ev = local(eye)
        z -= 0.12 * iod * np.exp(-((u - eu) ** 2 + (v - ev) ** 2) / (2 * (0.2 * iod) ** 2))
    weight = np.clip((e + 0.35) / 0.35, 0, 1)  # the head moves, the body and the room do not
    ty, tp, tr = np.radians([yaw, pitch, roll])
    u1 = u * math.cos(ty) + z * math.sin(ty)
    z1 = -u * math.sin(ty) + z * math.cos(ty)
    v1 = v * math.cos(tp) - z1 * math.sin(tp)
    u2 = u1 * math.cos(tr) - v1 * math.sin(tr)
    v2 = u1 * math.sin(tr) + v1 * math.cos(tr)
    du, dv = (u2 - u) * weight, (v2 - v) * weight
    if blink > 0:
        for eye in (eye_l, eye_r):
            eu, ev = local(eye)
            hw, hh = 0.3 * iod, 0.13 * iod
            inside = np.clip(1.5 - np.sqrt(((u - eu) / hw) ** 2 + ((v - ev) / hh) ** 2), 0, 1)
            lid = ev - 1.4 * hh
            dv += blink * inside * (v - lid) * np.clip((v - lid) / (v - lid + 1e-6), 0, 1)
    map_x = (gx - (ca * du - sa * dv)).astype(np.float32)
    map_y = (gy - (sa * du + ca * dv)).astype(np.float32)
    return cv2.remap(src.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def head_motion(rng: np.random.Generator, frames: int, amplitude: float) -> list[tuple[float, float, float]]:
    """Yaw, pitch, roll (degrees) of a head drifting naturally by up to ``amplitude`` degrees."""
    amp = amplitude * np.array([1.0, rng.uniform(0.4, 1.0), rng.uniform(0.1, 0.4)])
    phase = rng.uniform(0, 2 * math.pi, size=3)
    speed = rng.uniform(0.25, 0.7, size=3)
    return [tuple(float(x) for x in amp * np.sin(speed * t + phase) + rng.normal(0, 0.1, size=3))
            for t in range(frames)]


def blink_track(rng: np.random.Generator, frames: int, probability: float) -> list[float]:
    """Eyelid closure per frame: one blink (half, full, full, half) with ``probability``."""
    closure = [0.0] * frames
    if frames >= 5 and rng.random() < probability:
        start = int(rng.integers(1, frames - 3))
        for t, c in zip(range(start, start + 4), (0.5, 1.0, 1.0, 0.5)):
            closure[t] = c
    return closure


# --------------------------------------------------------------------------- sessions


def medium_maker(kind: str, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """The session's print or screen (its look drawn once), as a function from photo to medium texture."""
    seed = int(rng.integers(1 << 31))
    make = screen_medium if "screen" in kind else print_medium
    return lambda image: make(image, np.random.default_rng(seed)).astype(np.float32)


def attack_session(kind: str, sources: Sequence[Source], rng: np.random.Generator, frames: int) -> Session:
    """One attack session of ``kind`` with photos from ``sources`` (one identity)."""
    camera = Camera(rng)
    background = room(rng)
    target = rng.uniform(130, 210)
    slideshow = kind.startswith("slideshow")
    count = min(len(sources), int(rng.integers(3, 6))) if slideshow else 1
    chosen = [sources[i] for i in rng.choice(len(sources), size=count, replace=False)]
    medium = medium_maker(kind, rng)
    textures = [medium(s.image) for s in chosen]
    poses = trajectory(rng, frames, "hold" if kind in ("photo_still", "screen_still", "screen_video") else "move")
    params: dict = {"face_width": round(float(target), 1), "photos": count}
    bend = None
    if kind == "photo_bent":
        bend = rng.uniform(0.35, 0.8) * max(chosen[0].image.shape[:2])
        params["bend_radius_texels"] = round(float(bend), 1)
        sweep = rng.uniform(12, 25)
        poses = [Pose(sweep * math.sin(0.6 * t + rng.uniform(-0.1, 0.1)), p.pitch, p.roll, p.dx, p.dy, p.scale)
                 for t, p in enumerate(poses)]
    video: list[np.ndarray] = []
    if kind == "screen_video":
        amplitude = rng.uniform(1.0, 6.0)
        params["head_motion_deg"] = round(float(amplitude), 2)
        video = [medium(head_warp(chosen[0], *angles, blink=c)) for angles, c in
                 zip(head_motion(rng, frames, amplitude), blink_track(rng, frames, 0.5))]
    pitch = float(np.exp(rng.uniform(math.log(0.25), math.log(2.0))))
    lens_cutoff = rng.uniform(1.0, 2.5)
    if "screen" in kind:
        params["screen_pitch_px"] = round(float(pitch), 3)
        params["lens_cutoff"] = round(float(lens_cutoff), 3)
    glare_base = rng.uniform(-0.4, 0.4, size=2)
    glare_radius = np.array([rng.uniform(0.15, 0.4), rng.uniform(0.1, 0.3)]) * target
    glare_strength = rng.uniform(150, 320)
    glare_angle = rng.uniform(0, math.pi)
    margin = (textures[0].shape[0] - chosen[0].image.shape[0]) // 2
    out = []
    used = []
    for t, pose in enumerate(poses):
        idx = min(t * count // frames, count - 1)
        texture = video[t] if video else textures[idx]
        centre = chosen[idx].centre + margin
        texel = target / chosen[idx].width
        if "screen" in kind:
            scene = render_screen(background, texture, centre, texel, pose, pitch, lens_cutoff)
        else:
            scene = render_medium(background, texture, centre, texel, pose, bend)
        if kind == "photo_glare":
            face_at = project(np.zeros((1, 3)), pose, texel)[0]
            drift = np.array([pose.yaw, pose.pitch]) / 20.0
            scene = add_glare(scene, face_at + (glare_base + drift) * target, glare_radius, glare_strength,
                              glare_angle)
        out.append(camera.capture(scene))
        used.append(str(chosen[idx].path))
    return Session(kind, chosen[0].path.parent.name, out, used, camera.jpeg_quality, params)


def genuine_session(kind: str, sources: Sequence[Source], rng: np.random.Generator, frames: int,
                    blink: bool | None = None) -> Session:
    """A genuine stand-in, one of:

    ``genuine_head``   one real photo whose head turns a little (1-6 degrees) through a face-shaped
                       depth map, blinking in half the sessions: continuous motion, constant appearance.
    ``genuine_photos`` several real photos of the person, each for 3-5 frames with that head motion.
    ``genuine_still``  the sources in the given order (Yale B lighting sweep), no motion at all.

    ``blink`` True/False forces one blink or none (tests); None draws it, as the benchmark does.
    """
    camera = Camera(rng)
    background = room(rng)
    target = rng.uniform(130, 210)
    params: dict = {"face_width": round(float(target), 1)}
    if kind == "genuine_still":
        start = int(rng.integers(0, max(1, len(sources) - frames + 1)))
        picks = [sources[(start + t) % len(sources)] for t in range(frames)]
        angles = [(0.0, 0.0, 0.0)] * frames
        closure = [0.0] * frames
    else:
        if kind == "genuine_head":
            picks = [sources[int(rng.integers(len(sources)))]] * frames
        else:
            order = rng.permutation(len(sources))
            picks, photo = [], 0
            while len(picks) < frames:
                picks += [sources[order[photo % len(sources)]]] * int(rng.integers(3, 6))
                photo += 1
            picks = picks[:frames]
        amplitude = rng.uniform(1.0, 6.0)
        angles = head_motion(rng, frames, amplitude)
        closure = blink_track(rng, frames, 0.5 if blink is None else float(blink))
        params.update(head_motion_deg=round(float(amplitude), 2), blink=max(closure) > 0)
    shift = rng.uniform(-25, 25, size=2)
    angle = rng.uniform(-4, 4)
    out, used = [], []
    for src, turn, c in zip(picks, angles, closure):
        shift = shift + rng.normal(0, 1.5, size=2)
        angle = angle + rng.normal(0, 0.3)
        image = head_warp(src, *turn, blink=c) if kind != "genuine_still" else src.image
        moved = Source(src.path, image, src.centre, src.width, src.landmarks)
        scene = render_live(background, moved, target * (1 + rng.normal(0, 0.005)), angle, shift)
        out.append(camera.capture(scene))
        used.append(str(src.path))
    params["photos"] = len(set(used))
    return Session(kind, picks[0].path.parent.name, out, used, camera.jpeg_quality, params)


def make_session(kind: str, sources: Sequence[Source], rng: np.random.Generator, frames: int) -> Session:
    if kind in ATTACK_KINDS:
        return attack_session(kind, sources, rng, frames)
    if kind in GENUINE_KINDS:
        return genuine_session(kind, sources, rng, frames)
    raise ValueError(f"unknown session kind {kind!r}; choose from {', '.join(KINDS)}")


# --------------------------------------------------------------------------- sources


def locate(path: Path, pipeline, trim: bool, pad_to: int = 0) -> Source | None:
    """A photo with its face located, or None when it cannot be read or the detector finds no usable face.

    ``pad_to`` mirrors a tight crop at its edges out to that size, so a print made from it shows
    more than the face, as a print of a whole photograph does (the face no longer fills the
    medium, and the medium's edge leaves the anti-spoofing model's context crop).
    """
    from pam_faceid.vision.faces import FaceRefused

    image = read_image(path)
    if image is None:
        return None
    grow = [max(0, (pad_to - n + 1) // 2) for n in image.shape[:2]]
    if any(grow):
        image = cv2.copyMakeBorder(image, grow[0], grow[0], grow[1], grow[1], cv2.BORDER_REFLECT_101)
    try:
        face = pipeline.find(image)
    except FaceRefused:
        return None
    centre = (face.box[:2] + face.box[2:] / 2).astype(np.float64)
    landmarks = face.landmarks.astype(np.float64)
    if trim:
        trimmed, moved = trim_padding(image, centre)
        landmarks = landmarks + (moved - centre)
        image, centre = trimmed, moved
    return Source(path, image, centre, float(face.box[2]), landmarks)


def trim_padding(image: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image cropped inside the black wedges that LFW's alignment leaves at its edges, and the moved centre.

    A print or a face shown with a black frame around it would be a cue no camera sees.
    """
    h, w = image.shape[:2]
    blank = image.max(axis=2) <= 3
    x0, y0, x1, y1 = 0, 0, w, h
    while x1 - x0 > w // 3 and y1 - y0 > h // 3:
        edges = (blank[y0, x0:x1], blank[y1 - 1, x0:x1], blank[y0:y1, x0], blank[y0:y1, x1 - 1])
        if max(float(e.mean()) for e in edges) <= 0.01:
            break
        x0, y0, x1, y1 = x0 + 2, y0 + 2, x1 - 2, y1 - 2
    return image[y0:y1, x0:x1].copy(), centre - np.array([x0, y0], np.float64)


def load_sources(folder: Path, pipeline, limit: int | None = None, pad_to: int = 0) -> list[Source]:
    """The photos of one identity in which a face is found (at most ``limit``), mirrored out to ``pad_to``."""
    out = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        found = locate(path, pipeline, trim=True, pad_to=pad_to)
        if found is not None:
            out.append(found)
        if limit is not None and len(out) >= limit:
            break
    return out


def yaleb_order(path: Path) -> tuple[float, float]:
    """(azimuth, elevation) of an Extended Yale B file name such as yaleB01_P00A+035E-20.jpg."""
    stem = path.stem.split("_P00A")[-1]
    az, el = stem.split("E")
    return float(az), float(el)


def still_sources(folder: Path, pipeline, max_angle: float = 60.0) -> list[Source]:
    """Extended Yale B photos of one subject with the light within ``max_angle`` of frontal,
    ordered along a sweep of the light so neighbouring frames differ a little."""
    paths = []
    for path in folder.iterdir():
        try:
            az, el = yaleb_order(path)
        except ValueError:
            continue
        if abs(az) <= max_angle and abs(el) <= max_angle:
            paths.append((el > 0, az if el > 0 else -az, path))
    found = (locate(path, pipeline, trim=False) for _, _, path in sorted(paths))
    return [src for src in found if src is not None]


def identities(folder: Path, min_images: int) -> list[Path]:
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and sum(1 for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) >= min_images)
