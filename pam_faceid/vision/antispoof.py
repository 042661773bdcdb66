"""The learned presentation-attack detector at run time: a face in a frame in, P(real) out.

MiniFASNet (two small CNNs from minivision-ai/Silent-Face-Anti-Spoofing,
Apache-2.0) imported into torch by ``pam_faceid.model.minifasnet`` and
shipped as one ONNX file, ``data/antispoof/minifasnet.onnx``. Each network
sees the face at its own context: the detector's box enlarged 2.7x
(MiniFASNetV2) and 4x (MiniFASNetV1SE) around its centre, kept inside the
frame as the source crops it, resized to 80x80, BGR 0-255 with no
normalisation. Each gives a softmax over (2-D attack, real, 3-D attack); the
score of a frame is the two networks' mean "real" probability, as the
source combines them. The crop and the numbers are this module's alone, so
faceidd, ``faceid liveness`` and the bench score a frame identically.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ONNX_FILE = "minifasnet.onnx"
META_FILE = "minifasnet.json"
SIZE = 80
SCALES = (2.7, 4.0)
"""Context around the face box, in box sizes, for the two networks, in the ONNX file's input order."""
REAL = 1
"""Index of the "real" class in each network's softmax (0: 2-D attack, 2: 3-D attack)."""


class AntiSpoofError(Exception):
    """The shipped anti-spoofing model is missing, changed or unreadable."""


def model_dir() -> Path:
    return Path(str(resources.files("pam_faceid") / "data" / "antispoof"))


def context_box(box: np.ndarray | tuple[float, float, float, float], scale: float, width: int,
                height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the face box enlarged ``scale`` times around its centre, inside a width x height frame.

    As the networks were trained: the scale is first reduced until the
    enlarged box fits the frame, then the box is slid (not cut) back inside,
    so a face near the edge keeps its aspect ratio and its amount of context.
    """
    x, y, w, h = (float(v) for v in box)
    w, h = max(w, 1.0), max(h, 1.0)
    scale = min((height - 1) / h, (width - 1) / w, scale)
    new_w, new_h = w * scale, h * scale
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = cx - new_w / 2, cy - new_h / 2
    x0 -= min(x0, 0.0) + max(x0 + new_w - width, 0.0)
    y0 -= min(y0, 0.0) + max(y0 + new_h - height, 0.0)
    return int(x0), int(y0), int(x0 + new_w), int(y0 + new_h)


def crops(frame: np.ndarray, box: np.ndarray | tuple[float, float, float, float]) -> np.ndarray:
    """[len(SCALES), 3, 80, 80] float32 network inputs for one face: BGR 0-255, channels first.

    A greyscale (IR) frame is repeated over the three channels.
    """
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    height, width = frame.shape[:2]
    out = np.empty((len(SCALES), 3, SIZE, SIZE), np.float32)
    for i, scale in enumerate(SCALES):
        x0, y0, x1, y1 = context_box(box, scale, width, height)
        patch = frame[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        out[i] = cv2.resize(patch, (SIZE, SIZE)).transpose(2, 0, 1)
    return out


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class AntiSpoof:
    """The shipped ONNX pair through onnxruntime, one thread: ``score(frame, box)`` -> P(real) in [0, 1].

    The file's sha256 must be the one its minifasnet.json records (the
    provenance written with it), so a replaced or truncated file is refused
    at load, like the detector.
    """

    def __init__(self, folder: Path | None = None):
        import onnxruntime as ort

        fix = "reinstall pam_faceid" if folder is None else "write it with python -m pam_faceid.model.minifasnet export"
        folder = Path(folder) if folder is not None else model_dir()
        try:
            self.metadata: dict[str, Any] = json.loads((folder / META_FILE).read_text())
            expected = self.metadata["output"]["sha256"]
            digest = _sha256(folder / ONNX_FILE)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AntiSpoofError(f"anti-spoofing model in {folder}: {exc}; {fix}") from None
        if digest != expected:
            raise AntiSpoofError(f"anti-spoofing model {folder / ONNX_FILE}: sha256 {digest} is not the "
                                 f"{expected} its {META_FILE} records; {fix}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """[N, heads, 3] softmaxes (head, class) for [N, 2, 3, 80, 80] crops: 2 heads, or 4 in a fine-tuned export."""
        feed = {name: np.ascontiguousarray(batch[:, i]) for i, name in enumerate(self.inputs)}
        return self.session.run(None, feed)[0]

    def score(self, frame: np.ndarray, box: np.ndarray | tuple[float, float, float, float]) -> float:
        """The mean "real" probability of the two networks for the face at ``box`` (x, y, w, h) in ``frame``."""
        probs = self.probabilities(crops(frame, box)[None])
        return float(probs[0, :, REAL].mean())


@lru_cache(maxsize=1)
def shared() -> AntiSpoof:
    """One loaded model per process: faceidd's sessions share it (onnxruntime's run is thread-safe)."""
    return AntiSpoof()
