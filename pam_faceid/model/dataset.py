"""Labelled face folders: the one scanner of ``ROOT/IDENTITY/IMAGE``, and aligned crops, cached.

Evaluation, training, the template fit and the negative bank read folders laid out ``ROOT/IDENTITY/IMAGE``
through ``scan_dataset`` (two levels, nothing recursed or followed, every oddity skipped and counted).
Every image is detected and aligned once by ``faces.FacePipeline`` (the
same code authentication uses, with the model's input spec) and the crops
are cached in one ``.npz`` per folder and spec, so later runs pay nothing
for detection.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pam_faceid.common.images import IMAGE_SUFFIXES, entry_kind
from pam_faceid.model.holdout import held_out
from pam_faceid.vision.embedder import InputSpec
from pam_faceid.common.images import read_image
from pam_faceid.vision.faces import FacePipeline

log = logging.getLogger(__name__)

CACHE_VERSION = 2


class DatasetError(ValueError):
    """A face folder that cannot be read as DATASET/IDENTITY/IMAGE: one line for the user."""


def show_path(path: Path | str) -> str:
    """Path text safe to print: undecodable bytes in file names become escapes instead of crashing the output."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Dataset:
    """The candidate image files of ``root``, by identity, sorted by file name; what was skipped, by reason."""

    root: Path
    identities: dict[str, list[Path]]
    skipped: Counter = field(default_factory=Counter)

    @property
    def files(self) -> int:
        return sum(len(paths) for paths in self.identities.values())

    def images(self) -> dict[str, list[Path]]:
        """The identities' files with an image suffix (training and the negative bank read only those)."""
        named = ((name, [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES])
                 for name, paths in self.identities.items())
        return {name: paths for name, paths in named if paths}


def _sorted_entries(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _entries_of_kind(folder: Path, names: list[str], wanted: str, skipped: Counter, other: str) -> list[Path]:
    """The entries of ``folder`` that are a ``wanted`` ("file" or "dir"); the other of the two is counted in
    ``skipped`` as ``other``, hidden entries and anything else (links, devices...) by what they are."""
    found = []
    for name in names:
        path = folder / name
        kind = "hidden entry" if name.startswith(".") else entry_kind(path)
        if kind == wanted:
            found.append(path)
        else:
            skipped[other if kind in ("file", "dir") else kind] += 1
    return found


def scan_dataset(root: Path | str) -> Dataset:
    """List ``root/IDENTITY/FILE`` without reading any image; raise DatasetError when there is nothing in it.

    Only two levels are looked at, so nested folders and symlink loops cannot
    recurse; they and other non-files are skipped and counted by reason.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder {show_path(root)} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{show_path(root)} is not a folder (expected DATASET/IDENTITY/IMAGE)")
    try:
        names = _sorted_entries(root)
    except OSError as exc:
        raise DatasetError(f"cannot list dataset folder {show_path(root)}: {exc.strerror}") from None
    identities: dict[str, list[Path]] = {}
    skipped: Counter = Counter()
    folders = _entries_of_kind(root, names, "dir", skipped, other="file outside an identity folder")
    for path in folders:
        try:
            entries = _sorted_entries(path)
        except OSError as exc:
            skipped[f"unreadable identity folder ({exc.strerror})"] += 1
            continue
        files = _entries_of_kind(path, entries, "file", skipped, other="nested folder")
        if files:
            identities[path.name] = files
    if not folders:
        raise DatasetError(f"no identity folders in {show_path(root)} (expected DATASET/IDENTITY/IMAGE)")
    return Dataset(root=root, identities=identities, skipped=skipped)


def scan_labelled(root: Path) -> list[tuple[Path, str]]:
    """(image, identity) for every image in ROOT/IDENTITY/, sorted by name (scan_dataset's rules).

    The same-camera identities held out for measuring (model.holdout) are never listed: nothing trains on them.
    """
    skip = held_out(root)
    return [(image, name) for name, images in scan_dataset(root).images().items() if name not in skip
            for image in images]


@dataclass
class FaceSet:
    """Aligned crops with their identity labels."""

    crops: np.ndarray  # [N,S,S,3] uint8 BGR, S = the model's input size
    labels: np.ndarray  # [N] int64
    paths: list[str]
    identities: list[str]  # label -> identity name
    scanned: int  # images looked at, including those without a usable face

    def __len__(self) -> int:
        return len(self.crops)


_worker: dict = {}


def _init_worker(spec: InputSpec) -> None:
    import cv2

    cv2.setNumThreads(1)
    _worker["pipeline"] = FacePipeline(policy="centre", min_size=20, spec=spec)


def _prepare_one(path: str):
    image = read_image(path)
    return None if image is None else _worker["pipeline"].process(image)[0]


def _cache_key(paths: list[str], spec: InputSpec) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION} {spec.size} {spec.template.round(3).tolist()}\n".encode())
    for p in paths:
        digest.update(f"{p}\t{os.path.getsize(p)}\n".encode())
    return digest.hexdigest()[:20]


def prepare(items: list[tuple[Path, str]], cache_dir: Path, spec: InputSpec, *, workers: int = 2,
            progress: bool = True) -> FaceSet:
    """Detect and align every image, or read the cache."""
    from tqdm import tqdm

    paths = [str(Path(p).resolve()) for p, _ in items]  # the same files by any spelling share one cache
    cache = Path(cache_dir) / f"faces-{_cache_key(paths, spec)}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        log.info("read %d aligned faces from cache %s", len(data["labels"]), cache)
        return FaceSet(data["crops"], data["labels"], list(data["paths"]), list(data["identities"]),
                       int(data["scanned"]))
    identities = sorted({name for _, name in items})
    index = {name: i for i, name in enumerate(identities)}
    crops, labels, kept = [], [], []
    with get_context("fork").Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        results = pool.imap(_prepare_one, paths, chunksize=16)
        for (path, name), crop in tqdm(zip(items, results), total=len(items), desc="aligning faces",
                                       disable=not progress, unit="img"):
            if crop is not None:
                crops.append(crop)
                labels.append(index[name])
                kept.append(str(path))
    faces = FaceSet(np.stack(crops) if crops else np.zeros((0, spec.size, spec.size, 3), np.uint8),
                    np.asarray(labels, np.int64), kept, identities, len(items))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, crops=faces.crops, labels=faces.labels, paths=np.asarray(kept), identities=np.asarray(identities),
             scanned=faces.scanned)
    os.replace(tmp, cache)
    log.info("aligned %d of %d images; cached in %s", len(faces), len(items), cache)
    return faces


def concat(sets: list[FaceSet]) -> FaceSet:
    """One FaceSet from several, with identity labels kept distinct per source."""
    crops, labels, paths, identities, offset, scanned = [], [], [], [], 0, 0
    for s in sets:
        crops.append(s.crops)
        labels.append(s.labels + offset)
        paths += s.paths
        identities += s.identities
        offset += len(s.identities)
        scanned += s.scanned
    return FaceSet(np.concatenate(crops), np.concatenate(labels), paths, identities, scanned)
