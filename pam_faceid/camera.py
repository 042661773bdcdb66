"""Frame sources: a V4L2 camera, a video file, or a folder of images.

Everything downstream (faces, the helper, enrolment, tests) sees one thing: an
iterator of BGR uint8 frames, or of the JPEG frames the daemon takes
(:meth:`FrameSource.jpeg_frames`). A webcam, an IR camera, a recorded video
and a folder of photos are interchangeable, which is how this project runs and
is tested on machines without a camera.

The PAM helper imports this module, so it depends on the standard library at
the top; cv2 and numpy are imported where frames are decoded. Importing
OpenCV takes longer than everything else the helper does, and an image
folder's JPEG files reach the daemon without it.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator

from pam_faceid.common.images import IMAGE_SUFFIXES, brightness_percent, entry_kind, read_image, to_bgr8
from pam_faceid.common.protocol import frame_problem

if TYPE_CHECKING:
    import cv2
    import numpy as np

OPEN_TIMEOUT = 1.0
"""Seconds a source may take to open before it is reported as broken (PAM must fall through fast)."""

ROTATIONS = (0, 90, 180, 270)
"""The values ``camera.rotate`` takes: clockwise degrees."""

MAX_SEND_SIDE = 640
"""JPEG frames are at most this many pixels on their long side (a few tens of KiB; the daemon detects at 640)."""
JPEG_QUALITY = 85
MAX_AS_IS_BYTES = 1 << 20
"""An image folder's JPEG file larger than this is decoded and re-encoded rather than sent as it is."""

# V4L2_CID_EXPOSURE_AUTO values: OpenCV's V4L2 backend passes CAP_PROP_AUTO_EXPOSURE through as-is.
_V4L2_EXPOSURE_MANUAL = 1


class CameraError(Exception):
    """A frame source cannot be opened or read; the message is one line naming the source."""


def _check_options(spec: str, rotate: int, dark_threshold: float) -> None:
    if rotate not in ROTATIONS:
        raise CameraError(f"{spec}: rotate must be one of 0, 90, 180, 270, not {rotate!r}")
    if not 0.0 <= float(dark_threshold) <= 100.0:
        raise CameraError(f"{spec}: dark_threshold must be a percentage 0-100, not {dark_threshold!r}")


def rotated(frame: np.ndarray, degrees: int) -> np.ndarray:
    """The frame turned ``degrees`` (one of ROTATIONS) clockwise."""
    import cv2

    codes = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
    return cv2.rotate(frame, codes[degrees]) if degrees else frame


def encode_jpeg(frame: np.ndarray, max_side: int = MAX_SEND_SIDE) -> bytes:
    """A BGR frame as JPEG bytes, downscaled to ``max_side``: the frame the daemon takes."""
    import cv2

    height, width = frame.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        frame = cv2.resize(frame, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise CameraError("cannot encode a camera frame as JPEG")
    return buf.tobytes()


def sends_as_is(device: str, rotate: int = 0) -> bool:
    """Whether :meth:`FrameSource.jpeg_frames` of this source can go without OpenCV (an unrotated image folder
    or JPEG file; a folder's other files still load it), so the helper knows whether to start importing it early."""
    if rotate:
        return False
    return os.path.isdir(device) or os.path.splitext(device)[1].lower() in (".jpg", ".jpeg", ".jpe")


def _run_with_timeout(what: str, opener: Any, timeout: float) -> Any:
    """Run ``opener()`` in a thread and give up after ``timeout`` s, so a stuck driver cannot hold PAM up."""
    result: dict[str, Any] = {}
    abandoned = threading.Event()

    def target() -> None:
        try:
            value = opener()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc
            return
        if abandoned.is_set():
            if hasattr(value, "release"):
                value.release()
            return
        result["value"] = value

    thread = threading.Thread(target=target, name=f"open {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        abandoned.set()
        raise CameraError(f"{what}: did not open within {timeout:g} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


class FrameSource:
    """An iterator of BGR uint8 frames with dark frames skipped and counted.

    Build one with :func:`open_source` or :meth:`from_config`. Iterating stops
    when the source ends (end of video, last image); it never raises for that.
    ``frames_read`` counts frames taken from the source (dark ones included),
    ``dark_frames`` the ones skipped as too dark, ``skipped_files`` the files of
    an image folder that were not readable images.
    """

    kind = "source"

    def __init__(self, spec: str, *, rotate: int = 0, dark_threshold: float = 10.0) -> None:
        _check_options(spec, rotate, dark_threshold)
        self.spec = spec
        self.rotate = rotate
        self.dark_threshold = float(dark_threshold)
        self.frames_read = 0
        self.dark_frames = 0
        self.skipped_files = 0
        self.closed = False

    @classmethod
    def from_config(cls, camera: Any) -> "FrameSource":
        """Open the source a config's ``camera`` section describes (``cfg.camera``)."""
        return open_source(
            camera.device,
            width=camera.width,
            height=camera.height,
            fps=camera.fps,
            force_mjpeg=camera.force_mjpeg,
            exposure=camera.exposure,
            rotate=camera.rotate,
            dark_threshold=camera.dark_threshold,
        )

    def _read_raw(self) -> np.ndarray | None:
        """The next frame as the source gives it, or None at the end."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free the underlying device or file."""

    def read(self) -> np.ndarray | None:
        """Next frame, BGR and rotated, even if dark; None when the source has ended."""
        if self.closed:
            return None
        raw = self._read_raw()
        if raw is None:
            return None
        self.frames_read += 1
        return rotated(to_bgr8(raw), self.rotate)

    def is_dark(self, frame: np.ndarray) -> bool:
        """True when the frame's mean brightness is under ``dark_threshold`` percent."""
        return brightness_percent(frame) < self.dark_threshold

    def _next_bright(self, deadline: float | None) -> np.ndarray | None:
        """Next frame that is not dark, or None at the end of the source or past ``deadline``."""
        while deadline is None or time.monotonic() < deadline:
            frame = self.read()
            if frame is None:
                return None
            if not self.is_dark(frame):
                return frame
            self.dark_frames += 1
        return None

    def frames(self, timeout: float | None = None) -> Iterator[np.ndarray]:
        """Yield bright-enough frames until the source ends or ``timeout`` seconds pass.

        The timeout is checked between every frame read, dark ones included, so a
        camera facing a dark room cannot keep the caller waiting past it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (frame := self._next_bright(deadline)) is not None:
            yield frame

    def jpeg_frames(self, timeout: float | None = None) -> Iterator[bytes]:
        """:meth:`frames` as the JPEG bytes the daemon takes (at most MAX_SEND_SIDE pixels)."""
        for frame in self.frames(timeout):
            yield encode_jpeg(frame)

    def __iter__(self) -> "FrameSource":
        return self

    def __next__(self) -> np.ndarray:
        frame = self._next_bright(None)
        if frame is None:
            raise StopIteration
        return frame

    def close(self) -> None:
        """Release the source; safe to call twice."""
        if not self.closed:
            self.closed = True
            self._release()

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.spec!r} read={self.frames_read} "
                f"dark={self.dark_frames} skipped_files={self.skipped_files}>")


class _CaptureSource(FrameSource):
    """A source backed by ``cv2.VideoCapture`` (V4L2 device or video file)."""

    def __init__(self, spec: str, capture: "cv2.VideoCapture", **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self._capture = capture

    def _read_raw(self) -> np.ndarray | None:
        ok, frame = self._capture.read()
        if not ok or frame is None or frame.size == 0:
            return None
        return frame

    def _release(self) -> None:
        self._capture.release()


class V4L2Source(_CaptureSource):
    """A live camera through OpenCV's V4L2 backend."""

    kind = "v4l2"


class VideoFileSource(_CaptureSource):
    """A recorded video file, played frame by frame as fast as it decodes."""

    kind = "video"


class ImageFolderSource(FrameSource):
    """The images of a folder (or one image file), in file-name order."""

    kind = "images"

    def __init__(self, spec: str, paths: list[str], **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.paths = paths
        self._next = 0

    def _read_raw(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            image = read_image(path, max_side=None)
            if image is not None:
                return image
            self.skipped_files += 1
        return None

    def _as_is(self, path: str) -> bytes | None:
        """The file's bytes when the daemon can take them unchanged: an unrotated baseline JPEG of at most
        MAX_SEND_SIDE px (protocol.frame_problem); a progressive one is re-encoded, as faceidd refuses it."""
        if self.rotate or entry_kind(path) != "file":
            return None
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_AS_IS_BYTES + 1)
        except OSError:
            return None
        return data if len(data) <= MAX_AS_IS_BYTES and frame_problem(data, MAX_SEND_SIDE) is None else None

    def jpeg_frames(self, timeout: float | None = None) -> Iterator[bytes]:
        """The images as JPEG frames; a small JPEG file goes out as it is, without decoding.

        Such a file is neither decoded nor checked for darkness here (the
        daemon applies ``dark_threshold`` too), so a folder of camera JPEGs
        reaches the daemon without importing OpenCV. Anything else is decoded,
        skipped when dark, and re-encoded as :meth:`FrameSource.jpeg_frames` does.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._next < len(self.paths) and (deadline is None or time.monotonic() < deadline):
            data = self._as_is(self.paths[self._next])
            if data is not None:
                self._next += 1
                self.frames_read += 1
                yield data
                continue
            frame = self._next_bright(deadline)
            if frame is None:
                return
            yield encode_jpeg(frame)


def _open_v4l2(device: str, *, width: int, height: int, fps: float, force_mjpeg: bool,
               exposure: float, timeout: float) -> "cv2.VideoCapture":
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise CameraError(f"{device}: no such camera device (is the camera plugged in and its driver loaded?)") from None
    except OSError as exc:
        raise CameraError(f"{device}: cannot open camera: {exc.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise CameraError(f"{device}: not a camera device (not a character device)")
    if not os.access(device, os.R_OK | os.W_OK):
        raise CameraError(f"{device}: permission denied (root or the 'video' group is needed)")

    import cv2

    def opener() -> cv2.VideoCapture:
        capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"{device}: V4L2 could not open the camera (busy, or not a capture device?)")
        if force_mjpeg:
            capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        capture.set(cv2.CAP_PROP_FPS, fps)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if exposure >= 0:
            capture.set(cv2.CAP_PROP_AUTO_EXPOSURE, _V4L2_EXPOSURE_MANUAL)
            capture.set(cv2.CAP_PROP_EXPOSURE, exposure)
        return capture

    return _run_with_timeout(device, opener, timeout)


def _open_video(path: str, timeout: float) -> "cv2.VideoCapture":
    import cv2

    def opener() -> cv2.VideoCapture:
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"{path}: not a video file OpenCV can decode")
        return capture

    return _run_with_timeout(path, opener, timeout)


def open_source(
    spec: str,
    *,
    width: int = 640,
    height: int = 480,
    fps: float = 30,
    force_mjpeg: bool = False,
    exposure: float = -1,
    rotate: int = 0,
    dark_threshold: float = 10.0,
    open_timeout: float = OPEN_TIMEOUT,
) -> FrameSource:
    """Open a frame source from ``camera.device``: "/dev/videoN", a video file, an image folder or image.

    ``width``/``height``/``fps``/``force_mjpeg``/``exposure`` (-1 = auto) apply
    to V4L2 cameras only; ``rotate`` (clockwise degrees) and ``dark_threshold``
    (percent mean brightness under which frames are skipped) apply to all.
    Raises :class:`CameraError` within ``open_timeout`` seconds when the source
    cannot be opened.
    """
    spec = os.fspath(spec)
    if not spec:
        raise CameraError("camera device is empty: give /dev/videoN, a video file or a folder of images")
    common = {"rotate": rotate, "dark_threshold": dark_threshold}
    _check_options(spec, rotate, dark_threshold)
    is_char_device = False
    try:
        is_char_device = stat.S_ISCHR(os.stat(spec).st_mode)
    except OSError:
        pass
    if spec.startswith("/dev/") or is_char_device:
        capture = _open_v4l2(spec, width=width, height=height, fps=fps, force_mjpeg=force_mjpeg,
                             exposure=exposure, timeout=open_timeout)
        return V4L2Source(spec, capture, **common)
    if os.path.isdir(spec):
        try:
            with os.scandir(spec) as entries:
                paths = [e.path for e in sorted(entries, key=lambda e: e.name) if e.is_file()]
        except OSError as exc:
            raise CameraError(f"{spec}: cannot list image folder: {exc.strerror}") from None
        if not paths:
            raise CameraError(f"{spec}: image folder has no files")
        return ImageFolderSource(spec, paths, **common)
    if not os.path.exists(spec):
        raise CameraError(f"{spec}: no such file or folder (camera.device takes /dev/videoN, a video file or an image folder)")
    if not os.path.isfile(spec):
        raise CameraError(f"{spec}: not a camera device, video file or image folder")
    if not os.access(spec, os.R_OK):
        raise CameraError(f"{spec}: permission denied")
    if os.path.splitext(spec)[1].lower() in IMAGE_SUFFIXES:
        return ImageFolderSource(spec, [spec], **common)
    capture = _open_video(spec, open_timeout)
    return VideoFileSource(spec, capture, **common)
