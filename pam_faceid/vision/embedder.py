"""The face embedder at run time: aligned crop in, unit vector out.

The daemon uses the ONNX export through onnxruntime (fast import, small
memory); ``backend="torch"`` loads the torch weights instead, for parity
checks and debugging. The model folder's model.json says what the network
takes (``InputSpec``: crop size, five-point template, channel order, mean
and scale); ``faces.align`` makes crops by it and ``preprocess`` turns them
into numbers by it, for training, enrolment and login alike, so a model
and its crops cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDING_DIM = 128
ONNX_FILE = "embedder.onnx"
META_FILE = "model.json"


class ModelError(Exception):
    """The model folder is missing, incomplete or unreadable."""


def model_id_of(embedder: Any) -> str:
    """The identity of the embedder's weights: enrolments from another model do not compare.

    An explicit ``model_id`` attribute, else model.json's "model_id" or "id",
    else a hash of embedder.onnx, so retrained weights never meet old vectors.
    """
    explicit = getattr(embedder, "model_id", None)
    if explicit:
        return str(explicit)
    meta = getattr(embedder, "metadata", {}) or {}
    named = meta.get("model_id") or meta.get("id")
    if named:
        return str(named)
    model_dir = getattr(embedder, "model_dir", None)
    if model_dir is not None:
        try:
            with open(Path(model_dir) / "embedder.onnx", "rb") as fh:
                return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()[:16]
        except OSError:
            pass
    return ""


def default_model_dir() -> Path:
    return Path(str(resources.files("pam_faceid") / "data" / "model"))


@dataclass(frozen=True, eq=False)
class InputSpec:
    """What the network takes, from model.json's "input"."""

    size: int  # square crop side in pixels
    template: np.ndarray  # [5,2] crop pixels: right eye, left eye, nose, right mouth, left mouth (image order)
    rgb: bool  # channel order the network reads (crops are BGR)
    mean: np.ndarray  # [3] per channel, in the network's order, subtracted first
    scale: float  # then multiplied by this

    @classmethod
    def from_metadata(cls, meta: dict, where: str) -> "InputSpec":
        spec = meta.get("input")
        try:
            if not isinstance(spec, dict):
                raise ValueError("no \"input\" object (size, template, channels, mean, scale)")
            size = spec["size"]
            template = np.asarray(spec["template"], np.float32)
            mean = np.asarray(spec["mean"], np.float32)
            scale = spec["scale"]
            if not isinstance(size, int) or not 32 <= size <= 512:
                raise ValueError(f"input size {size!r}")
            if template.shape != (5, 2) or not np.all((template > 0) & (template < size)):
                raise ValueError("template is not five points inside the crop")
            if mean.shape != (3,) or not isinstance(scale, (int, float)) or not 0 < scale < 1:
                raise ValueError("mean must be 3 numbers and scale a number in (0, 1)")
            if spec["channels"] not in ("RGB", "BGR"):
                raise ValueError(f"channels {spec['channels']!r}: RGB or BGR")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model {where}: bad \"input\" in {META_FILE}: {exc}") from exc
        return cls(size, template, spec["channels"] == "RGB", mean, float(scale))

    def to_metadata(self) -> dict:
        return {"size": self.size, "template": [[round(float(v), 3) for v in p] for p in self.template],
                "channels": "RGB" if self.rgb else "BGR", "mean": [round(float(m), 4) for m in self.mean],
                "scale": self.scale}


@lru_cache(maxsize=1)
def default_input() -> InputSpec:
    """The bundled model's input: what crops are made by when no model is at hand (detector tests, tools)."""
    return InputSpec.from_metadata(load_metadata(default_model_dir()), str(default_model_dir()))


def preprocess(crops: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 BGR NHWC crops -> float32 NCHW as the network reads them: channel order, (x - mean) * scale."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    if crops.shape[1:] != (spec.size, spec.size, 3):
        raise ModelError(f"crops of {crops.shape[1:]} given; the model takes {spec.size}x{spec.size}x3")
    x = crops[..., ::-1] if spec.rgb else crops
    x = (x.astype(np.float32) - spec.mean) * np.float32(spec.scale)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def load_metadata(model_dir: Path) -> dict:
    path = model_dir / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model {model_dir}: {META_FILE} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {path}: unreadable: {exc}") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("threshold"), (int, float)):
        raise ModelError(f"model {path}: no numeric 'threshold'")
    return meta


class Embedder:
    """Loads one model folder (embedder.onnx + model.json); the torch backend rebuilds the network from the ONNX."""

    def __init__(self, model_dir: str | Path | None = None, backend: str = "onnx", threads: int = 1):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.backend = backend
        self.metadata = load_metadata(self.model_dir)
        self.threshold = float(self.metadata["threshold"])
        self.flip = bool(self.metadata.get("flip", False))
        self.input = InputSpec.from_metadata(self.metadata, str(self.model_dir))
        if backend == "onnx":
            self._run = self._load_onnx(threads)
        elif backend == "torch":
            self._run = self._load_torch(threads)
        else:
            raise ModelError(f"model.backend {backend!r}: must be onnx or torch")

    def _load_onnx(self, threads: int):
        import onnxruntime as ort

        path = self.model_dir / ONNX_FILE
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"model {path}: cannot load: {str(exc).splitlines()[0]}") from exc
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]

    def _load_torch(self, threads: int):
        import torch

        from pam_faceid.vision.resnet import from_onnx

        torch.set_num_threads(threads)
        try:
            net = from_onnx(self.model_dir / ONNX_FILE)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {self.model_dir / ONNX_FILE}: torch backend: {exc}") from exc

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        return run

    def embed(self, crops: np.ndarray, flip: bool | None = None) -> np.ndarray:
        """[N,S,S,3] uint8 BGR crops made by faces.align for this model -> [N,128] unit vectors.

        With ``flip`` (default: the model's metadata) each crop's descriptor is
        summed with its mirror image's before normalising: the one place the
        project does flip-and-normalise.
        """
        if len(crops) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        x = preprocess(crops, self.input)
        out = self._run(x)
        if self.flip if flip is None else flip:
            out = out + self._run(np.ascontiguousarray(x[..., ::-1]))
        return l2_normalise(out)

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        return self.embed(crop[None])[0]
