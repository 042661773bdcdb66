"""The negative bank: base embeddings of other people's faces, for calibration and per-user retraining.

Two banks, one format of vector (the base model's unit embeddings):

- The shipped bank (the default): ``<model_dir>/negatives.npy``, float16
  [N,128], one face for each of ~3,500 identities of ``../shared/faces/train``
  (lfw, celeba, glint, yaleb), written beside the model by the lead after
  training with ``python -m pam_faceid.model.negatives build MODEL_DIR ROOT...``
  and described by ``negatives.json`` (model id, count, sources, sha256). It
  is model-specific, so it is rebuilt whenever the base model changes; a bank
  for another model id is refused, never silently used.
- An admin-built bank (the option): ``faceid calibrate --negatives DIR`` embeds
  any folder of face photos of people other than the users, on the admin's
  machine, and caches it root-only at ``<state_dir>/negatives.npz`` keyed by
  the model id. When present and current it is preferred to the shipped one.

Why ship embeddings and not images: the bank is only ever compared with
vectors, so vectors are all it needs. 3,500 faces as float16 embeddings are
under 1 MB, against ~130 MB for aligned crops; they carry no names, file
names or pixels, one face per person, and getting a likeness back out of a
128-number vector takes a dedicated inversion attack that gives a blurry
guess at best. That makes it the compact and least revealing form, though
not an anonymous one: the vectors are still derived from those photographs,
whose collections are licensed for research and non-commercial use, and the
bank inherits those terms. A distribution outside them should rebuild the
bank from faces it may use (``build`` with other roots, or the admin bank).

Only ``train/`` identities go in: ``dev/`` is for measuring, and a bank that
shaped retraining or thresholds with dev people would make every dev number
a little too good. ``build`` refuses a root inside a ``dev`` folder.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pam_faceid.common.images import read_image
from pam_faceid.common.store import atomic_write_bytes
from pam_faceid.model.dataset import DatasetError, scan_dataset
from pam_faceid.model.holdout import held_out
from pam_faceid.vision.embedder import Embedder, ModelError, ONNX_FILE, model_id_of
from pam_faceid.vision.faces import FacePipeline


BANK_FILE = "negatives.npz"
DEFAULT_LIMIT = 1000
SHIPPED_FILE = "negatives.npy"
SHIPPED_META = "negatives.json"
SHIPPED_FORMAT = "pam_faceid.negatives"
SHIPPED_LIMIT = 4000
TRIES_PER_IDENTITY = 3


class NegativesError(Exception):
    """No usable bank: none built yet, the folder has no faces, or the file is unreadable."""


def bank_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / BANK_FILE


def _people(root: Path) -> list[list[Path]]:
    """Each identity's sorted image files under ROOT/IDENTITY/ (dataset.scan_dataset's rules), by identity name,
    less the same-camera identities held out for measuring (model.holdout)."""
    skip = held_out(root)
    try:
        return [paths for name, paths in scan_dataset(root).images().items() if name not in skip]
    except DatasetError as exc:
        raise NegativesError(str(exc)) from None


def image_files(folder: Path, limit: int) -> list[Path]:
    """Up to ``limit`` image files of ``folder``'s identity sub-folders, taken round-robin."""
    ordered = _people(folder)
    picked: list[Path] = []
    depth = 0
    while len(picked) < limit and any(depth < len(g) for g in ordered):
        picked.extend(g[depth] for g in ordered if depth < len(g))
        depth += 1
    return picked[:limit]


def build(folder: Path, embedder: Any, limit: int = DEFAULT_LIMIT,
          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embed up to ``limit`` faces of ``folder`` (one per image, photo-collection face choice)."""
    pipeline = FacePipeline(policy="centre", min_size=20, spec=embedder.input)
    files = image_files(folder, limit)
    crops = []
    for index, path in enumerate(files, 1):
        image = read_image(path)
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


# ---------------------------------------------------------------- the shipped bank (beside the model)

def _file_sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _source_name(root: Path) -> str:
    """"train/lfw" for ../shared/faces/train/lfw: where the faces came from, without the machine's paths."""
    parts = root.resolve().parts
    return "/".join(parts[parts.index("faces") + 1:]) if "faces" in parts[:-1] else root.name


def identity_folders(roots: Sequence[str | os.PathLike[str]], limit: int) -> list[list[Path]]:
    """Up to ``limit`` identities (ROOT/IDENTITY/ folders), each as its sorted image files, spread over the roots.

    A root inside a ``dev`` folder is refused (dev is for measuring only), and
    so is one without identity sub-folders (unlabeled faces cannot promise
    one face per person).
    """
    per_root: list[list[list[Path]]] = []
    for root in map(Path, roots):
        if "dev" in root.resolve().parts:
            raise NegativesError(f"{root}: inside a dev/ folder; the bank takes train/ identities only "
                                 "(dev/ is for measuring)")
        if not root.is_dir():
            raise NegativesError(f"{root}: not a folder")
        people = _people(root)
        if not people:
            raise NegativesError(f"{root}: no ROOT/IDENTITY/IMAGE sub-folders")
        per_root.append(people)
    total = sum(len(p) for p in per_root)
    if total <= limit:
        return [person for people in per_root for person in people]
    picked: list[list[Path]] = []
    for people in per_root:  # each root keeps its share, evenly spaced through its sorted identities
        share = max(1, round(limit * len(people) / total))
        picked.extend(people[int(i * len(people) / share)] for i in range(min(share, len(people))))
    return picked[:limit]


def build_shipped(model_dir: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]],
                  limit: int = SHIPPED_LIMIT, progress: bool = True) -> Path:
    """Embed one face per identity of ``roots`` with the model in ``model_dir`` and write the bank beside it.

    Faces are found as evaluation and training find them (FacePipeline,
    centre policy); an identity whose first few images have no usable face
    is left out. Writes negatives.npy (float16) and negatives.json atomically.
    """
    from tqdm import tqdm


    model_dir = Path(model_dir)
    embedder = Embedder(model_dir, "onnx")
    people = identity_folders(roots, limit)
    pipeline = FacePipeline(policy="centre", min_size=20, spec=embedder.input)
    crops = []
    for files in tqdm(people, desc="negative bank", unit="person", disable=not progress):
        for path in files[:TRIES_PER_IDENTITY]:
            image = read_image(path)
            crop = pipeline.process(image)[0] if image is not None else None
            if crop is not None:
                crops.append(crop)
                break
    if len(crops) < 100:
        raise NegativesError(f"only {len(crops)} of {len(people)} identities have a usable face; need at least 100")
    vectors = np.concatenate([embedder.embed(np.stack(crops[i:i + 64])) for i in range(0, len(crops), 64)])
    buf = io.BytesIO()
    np.save(buf, vectors.astype(np.float16))
    data = buf.getvalue()
    meta = {
        "format": SHIPPED_FORMAT, "version": 1, "model_id": model_id_of(embedder),
        "model_sha256": _file_sha256(model_dir / ONNX_FILE), "count": len(vectors), "identities_tried": len(people),
        "one_face_per_identity": True, "sources": sorted({_source_name(Path(r)) for r in roots}),
        "dtype": "float16", "sha256": hashlib.sha256(data).hexdigest(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "built_by": "python -m pam_faceid.model.negatives build",
    }
    atomic_write_bytes(model_dir / SHIPPED_FILE, data, mode=0o644)
    atomic_write_bytes(model_dir / SHIPPED_META, json.dumps(meta, indent=1, sort_keys=True).encode() + b"\n",
                       mode=0o644)
    return model_dir / SHIPPED_FILE


def load_shipped(model_dir: str | os.PathLike[str], model_id: str) -> np.ndarray:
    """The bank shipped beside the model, as float32 unit vectors; NegativesError when absent, corrupt or stale."""
    model_dir = Path(model_dir)
    path, meta_path = model_dir / SHIPPED_FILE, model_dir / SHIPPED_META
    try:
        data = path.read_bytes()
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise NegativesError(f"no negative bank shipped with the model in {model_dir} "
                             "(build it: python -m pam_faceid.model.negatives build MODEL_DIR ROOT...)") from None
    except (OSError, ValueError) as exc:
        raise NegativesError(f"{meta_path}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != SHIPPED_FORMAT:
        raise NegativesError(f"{meta_path}: not a {SHIPPED_FORMAT} description")
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        raise NegativesError(f"{path}: does not match the sha256 in {meta_path.name}; build it again")
    onnx = model_dir / ONNX_FILE
    stale = meta.get("model_id") != model_id or (onnx.exists() and _file_sha256(onnx) != meta.get("model_sha256"))
    if stale:
        raise NegativesError(f"{path} was built for model {meta.get('model_id')!r}, not this one ({model_id!r}): "
                             "build it again with python -m pam_faceid.model.negatives build")
    try:
        vectors = np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32)
    except ValueError as exc:
        raise NegativesError(f"{path}: corrupt ({exc})") from None
    if vectors.ndim != 2 or not len(vectors) or not np.all(np.isfinite(vectors)):
        raise NegativesError(f"{path}: not a [N, D] array of finite numbers")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def load_default(state_dir: str | os.PathLike[str], model_dir: str | os.PathLike[str],
                 model_id: str) -> tuple[np.ndarray, str]:
    """(bank, where it came from): the admin's cached bank when current for this model, else the shipped one."""
    try:
        return load(state_dir, model_id), f"admin bank {bank_path(state_dir)}"
    except NegativesError as admin_problem:
        try:
            return load_shipped(model_dir, model_id), f"shipped bank {Path(model_dir) / SHIPPED_FILE}"
        except NegativesError as shipped_problem:
            if bank_path(state_dir).exists():
                raise admin_problem from None
            raise NegativesError(f"{shipped_problem}; or give the admin bank with "
                                 "faceid calibrate --negatives DIR") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m pam_faceid.model.negatives build MODEL_DIR ROOT...``: the lead runs it after training a model."""
    parser = argparse.ArgumentParser(
        prog="python -m pam_faceid.model.negatives",
        description="Write the negative bank (negatives.npy + negatives.json) beside a model: one face per "
                    "identity of the given ROOT/IDENTITY/IMAGE folders, embedded by that model. Use train/ "
                    "folders only, never dev/.",
        epilog="example:\n  python -m pam_faceid.model.negatives build pam_faceid/data/model ../shared/faces/train/lfw "
               "../shared/faces/train/celeba ../shared/faces/train/glint ../shared/faces/train/yaleb",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_cmd = sub.add_parser("build", help="build the bank for a model folder")
    build_cmd.add_argument("model_dir", metavar="MODEL_DIR")
    build_cmd.add_argument("roots", metavar="ROOT", nargs="+", help="ROOT/IDENTITY/IMAGE folders of train/")
    build_cmd.add_argument("--limit", type=int, default=SHIPPED_LIMIT, help=f"most identities (default {SHIPPED_LIMIT})")
    args = parser.parse_args(argv)

    try:
        path = build_shipped(args.model_dir, args.roots, args.limit)
    except (NegativesError, ModelError) as exc:
        print(f"negatives: {exc}", file=sys.stderr)
        return 1
    meta = json.loads((path.parent / SHIPPED_META).read_text())
    print(f"wrote {path}: {meta['count']} faces of {meta['identities_tried']} identities from "
          f"{', '.join(meta['sources'])}, {path.stat().st_size // 1024} KiB, model {meta['model_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
