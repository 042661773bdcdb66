"""The face embedder at run time: aligned crop in, unit vector out.

The daemon uses the ONNX export through onnxruntime (fast import, small
memory); ``backend="torch"`` loads the training weights instead, for parity
checks and debugging. Both share ``preprocess`` with training, so a crop is
turned into numbers in exactly one way.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 128
ONNX_FILE = "embedder.onnx"
TORCH_FILE = "embedder.pt"
META_FILE = "model.json"


class ModelError(Exception):
    """The model folder is missing, incomplete or unreadable."""


def default_model_dir() -> Path:
    return Path(str(resources.files("pam_faceid") / "data" / "model"))


def preprocess(crops: np.ndarray) -> np.ndarray:
    """uint8 BGR NHWC crops -> float32 RGB NCHW in [-1, 1], the network's input."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        crops = crops[None]
    x = crops[..., ::-1].astype(np.float32) * (1.0 / 127.5) - 1.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors (a dot product): 1 same, ~0 unrelated.

    Works for one vector against one, or [N,D] against [M,D] giving [N,M].
    """
    return np.asarray(a, np.float32) @ np.asarray(b, np.float32).T


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
    """Loads one model folder (embedder.onnx / embedder.pt + model.json)."""

    def __init__(self, model_dir: str | Path | None = None, backend: str = "onnx", threads: int = 1):
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        self.backend = backend
        self.metadata = load_metadata(self.model_dir)
        self.threshold = float(self.metadata["threshold"])
        self.flip = bool(self.metadata.get("flip", False))
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

        from pam_faceid.network import load_weights

        torch.set_num_threads(threads)
        net = load_weights(self.model_dir / TORCH_FILE)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        return run

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """[N,112,112,3] uint8 BGR aligned crops -> [N,128] unit vectors."""
        x = preprocess(crops)
        if len(x) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        out = self._run(x)
        if self.flip:
            out = out + self._run(np.ascontiguousarray(x[..., ::-1]))
        return l2_normalise(out)

    def embed_one(self, crop: np.ndarray) -> np.ndarray:
        return self.embed(crop[None])[0]
