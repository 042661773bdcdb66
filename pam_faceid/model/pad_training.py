"""Fine-tune the imported MiniFASNet pair on labelled captures: python -m pam_faceid.model.pad_training.

The imported weights were trained on about 5 M private real and attack
images; they refuse the real replays in ../shared/spoof but let about a
quarter of the bench's rendered prints and screens in (docs/liveness.md).
This step teaches both networks those renderings while keeping what cannot
be rendered:

- data: capture folders as ``faceid liveness`` reads them (``real/`` and
  ``genuine*`` kinds bona fide, every other kind an attack; bench/spoof_set.py
  writes such folders from ``train/`` identities), plus photos of live people
  (``--live``, bona fide); every frame goes through faceidd's decoding, face
  choice and crops (model.pad.faces_of, vision.antispoof.crops);
- only the layers from ``--learn-from`` up learn, on the lower layers' outputs
  computed once (a mirrored copy too), and batch norm keeps the imported
  statistics; the weights are pulled towards the imported ones (L2-SP);
- each kind weighs the same in every epoch, whatever its frame count;
- identities (a session folder's ``NNNN_person`` name, a photo's folder) are
  split into train and validation by a hash; the epoch with the lowest
  validation error (mean of the attack and bona fide frame error rates at
  P(real) 0.5) is kept.

``../shared/spoof``, ``dev/`` and sets rendered from ``dev/`` are refused:
they measure the result. The output folder gets ``pair.pt`` (both state
dicts) and ``training.json`` (data, settings, every epoch's figures).
``python -m pam_faceid.model.minifasnet export --finetuned DIR --out OUT``
turns them into a model for ``faceid liveness --model OUT`` and
bench/liveness_models.py to measure. None is shipped: on real captures the
fine-tuned heads did worse than the imported ones (docs/liveness.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pam_faceid import source_commit
from pam_faceid.common.store import atomic_write_bytes
from pam_faceid.model import minifasnet, pad
from pam_faceid.vision import antispoof
from pam_faceid.vision.faces import FacePipeline

log = logging.getLogger("pad_training")

REAL, ATTACK = antispoof.REAL, 0
"""Class indices of the networks' softmax: real, and 2-D attack (prints, screens, replays)."""


@dataclass
class Crops:
    """Every scored frame's crops [N, 2, 3, 80, 80] (uint8), its label, kind and identity."""

    x: np.ndarray
    label: np.ndarray
    kind: list[str]
    identity: list[str]


SHARED = Path(__file__).resolve().parents[2].parent / "shared"
MEASURED = (SHARED / "spoof", SHARED / "faces" / "dev")


def measured(folder: Path) -> str | None:
    """Why ``folder`` holds data that measures liveness (../shared/spoof, dev/, a set rendered from dev/), or None."""
    resolved = folder.resolve()
    for root in MEASURED:
        if resolved == root or root in resolved.parents:
            return f"it is inside {root}"
    manifest = folder / "manifest.json"
    if manifest.is_file():
        split = str(json.loads(manifest.read_text()).get("split", ""))
        if split.startswith("dev"):
            return f"bench/spoof_set.py rendered it from {split}"
    return None


def identity_of(session: pad.Session) -> str:
    """The person a capture shows: bench/spoof_set.py's ``NNNN_person`` folder, or a photo's folder."""
    if session.still:
        return session.path.parent.name
    return session.path.name.split("_", 1)[-1]


def is_validation(identity: str, fraction: float) -> bool:
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2 ** 32 < fraction


def collect(sessions: list[pad.Session], max_frames: int, progress: bool = True) -> Crops:
    """The crops faceidd would score in each session (at most ``max_frames`` per session)."""
    pipeline = FacePipeline()
    xs, labels, kinds, people = [], [], [], []
    for session in tqdm(sessions, unit="session", disable=not progress, desc="crops"):
        for frame, face in pad.faces_of(session, pipeline.find, max_frames):
            xs.append(np.clip(antispoof.crops(frame, face.box), 0, 255).astype(np.uint8))
            labels.append(REAL if session.bona_fide else ATTACK)
            kinds.append(session.kind)
            people.append(identity_of(session))
    x = np.stack(xs) if xs else np.zeros((0, len(antispoof.SCALES), 3, antispoof.SIZE, antispoof.SIZE), np.uint8)
    return Crops(x, np.array(labels, np.int64), kinds, people)


def frame_errors(pair: minifasnet.Pair, crops: Crops, batch: int = 256) -> dict[str, dict]:
    """Per kind: frames, and the share on the wrong side of P(real) 0.5 (the pair's mean, as faceidd scores)."""
    scores = predict(pair, crops.x, batch)
    out: dict[str, dict] = {}
    for kind in sorted(set(crops.kind)):
        idx = [i for i, k in enumerate(crops.kind) if k == kind]
        live = scores[idx] >= 0.5
        wrong = ~live if pad.is_bona_fide(kind) else live
        out[kind] = {"frames": len(idx), "error": round(float(wrong.mean()), 4)}
    return out


def predict(pair: minifasnet.Pair, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """Mean P(real) of the two networks for uint8 crops [N, 2, 3, 80, 80]."""
    pair.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            chunk = torch.from_numpy(x[i:i + batch].astype(np.float32))
            out.append(pair(chunk[:, 0], chunk[:, 1])[:, :, REAL].mean(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def balanced_error(errors: dict[str, dict]) -> float:
    """Mean of the attack kinds' mean error and the bona fide kinds' mean error."""
    attack = [e["error"] for k, e in errors.items() if not pad.is_bona_fide(k)]
    bona = [e["error"] for k, e in errors.items() if pad.is_bona_fide(k)]
    return (float(np.mean(attack)) + float(np.mean(bona))) / 2


def features(pair: minifasnet.Pair, x: np.ndarray, learn_from: str, batch: int = 256) -> list[np.ndarray]:
    """Per network, the trunk's output (float16) for each crop and its mirror image: [N, 2, C, H, W].

    The trunk does not learn, so it runs once per crop rather than once per epoch:
    what makes fine-tuning take minutes on two cores rather than hours.
    """
    out: list[list[np.ndarray]] = [[], []]
    with torch.no_grad():
        for i in tqdm(range(0, len(x), batch), unit="batch", desc="trunk", leave=False):
            chunk = torch.from_numpy(x[i:i + batch].astype(np.float32))
            for n, net in enumerate((pair.first, pair.second)):
                views = [net.trunk(chunk[:, n], learn_from), net.trunk(chunk[:, n].flip(-1), learn_from)]
                out[n].append(torch.stack(views, dim=1).half().numpy())
    return [np.concatenate(parts) for parts in out]


def train(pair: minifasnet.Pair, data: Crops, val: Crops, *, epochs: int, lr: float, pull: float, batch: int,
          seed: int, learn_from: str) -> tuple[minifasnet.Pair, list[dict]]:
    """Fine-tune both networks' top layers; returns the pair at the best validation epoch and every epoch's figures."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pair.eval()  # batch norm keeps the imported statistics throughout; only the weights learn
    learned = [f"{net}.{name}" for net in ("first", "second") for name in getattr(pair, net).head_parameters(learn_from)]
    params = dict(pair.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in learned)
    anchor = {n: params[n].detach().clone() for n in learned}
    optimiser = torch.optim.AdamW([params[n] for n in learned], lr=lr, weight_decay=0.0)
    feats = features(pair, data.x, learn_from)
    counts = Counter(data.kind)
    weight = np.array([1.0 / counts[k] for k in data.kind])
    weight /= weight.sum()
    steps = max(1, len(data.x) // batch)
    imported = frame_errors(pair, val)
    history: list[dict[str, Any]] = [{"epoch": 0, "validation": imported,
                                      "balanced_error": round(balanced_error(imported), 4)}]
    best = (balanced_error(imported), {k: v.clone() for k, v in pair.state_dict().items()}, 0)
    log.info("epoch 0 (imported weights): validation balanced error %.4f", best[0])
    for epoch in range(1, epochs + 1):
        started, total = time.monotonic(), 0.0
        for _ in tqdm(range(steps), unit="batch", desc=f"epoch {epoch}", leave=False):
            idx = rng.choice(len(data.x), size=batch, p=weight)
            view = rng.integers(0, 2, size=batch)
            y = torch.from_numpy(data.label[idx])
            loss = sum(F.cross_entropy(net.head(torch.from_numpy(f[idx, view].astype(np.float32)), learn_from), y)
                       for net, f in zip((pair.first, pair.second), feats))
            loss = loss + pull * sum(((params[n] - anchor[n]) ** 2).sum() for n in learned)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        errors = frame_errors(pair, val)
        error = balanced_error(errors)
        history.append({"epoch": epoch, "loss": round(total / steps, 4),
                        "seconds": round(time.monotonic() - started, 1), "validation": errors,
                        "balanced_error": round(error, 4)})
        log.info("epoch %d: loss %.4f, validation balanced error %.4f (%s)", epoch, total / steps, error,
                 ", ".join(f"{k} {e['error']:.3f}" for k, e in errors.items()))
        if error < best[0]:
            best = (error, {k: v.clone() for k, v in pair.state_dict().items()}, epoch)
    pair.load_state_dict(best[1])
    log.info("kept epoch %d", best[2])
    return pair.eval(), history


def cached(sessions: list[pad.Session], max_frames: int, folder: Path, cache: Path | None) -> Crops:
    """``collect``'s crops of one folder, kept in ``cache`` (a folder) under a name made of the folder and settings."""
    if cache is None:
        return collect(sessions, max_frames)
    key = hashlib.sha256(f"{folder.resolve()}|{len(sessions)}|{max_frames}".encode()).hexdigest()[:16]
    path = cache / f"crops_{folder.name}_{key}.npz"
    if path.is_file():
        with np.load(path) as saved:
            return Crops(saved["x"], saved["label"], [str(k) for k in saved["kind"]], [str(i) for i in saved["identity"]])
    crops = collect(sessions, max_frames)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=crops.x, label=crops.label, kind=np.array(crops.kind), identity=np.array(crops.identity))
    return crops


def join(parts: list[Crops]) -> Crops:
    return Crops(np.concatenate([p.x for p in parts]), np.concatenate([p.label for p in parts]),
                 [k for p in parts for k in p.kind], [i for p in parts for i in p.identity])


def subset(crops: Crops, keep: np.ndarray) -> Crops:
    idx = np.flatnonzero(keep)
    return Crops(crops.x[idx], crops.label[idx], [crops.kind[i] for i in idx], [crops.identity[i] for i in idx])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pam_faceid.model.pad_training",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, nargs="+", required=True,
                        help="capture folders (kind folders inside), e.g. written by bench/spoof_set.py from train/")
    parser.add_argument("--live", type=Path, nargs="*", default=[], help="folders of photos of live people (bona fide)")
    parser.add_argument("--live-limit", type=int, default=1500, help="photos per --live folder (default 1500)")
    parser.add_argument("--frames", type=int, default=10, help="frames per session (default 10)")
    parser.add_argument("--source", type=Path, default=minifasnet.DEFAULT_SOURCE, help="the imported .pth files")
    parser.add_argument("--out", type=Path, required=True, help="folder for pair.pt and training.json")
    parser.add_argument("--cache", type=Path, help="folder for each source's crops: written once, read on later runs")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pull", type=float, default=1e-3, help="L2-SP weight towards the imported weights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--validation", type=float, default=0.15, help="share of identities held out (default 0.15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learn-from", default="conv_4", choices=minifasnet.ORDER,
                        help="the first layer that learns; those below keep the imported weights (default conv_4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in [*args.sets, *args.live]:
        problem = measured(path)
        if problem:
            parser.error(f"{path}: {problem}, which measures the result and is never trained on")
    sources = [(folder, pad.scan([folder])) for folder in args.sets]
    sources += [(folder, pad.scan_bona_fide(folder, args.live_limit)) for folder in args.live]
    crops = join([cached(sessions, args.frames, folder, args.cache) for folder, sessions in sources])
    held = np.array([is_validation(p, args.validation) for p in crops.identity])
    data, val = subset(crops, ~held), subset(crops, held)
    if not len(data.x) or not len(val.x):
        parser.error(f"{len(data.x)} frames for training and {len(val.x)} for validation: both need faces "
                     "(more people, or another --validation)")
    log.info("%d frames for training, %d for validation; kinds: %s", len(data.x), len(val.x),
             dict(Counter(crops.kind)))
    pair = minifasnet.load_pair(args.source)
    pair, history = train(pair, data, val, epochs=args.epochs, lr=args.lr, pull=args.pull, batch=args.batch,
                          seed=args.seed, learn_from=args.learn_from)
    args.out.mkdir(parents=True, exist_ok=True)
    weights = io.BytesIO()
    torch.save({"first": pair.first.state_dict(), "second": pair.second.state_dict()}, weights)
    atomic_write_bytes(args.out / "pair.pt", weights.getvalue(), mode=0o644)
    report = {"command": "python -m pam_faceid.model.pad_training " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": source_commit(), "sets": [str(s) for s in args.sets], "live": [str(s) for s in args.live],
              "frames": {"train": len(data.x), "validation": len(val.x)},
              "settings": {k: getattr(args, k) for k in ("epochs", "lr", "pull", "batch", "validation", "seed",
                                                        "frames", "live_limit", "learn_from")},
              "history": history}
    atomic_write_bytes(args.out / "training.json", json.dumps(report, indent=1).encode(), mode=0o644)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
