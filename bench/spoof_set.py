"""Write a spoof test set to disk: presentation attacks and genuine sessions from real faces.

The sessions themselves (what each kind is, how the camera is simulated, and
the honest limits of the genuine stand-ins) are rendered by
bench/spoof_sessions.py; this script
picks identities, renders ``--count`` sessions of every kind and writes them as
JPEG frame folders with a ``manifest.json`` for bench/liveness.py.

Images are read from ../shared/faces (read-only) and sessions are written
under the given output folder (never inside the repository).

    .venv/bin/python -m bench.spoof_set --out /tmp/spoof_set --count 24
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np

from bench.spoof_sessions import (ATTACK_KINDS, GENUINE_KINDS, KINDS, Source, identities, load_sources,  # noqa: F401
                                  make_session, still_sources)
from pam_faceid.common.images import read_image

REPO = Path(__file__).resolve().parents[1]
SHARED_FACES = REPO.parent / "shared" / "faces"

log = logging.getLogger("spoof_set")


def generate(out_dir: Path, *, split: str = "dev/lfw", still_split: str = "train/yaleb", count: int = 24,
             frames: int = 10, seed: int = 0, kinds: Sequence[str] = KINDS, faces_root: Path = SHARED_FACES,
             progress: Callable[[Iterator], Iterator] | None = None, pad_to: int = 0) -> list[dict]:
    """Write ``count`` sessions of every kind to ``out_dir`` and return the manifest rows.

    Identities are drawn (seeded) from those with at least 6 photos in ``split``;
    ``genuine_still`` uses ``still_split`` (Extended Yale B). ``pad_to`` mirrors tight
    crops (train/'s 150x150) out to that size, as dev/lfw's whole 250x250 frames are
    (spoof_sessions.locate).
    """
    from pam_faceid.vision.faces import FacePipeline

    root = faces_root / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: face images not found (../shared/faces ships beside the repo)")
    resolved = out_dir.resolve()
    if resolved == REPO or REPO in resolved.parents:
        raise ValueError(f"{out_dir}: generated face sessions must not be written inside the repository")
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pipeline = FacePipeline(policy="centre")
    people = identities(root, 6)
    picked = [people[i] for i in rng.choice(len(people), size=min(count, len(people)), replace=False)]
    still_people = identities(faces_root / still_split, 6) if "genuine_still" in kinds else []
    jobs: list[tuple[str, Path]] = []
    for person in picked:
        jobs += [(k, person) for k in kinds if k != "genuine_still"]
    for i in range(count if still_people else 0):
        jobs.append(("genuine_still", still_people[i % len(still_people)]))
    cache: dict[tuple[Path, str], list[Source]] = {}
    rows = []
    iterator = progress(iter(jobs)) if progress else iter(jobs)
    for n, (kind, person) in enumerate(iterator):
        key = (person, "still" if kind == "genuine_still" else "photos")
        if key not in cache:
            cache[key] = still_sources(person, pipeline) if kind == "genuine_still" else load_sources(person, pipeline, 40, pad_to)
        sources = cache[key]
        if len(sources) < (frames if kind == "genuine_still" else 3):
            log.warning("skipping %s for %s: only %d usable photos", kind, person.name, len(sources))
            continue
        session = make_session(kind, sources, np.random.default_rng([seed, n]), frames)
        folder = out_dir / kind / f"{n:04d}_{person.name}"
        folder.mkdir(parents=True, exist_ok=True)
        camera_q = session.jpeg_quality
        for t, frame in enumerate(session.frames):
            ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, camera_q])
            (folder / f"{t:03d}.jpg").write_bytes(data.tobytes())
        rows.append({"session": str(folder.relative_to(out_dir)), "kind": kind, "attack": session.attack,
                     "identity": session.identity, "frames": len(session.frames), "sources": session.sources,
                     "params": session.params})
    (out_dir / "manifest.json").write_text(json.dumps({"split": split, "still_split": still_split, "seed": seed,
                                                       "pad_to": pad_to,
                                                       "frames": frames, "sessions": rows}, indent=1))
    return rows


def read_sessions(out_dir: Path) -> Iterator[tuple[dict, list[np.ndarray]]]:
    """(manifest row, frames) for every session a previous ``generate`` wrote."""
    manifest = json.loads((out_dir / "manifest.json").read_text())
    for row in manifest["sessions"]:
        folder = out_dir / row["session"]
        frames = [read_image(p) for p in sorted(folder.glob("*.jpg"))]
        yield row, frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="output folder (default: a new temporary folder)")
    parser.add_argument("--split", default="dev/lfw", help="identities for attacks and genuine_photos (default dev/lfw)")
    parser.add_argument("--still-split", default="train/yaleb", help="fixed-pose identities for genuine_still")
    parser.add_argument("--count", type=int, default=24, help="sessions per kind (default 24)")
    parser.add_argument("--frames", type=int, default=10, help="frames per session (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faces-root", type=Path, default=SHARED_FACES,
                        help="where --split and --still-split are (default ../shared/faces)")
    parser.add_argument("--pad-to", type=int, default=0,
                        help="mirror smaller photos out to this size (250 for train/'s crops; default 0: as they are)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds (default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="spoof_set_"))
    try:
        from tqdm import tqdm
        progress = lambda it: tqdm(list(it), unit="session")  # noqa: E731
    except ImportError:
        progress = None
    rows = generate(out, split=args.split, still_split=args.still_split, count=args.count, frames=args.frames,
                    seed=args.seed, kinds=kinds, progress=progress,
                    pad_to=args.pad_to, faces_root=args.faces_root)
    print(f"{len(rows)} sessions written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
