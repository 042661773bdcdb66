"""Reading image files of any kind as 8-bit BGR: the one image reader.

Camera folders, enrolment photos, training sets and `faceid evaluate` all read
files they did not make, so every file is treated as hostile: bytes are read by
Python (unicode names, no blocking on a FIFO), decoded by OpenCV with EXIF
orientation and 16-bit depth kept, then by Pillow (GIF and friends) when
OpenCV cannot. cv2 and numpy are imported by the functions that decode, not
at the top: the PAM helper imports this module for IMAGE_SUFFIXES and
entry_kind, and sends an image folder's JPEG files without loading OpenCV.
"""

from __future__ import annotations

import io
import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".pgm", ".ppm", ".pbm", ".pnm", ".pxm",
     ".tif", ".tiff", ".webp", ".gif", ".jp2", ".sr", ".ras", ".hdr", ".pic", ".exr", ".avif"}
)
"""Suffixes treated as a single still image (camera folders, datasets, enrolment)."""

MAX_SIDE = 1280
"""Images are downscaled so their longest side is at most this before detection (huge photos)."""
MAX_FILE_BYTES = 256 * 1024 * 1024
"""Files larger than this are skipped unread: no face photo is that big, and reading it could exhaust memory."""


# Luma weights (BT.601, as cv2.cvtColor BGR2GRAY) in B, G, R order: the mean of the grey frame.
_LUMA_BGR = (0.114, 0.587, 0.299)


def brightness_percent(frame: np.ndarray) -> float:
    """Mean luma of a BGR (or grey) frame as a percentage of 255: what every ``dark_threshold`` compares with."""
    import cv2

    b, g, r, _ = cv2.mean(frame)
    if frame.ndim == 2:
        return b * 100.0 / 255.0
    return (b * _LUMA_BGR[0] + g * _LUMA_BGR[1] + r * _LUMA_BGR[2]) * 100.0 / 255.0


class ImageError(Exception):
    """The file is not a usable image; the message is the short reason, counted by callers."""


def entry_kind(path: Path | str) -> str:
    """'dir', 'file' or a skip reason, following symlinks, without opening the file (a FIFO would block)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            return "broken or looping symlink"
        return f"unreadable ({exc.strerror or exc.__class__.__name__})"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "not a regular file"


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded array (grey, IR, alpha, 16-bit, float) as 3-channel uint8 BGR, the one form the detector takes."""
    import cv2
    import numpy as np

    if image.dtype == np.uint16:
        # 10- and 12-bit sensors store small values in 16-bit files: scale by the bit depth the
        # values fit in (a fixed scale, so a dark frame stays dark), not a plain >> 8.
        peak = int(image.max()) if image.size else 0
        bits = next(b for b in (10, 12, 16) if peak < 2**b)
        image = np.clip(image.astype(np.float32) * (255.0 / (2**bits - 1)) + 0.5, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = image.astype(np.float32)
        top = float(np.nanmax(image)) if image.size else 1.0
        scale = 255.0 if top <= 1.0 else 255.0 / top
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ImageError("not an image")
    return np.ascontiguousarray(image)


def _decode_pillow(data: bytes) -> np.ndarray | None:
    """Pillow reads what this OpenCV build may not (GIF, some TIFF/WebP variants); None when absent or unreadable."""
    import numpy as np

    try:
        from PIL import Image, ImageOps
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (MAX_SIDE, MAX_SIDE))
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                return to_bgr8(np.asarray(img, dtype=np.float32))
            rgb = np.asarray(img.convert("RGB"))
    except Exception:  # Pillow raises many types on bad data; all mean "not an image"
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def load_image(path: Path | str, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Read any image file as uint8 BGR, longest side <= ``max_side`` (None: full size); raise ImageError(reason)."""
    import cv2
    import numpy as np

    kind = entry_kind(path)
    if kind != "file":
        raise ImageError(kind)
    try:
        size = os.path.getsize(path)
        if size == 0:
            raise ImageError("empty file")
        if size > MAX_FILE_BYTES:
            raise ImageError("file too large")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageError(f"unreadable ({exc.strerror or exc.__class__.__name__})") from None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error:
        image = None
    if image is None:
        image = _decode_pillow(data)
    if image is None or image.size == 0:
        raise ImageError("not an image")
    image = to_bgr8(image)
    h, w = image.shape[:2]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image


def read_image(path: Path | str, max_side: int | None = MAX_SIDE) -> np.ndarray | None:
    """``load_image``, or None for a file that is not a usable image."""
    try:
        return load_image(path, max_side)
    except ImageError:
        return None
