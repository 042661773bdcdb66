"""faceid train-base: fine-tune the imported dlib network as a Siamese embedder (torch; offline).

Triplet loss with margin alpha, ``max(d(A,P) - d(A,N) + alpha, 0)`` on the
unit sphere, as in FaceNet, over batches of P identities x K faces with
online mining (pytorch-metric-learning's loss and miners), plus a term
``anchor * |w - w0|^2 / |w0|^2`` that keeps the weights near the imported
ones. On two CPU cores a whole-network run would take hours, so only the
top ``levels`` of the ResNet learn: everything below is run once per face
and view (the clean crop and augmented ones) and its activations cached.
Identities of the training folders (never dev/) are held out in two
halves: one picks the best fine-tuned epoch, the other decides whether it
or the imported network ships (picking and judging on the same faces would
favour the fine-tuned network by the noise it was picked on). The picked
epoch's weights are written either way (weights.pt), so both networks can
be measured on dev.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator
import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.samplers import MPerClassSampler
from pytorch_metric_learning.utils import common_functions as pml_common
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from pam_faceid import source_commit
from pam_faceid.vision.embedder import default_input, l2_normalise, preprocess
from pam_faceid.model.metrics import tar_at_far
from pam_faceid.model import dataset
from pam_faceid.model.convert import load_network
from pam_faceid.vision import resnet

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"


@dataclass
class TrainConfig:
    roots: list[str]
    out: str = "runs/base"
    cache_dir: str = str(Path.home() / ".cache" / "pam_faceid")
    epochs: int = 8
    steps_per_epoch: int = 100
    levels: int = 2  # top levels of the ResNet that learn (1-5); activations below them are cached
    views: int = 3  # cached views per face: the clean crop and views-1 augmented ones
    seed: int = 0
    ids_per_batch: int = 32  # P
    images_per_id: int = 4  # K
    margin: float = 0.05  # alpha; dlib trained its network with 0.04
    miner: str = "hard"  # hard (batch-hard) | semihard
    optimizer: str = "sgd"  # sgd: steps in proportion to the gradient; adamw moves every weight by ~lr
    lr: float = 1e-4
    anchor: float = 10.0  # weight of the relative squared distance to the imported weights
    val_fraction: float = 0.2  # identities held out: half pick the epoch, half decide
    workers: int = 2
    threads: int = 2
    max_minutes: float = 20.0  # stop after the epoch that passes it; 0 = no limit


def split_identities(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of faces whose identity is held out (identities with 2+ faces only; at least 2 per half)."""
    ids, counts = np.unique(labels, return_counts=True)
    multi = ids[counts >= 2]
    if len(multi) < 6:
        raise ValueError(f"{len(multi)} identities with 2+ faces: training needs at least 6 (4 are held out)")
    held = rng.choice(multi, size=max(4, int(len(multi) * fraction)), replace=False)
    return np.isin(labels, held)


def pk_batches(labels: np.ndarray, cfg: TrainConfig, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of P identities x K faces: pytorch-metric-learning's MPerClassSampler over the faces whose
    identity has 2+ training faces (label -1: held out); an identity with fewer than K faces is drawn again."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    usable = np.flatnonzero(np.isin(labels, ids[counts >= 2]))
    p, k = min(cfg.ids_per_batch, int((counts >= 2).sum())), cfg.images_per_id
    pml_common.NUMPY_RANDOM = np.random.RandomState(seed)  # the sampler's draws follow the run's seed
    sampler = MPerClassSampler(labels[usable], m=k, batch_size=p * k,
                               length_before_new_iter=p * k * cfg.steps_per_epoch)
    while True:
        order = np.fromiter(iter(sampler), dtype=np.int64)
        for start in range(0, len(order) - p * k + 1, p * k):
            yield usable[order[start:start + p * k]]


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warmup: float = 0.05) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedule for the run: linear warm-up over the first ``warmup`` of ``total`` steps, then cosine decay."""
    w = max(1, int(total * warmup))
    return torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=max(1, w - 1)),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - w)),
    ], milestones=[w])


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-face random flip, shift, scale, rotation, colour, greyscale and blur of normalised crops.

    Camera frames differ from enrolment photos in exactly these ways; each
    face in the batch gets its own draw.
    """
    n = x.shape[0]

    def u(lo, hi):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = u(-10, 10) * math.pi / 180
    scale = u(0.9, 1.1)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(angle) / scale * flip
    theta[:, 0, 1] = -torch.sin(angle) / scale
    theta[:, 1, 0] = torch.sin(angle) / scale * flip
    theta[:, 1, 1] = torch.cos(angle) / scale
    theta[:, 0, 2] = u(-0.06, 0.06)
    theta[:, 1, 2] = u(-0.06, 0.06)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    brightness = u(-0.25, 0.25).view(n, 1, 1, 1)
    contrast = u(0.7, 1.3).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    grey = (torch.rand(n, generator=gen) < 0.15).view(n, 1, 1, 1)
    x = torch.where(grey, x.mean(dim=1, keepdim=True).expand_as(x), x)
    blur = torch.rand(n, generator=gen) < 0.2
    if blur.any():
        k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
        k = (k[:, None] * k[None, :]) / 256.0
        x_b = F.conv2d(F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5), groups=3)
        x = x.clone()
        x[blur] = x_b
    return x.clamp(-1.0, 1.0)


def triplet_loss_and_miner(margin: float, miner: str):
    """pytorch-metric-learning's TripletMarginLoss on L2 distance between unit vectors."""

    loss = losses.TripletMarginLoss(margin=margin)
    if miner == "hard":
        mine = miners.BatchHardMiner()
    elif miner == "semihard":
        mine = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    else:
        raise ValueError(f"miner {miner!r}: must be semihard or hard")
    return loss, mine


class Top(nn.Module):
    """The learning part: the network's top blocks, average pool, the 128-d projection."""

    def __init__(self, model, start: int):
        super().__init__()
        self.blocks = copy.deepcopy(model.blocks[start:])
        self.fc = copy.deepcopy(model.fc)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(h).mean(dim=(2, 3)))


def cache_activations(model, start: int, faces: dataset.FaceSet, views: int, seed: int, cache_dir: Path,
                      key: str, progress: bool) -> np.ndarray:
    """[views, N, C, H, W] float16 activations below block ``start``: view 0 clean, the others augmented.

    Computing them is most of a run's time, so they are kept in ``cache_dir`` (a file per faces, split,
    views, seed and network) and memory-mapped by later runs.
    """

    spec = default_input()
    digest = hashlib.sha256(f"{key} {start} {views} {seed} {spec.template.round(3).tolist()}\n".encode())
    digest.update("\n".join(faces.paths).encode())
    path = Path(cache_dir) / f"activations-{digest.hexdigest()[:20]}.npy"
    if path.exists():
        log.info("read cached activations %s", path)
        return np.load(path, mmap_mode="r")
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        shape = model.blocks[:start](F.max_pool2d(F.relu(model.aff(model.conv(
            torch.zeros(1, 3, spec.size, spec.size)))), 3, 2)).shape[1:]
        tmp = path.with_suffix(".tmp.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(views, len(faces), *shape))
        for i in tqdm(range(0, len(faces), 64), desc="caching activations", disable=not progress, unit="batch"):
            x = torch.from_numpy(preprocess(faces.crops[i:i + 64], spec))
            for v in range(views):
                h = model.blocks[:start](F.max_pool2d(F.relu(model.aff(model.conv(
                    x if v == 0 else augment(x, gen)))), 3, 2))
                out[v, i:i + len(h)] = h.numpy()
        out.flush()
        del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


def validation_metrics(vectors: np.ndarray, labels: np.ndarray) -> dict:
    """AUC and TAR at FAR 1e-2/1e-3 (as pam_faceid.model.metrics defines them) over all pairs of held-out faces."""

    v = l2_normalise(vectors)
    sims = v @ v.T
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    genuine, impostor = sims[same & upper], sims[~same & upper]
    y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    s = np.r_[genuine, impostor]
    return {"auc": float(roc_auc_score(y, s)), "tar_at_far_1e-2": tar_at_far(genuine, impostor, 1e-2),
            "tar_at_far_1e-3": tar_at_far(genuine, impostor, 1e-3), "genuine_pairs": int(len(genuine)),
            "impostor_pairs": int(len(impostor))}


def score(m: dict) -> float:
    """What decides between epochs and networks: TAR at FAR 1e-3, then AUC."""
    return m["tar_at_far_1e-3"] + m["auc"] / 100


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Fine-tune, pick the best epoch on held-out identities, write weights.pt and report.json."""

    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(cfg.seed)

    model, net, _, _ = load_network()
    spec = default_input()
    faces = dataset.concat([dataset.prepare(dataset.scan_labelled(Path(r)), Path(cfg.cache_dir), spec,
                                            workers=cfg.workers, progress=progress) for r in cfg.roots])
    val_mask = split_identities(faces.labels, cfg.val_fraction, rng)
    labels_train = np.where(val_mask, -1, faces.labels)
    _, counts = np.unique(labels_train[labels_train >= 0], return_counts=True)
    if (counts >= 2).sum() < 2:
        raise ValueError("training needs at least 2 identities with 2 or more faces")
    batches = pk_batches(labels_train, cfg, cfg.seed)
    start = resnet.level_start(cfg.levels)
    cached = cache_activations(model, start, faces, cfg.views, cfg.seed, Path(cfg.cache_dir), net.sha256, progress)
    held = np.unique(faces.labels[val_mask])
    decide_ids = rng.choice(held, size=len(held) // 2, replace=False)
    pick_idx = np.flatnonzero(val_mask & ~np.isin(faces.labels, decide_ids))
    decide_idx = np.flatnonzero(np.isin(faces.labels, decide_ids))

    top = Top(model, start)
    initial = [p.detach().clone() for p in top.parameters()]
    norm = float(sum((p ** 2).sum() for p in initial))

    def validate(idx: np.ndarray) -> dict:
        top.eval()
        h = torch.from_numpy(np.asarray(cached[0, idx], np.float32))
        with torch.inference_mode():
            vectors = torch.cat([top(h[i:i + 256]) for i in range(0, len(h), 256)]).numpy()
        return validation_metrics(vectors, faces.labels[idx])

    imported, imported_decide = validate(pick_idx), validate(decide_idx)
    log.info("imported network, held-out: TAR@FAR1e-3 %.4f AUC %.5f", imported["tar_at_far_1e-3"], imported["auc"])
    best: dict = {}
    best_state = None
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(top.parameters(), lr=cfg.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(top.parameters(), lr=cfg.lr, weight_decay=0.0)
    loss_fn, miner = triplet_loss_and_miner(cfg.margin, cfg.miner)
    history: list[dict] = []
    total = cfg.epochs * cfg.steps_per_epoch
    schedule = warmup_cosine(opt, total)
    for epoch in range(cfg.epochs):
        top.train()
        totals = {"loss": 0.0, "triplet": 0.0, "anchor": 0.0}
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress)
        for _step in bar:
            idx = next(batches)
            views = rng.integers(0, cfg.views, size=len(idx))
            h = torch.from_numpy(np.asarray(cached[views, idx], np.float32))
            lab = torch.from_numpy(labels_train[idx])
            emb = top(h)
            triplet = loss_fn(emb, lab, miner(emb, lab))
            drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(top.parameters(), initial)) / norm
            loss = triplet + cfg.anchor * drift
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            for key, value in (("loss", loss), ("triplet", triplet), ("anchor", drift)):
                totals[key] += float(value.detach()) / cfg.steps_per_epoch
            bar.set_postfix(loss=f"{float(loss):.4f}")
        metrics = validate(pick_idx)
        history.append({"epoch": epoch + 1, **totals, **metrics, "minutes": (time.time() - started) / 60})
        log.info("epoch %d: loss %.4f held-out TAR@FAR1e-3 %.4f AUC %.5f", epoch + 1, totals["loss"],
                 metrics["tar_at_far_1e-3"], metrics["auc"])
        if not best or score(metrics) > score(best):
            best = {"epoch": epoch + 1, **metrics}
            best_state = copy.deepcopy(top.state_dict())
        if cfg.max_minutes and (time.time() - started) / 60 > cfg.max_minutes:
            log.info("stopping after epoch %d: --max-minutes %.0f reached", epoch + 1, cfg.max_minutes)
            break

    top.load_state_dict(best_state)
    full = copy.deepcopy(model)
    for i, block in enumerate(top.blocks):
        full.blocks[start + i] = block
    full.fc = top.fc
    tuned_decide = validate(decide_idx)
    decision = "fine-tuned" if score(tuned_decide) > score(imported_decide) else "imported"
    torch.save(full.state_dict(), out / WEIGHTS_FILE)
    report = {
        "data": {"roots": cfg.roots, "images_scanned": faces.scanned, "faces": len(faces),
                 "identities": len(faces.identities), "train_faces": int((~val_mask).sum()),
                 "pick_faces": int(len(pick_idx)), "decide_faces": int(len(decide_idx)),
                 "held_out_identities": int(len(held))},
        "config": asdict(cfg),
        "source": {"package_sha256": net.sha256, "trained_blocks": f"blocks {start}-{len(model.blocks) - 1} and fc"},
        "imported": imported,
        "history": history,
        "best": best,
        "decide": {"imported": imported_decide, "fine_tuned": tuned_decide},
        "decision": decision,
        "command": " ".join(["faceid", *sys.argv[1:]]) if Path(sys.argv[0]).name != "pytest" else "",
        "seconds": round(time.time() - started, 1),
        "commit": source_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_history(history, imported, out / "training.png")
    return report


def plot_history(history: list[dict], imported: dict, path: Path) -> None:
    """Loss and held-out curves as one PNG, the imported network's as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "triplet"):
        a.plot(epochs, [h[key] for h in history], label=key)
    a.set_xlabel("epoch")
    a.set_title("training loss")
    a.legend()
    for key in ("tar_at_far_1e-3", "tar_at_far_1e-2"):
        line, = b.plot(epochs, [h[key] for h in history], label=key)
        b.axhline(imported[key], linestyle="--", color=line.get_color())
    b.set_xlabel("epoch")
    b.set_title("held-out train identities (dashed: imported)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
