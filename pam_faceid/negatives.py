"""The negative bank: embeddings of other people's faces, for calibration (and per-user retraining).

Why it is built on the admin's machine instead of shipped: the only labelled
faces at hand (../shared/faces) are licensed for research only, and
embeddings or backbone features derived from them are still derived from
those photographs, so shipping them in a package is not clearly allowed.
Instead the admin points ``faceid calibrate --negatives DIR`` at any folder
of face photos of people other than the users (their own licence, their
machine); the bank is embedded once with the current model and cached,
root-only, at ``<state_dir>/negatives.npz`` keyed by the model id, so it is
rebuilt automatically when the model changes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

BANK_FILE = "negatives.npz"
DEFAULT_LIMIT = 1000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff")


class NegativesError(Exception):
    """No usable bank: none built yet, the folder has no faces, or the file is unreadable."""


def bank_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / BANK_FILE


def image_files(folder: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files under ``folder``, spread over its sub-folders (identities) round-robin."""
    if not folder.is_dir():
        raise NegativesError(f"{folder}: not a folder of face images")
    groups: dict[Path, list[Path]] = {}
    for root, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if name.lower().endswith(IMAGE_SUFFIXES):
                groups.setdefault(Path(root), []).append(Path(root) / name)
    ordered = [groups[k] for k in sorted(groups)]
    picked: list[Path] = []
    depth = 0
    while len(picked) < limit and any(depth < len(g) for g in ordered):
        picked.extend(g[depth] for g in ordered if depth < len(g))
        depth += 1
    return picked[:limit]


def build(folder: Path, embedder: Any, limit: int = DEFAULT_LIMIT,
          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embed up to ``limit`` faces of ``folder`` (one per image, photo-collection face choice)."""
    from pam_faceid.faces import FacePipeline, load_image

    pipeline = FacePipeline(policy="centre", min_size=20)
    files = image_files(folder, limit)
    crops = []
    for index, path in enumerate(files, 1):
        image = load_image(path)
        if image is not None:
            crop, _reason = pipeline.process(image)
            if crop is not None:
                crops.append(crop)
        if progress:
            progress(index, len(files))
    if len(crops) < 10:
        raise NegativesError(f"{folder}: only {len(crops)} usable faces in {len(files)} images; need at least 10")
    out = [embedder.embed(np.stack(crops[i:i + 64])) for i in range(0, len(crops), 64)]
    return np.concatenate(out).astype(np.float32)


def save(state_dir: str | os.PathLike[str], embeddings: np.ndarray, model_id: str, source: str) -> Path:
    """Cache the bank root-only and atomically (same writer as the enrolments)."""
    from pam_faceid.store import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, embeddings=embeddings.astype(np.float32), model_id=np.array(model_id), source=np.array(source))
    path = bank_path(state_dir)
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load(state_dir: str | os.PathLike[str], model_id: str) -> np.ndarray:
    """The cached bank for this model; NegativesError says how to build it when absent or stale."""
    path = bank_path(state_dir)
    try:
        with np.load(path, allow_pickle=False) as data:
            cached_id = str(data["model_id"])
            embeddings = np.asarray(data["embeddings"], np.float32)
    except FileNotFoundError:
        raise NegativesError("no negative bank yet: give --negatives DIR (a folder of other people's face photos)") \
            from None
    except (OSError, ValueError, KeyError) as exc:
        raise NegativesError(f"{path}: unreadable ({exc}); build it again with --negatives DIR") from None
    if cached_id != model_id:
        raise NegativesError(f"{path} was built with model {cached_id!r}, not {model_id!r}: "
                             "build it again with --negatives DIR")
    return embeddings
