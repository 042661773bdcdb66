"""Training the base Siamese embedder (torch; offline, never on the auth path).

Triplet loss with margin alpha, ``max(d(A,P) - d(A,N) + alpha, 0)`` on the
unit sphere, as in FaceNet, over batches of P identities x K images with
online mining (pytorch-metric-learning's loss and miners). When a teacher
is given (dlib's ResNet face model, offline only), the student is also
pulled towards the teacher's centred descriptor of the same face and its
pairwise similarities, which lets faces without identity (``--unlabeled``)
teach it too. A held-out split of the labelled identities (never dev/)
picks the best epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pam_faceid import source_commit
from pam_faceid.model import dataset
from pam_faceid.embedder import META_FILE, ONNX_FILE, default_input, preprocess
from pam_faceid.model.network import EmbeddingNet, export_onnx

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    roots: list[str]
    unlabeled: list[str] = field(default_factory=list)
    out: str = "runs/base"
    cache_dir: str = str(Path.home() / ".cache" / "pam_faceid")
    epochs: int = 20
    seed: int = 0
    ids_per_batch: int = 32  # P
    images_per_id: int = 4  # K
    extra_per_batch: int = 64  # teacher-only faces per batch (unlabeled or singletons)
    margin: float = 0.2  # alpha
    miner: str = "semihard"  # semihard | hard (batch-hard)
    lr: float = 3e-3
    weight_decay: float = 5e-4
    teacher: str = "none"  # none | dlib
    distill_weight: float = 4.0
    val_fraction: float = 0.05
    workers: int = 2
    threads: int = 2
    calibration_faces: int = 2048  # clean training faces that set batch-norm statistics before each validation
    max_minutes: float = 0.0  # stop (after an epoch) once exceeded; 0 = no limit
    steps_per_epoch: int = 0  # 0 = one pass over the faces


def load_faces(cfg: TrainConfig, progress: bool = True) -> dataset.FaceSet:
    teacher = cfg.teacher == "dlib"
    sets = [dataset.prepare(dataset.scan_labelled(Path(r)), Path(cfg.cache_dir), teacher=teacher,
                            workers=cfg.workers, progress=progress) for r in cfg.roots]
    for r in cfg.unlabeled:
        items = [(p, None) for p in dataset.scan_unlabeled(Path(r))]
        sets.append(dataset.prepare(items, Path(cfg.cache_dir), teacher=teacher, workers=cfg.workers,
                                    progress=progress))
    return dataset.concat(sets)


def split_identities(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of faces whose identity is held out for validation (identities with 2+ faces only)."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    multi = ids[counts >= 2]
    held = rng.choice(multi, size=min(len(multi), max(2, int(len(multi) * fraction))), replace=False)
    return np.isin(labels, held)


class PKSampler:
    """Batches of P identities x K faces (identities with K+ faces), plus extra teacher-only faces."""

    def __init__(self, labels: np.ndarray, has_teacher: np.ndarray, cfg: TrainConfig, rng: np.random.Generator):
        self.rng = rng
        self.cfg = cfg
        self.by_id = {}
        for i in np.flatnonzero(labels >= 0):
            self.by_id.setdefault(int(labels[i]), []).append(i)
        self.ids = np.array([k for k, v in self.by_id.items() if len(v) >= 2])
        self.extra = np.flatnonzero(has_teacher)

    def batch(self) -> np.ndarray:
        p, k = self.cfg.ids_per_batch, self.cfg.images_per_id
        chosen = self.rng.choice(self.ids, size=min(p, len(self.ids)), replace=False)
        idx = [self.rng.choice(self.by_id[c], size=k, replace=len(self.by_id[c]) < k) for c in chosen]
        out = np.concatenate(idx)
        if len(self.extra) and self.cfg.extra_per_batch:
            out = np.concatenate([out, self.rng.choice(self.extra, size=self.cfg.extra_per_batch)])
        return out


def learning_rate(peak: float, step: int, total: int, warmup: float = 0.05) -> float:
    """Linear warm-up then cosine decay; a function of the step alone, so --resume with more epochs stretches it."""
    w = max(1, int(total * warmup))
    if step < w:
        return peak * (step + 1) / w
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-face random flip, shift, scale, rotation, colour, greyscale and blur.

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
    from pytorch_metric_learning import losses, miners

    loss = losses.TripletMarginLoss(margin=margin)
    if miner == "hard":
        mine = miners.BatchHardMiner()
    elif miner == "semihard":
        mine = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    else:
        raise ValueError(f"miner {miner!r}: must be semihard or hard")
    return loss, mine


def recalibrate_batchnorm(net: EmbeddingNet, crops: np.ndarray, batch: int = 128) -> None:
    """Re-estimate every batch norm's statistics on clean crops with the current weights.

    The running averages kept during training lag behind the weights and are
    taken on augmented faces; after a few steps they are still the initial
    ones, with which the untrained trunk's signal fades and every face comes
    out as the same vector at inference.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            net(torch.from_numpy(preprocess(crops[i:i + batch], default_input())))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    net.eval()


def embed_all(net: EmbeddingNet, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = torch.from_numpy(preprocess(crops[i:i + batch], default_input()))
            out.append((net(x) + net(torch.flip(x, dims=[3]))).numpy())
    vectors = np.concatenate(out) if out else np.zeros((0, 128), np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def validation_metrics(vectors: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict:
    """AUC, TAR at FAR 1e-2/1e-3 and the FAR-1e-3 threshold on held-out identities."""
    from sklearn.metrics import roc_auc_score, roc_curve

    sims = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same, dtype=bool), k=1)
    genuine = sims[same & upper]
    impostor = sims[~same & upper]
    if len(impostor) > 200_000:
        impostor = rng.choice(impostor, 200_000, replace=False)
    y = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))]
    s = np.r_[genuine, impostor]
    fpr, tpr, thr = roc_curve(y, s)
    return {
        "auc": float(roc_auc_score(y, s)),
        "tar_at_far_1e-2": float(np.interp(1e-2, fpr, tpr)),
        "tar_at_far_1e-3": float(np.interp(1e-3, fpr, tpr)),
        "threshold_far_1e-3": float(np.quantile(impostor, 1 - 1e-3)),
        "genuine_pairs": int(len(genuine)),
        "impostor_pairs": int(len(impostor)),
    }


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, checkpoint every epoch, keep the best epoch on validation, export; returns the report."""
    from tqdm import tqdm

    started = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(cfg.seed)

    faces = load_faces(cfg, progress)
    has_teacher = ~np.isnan(faces.teacher).any(axis=1)
    val_mask = split_identities(faces.labels, cfg.val_fraction, rng)
    train_idx = np.flatnonzero(~val_mask)
    val_idx = np.flatnonzero(val_mask)
    use_teacher = cfg.teacher != "none" and has_teacher[train_idx].any()
    teacher = np.zeros_like(faces.teacher)
    if use_teacher:
        centre = faces.teacher[train_idx][has_teacher[train_idx]].mean(axis=0)
        t = np.where(has_teacher[:, None], faces.teacher - centre, 0.0)
        teacher = (t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)).astype(np.float32)
    labels_train = np.where(val_mask, -1, faces.labels)
    sampler = PKSampler(labels_train, has_teacher & ~val_mask & use_teacher, cfg, rng)
    if len(sampler.ids) < 2:
        raise ValueError("training needs at least 2 identities with 2 or more faces")

    net = EmbeddingNet(input_size=default_input().size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch_size = cfg.ids_per_batch * cfg.images_per_id + (cfg.extra_per_batch if use_teacher else 0)
    steps = cfg.steps_per_epoch or max(1, len(train_idx) // batch_size)
    loss_fn, miner = triplet_loss_and_miner(cfg.margin, cfg.miner)
    gen = torch.Generator().manual_seed(cfg.seed)

    history: list[dict] = []
    start_epoch, best = 0, None
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        rng.bit_generator.state = state["rng"]
        history, start_epoch, best = state["history"], state["epoch"], state["best"]
        log.info("resumed from %s at epoch %d", ckpt, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        totals = {"loss": 0.0, "triplet": 0.0, "distill": 0.0}
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, unit="step")
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg.lr, epoch * steps + step, cfg.epochs * steps)
            idx = sampler.batch()
            x = augment(torch.from_numpy(preprocess(faces.crops[idx], default_input())), gen)
            emb = net(x)
            n_lab = cfg.ids_per_batch * cfg.images_per_id
            lab = torch.from_numpy(labels_train[idx[:n_lab]])
            triplet = loss_fn(emb[:n_lab], lab, miner(emb[:n_lab], lab))
            loss = triplet
            distill = torch.zeros(())
            if use_teacher:
                mask = torch.from_numpy(has_teacher[idx])
                s, t = emb[mask], torch.from_numpy(teacher[idx])[mask]
                distill = (1 - (s * t).sum(1)).mean() + F.mse_loss(s @ s.T, t @ t.T)
                loss = loss + cfg.distill_weight * distill
            opt.zero_grad()
            loss.backward()
            opt.step()
            for key, value in (("loss", loss), ("triplet", triplet), ("distill", distill)):
                totals[key] += float(value) / steps
            bar.set_postfix(loss=f"{float(loss):.3f}")
        calibration = rng.choice(train_idx, size=min(len(train_idx), cfg.calibration_faces), replace=False)
        recalibrate_batchnorm(net, faces.crops[np.sort(calibration)])
        vectors = embed_all(net, faces.crops[val_idx])
        metrics = validation_metrics(vectors, faces.labels[val_idx], rng)
        if use_teacher:
            vt = has_teacher[val_idx]
            metrics["teacher_cosine"] = float((vectors[vt] * teacher[val_idx][vt]).sum(1).mean())
        record = {"epoch": epoch + 1, **totals, **metrics, "minutes": (time.time() - started) / 60}
        history.append(record)
        log.info("epoch %d: loss %.4f val auc %.4f tar@1e-3 %.3f", epoch + 1, totals["loss"], metrics["auc"],
                 metrics["tar_at_far_1e-3"])
        if best is None or metrics["tar_at_far_1e-2"] + metrics["auc"] > best["score"]:
            best = {"score": metrics["tar_at_far_1e-2"] + metrics["auc"], "epoch": epoch + 1, **metrics}
            torch.save(net.state_dict(), out / "best.pt")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "rng": rng.bit_generator.state, "history": history,
                    "epoch": epoch + 1, "best": best, "config": asdict(cfg)}, ckpt.with_suffix(".tmp"))
        os.replace(ckpt.with_suffix(".tmp"), ckpt)
        if cfg.max_minutes and (time.time() - started) / 60 > cfg.max_minutes:
            log.info("stopping after epoch %d: --max-minutes %.0f reached", epoch + 1, cfg.max_minutes)
            break

    net.load_state_dict(torch.load(out / "best.pt", map_location="cpu", weights_only=True))
    net.eval()
    torch.save(net.state_dict(), out / "embedder.pt")
    export_onnx(net, out / ONNX_FILE, default_input().size)
    report = {
        "data": {"roots": cfg.roots, "unlabeled": cfg.unlabeled, "images_scanned": faces.scanned,
                 "faces": len(faces), "identities": len(faces.identities),
                 "train_faces": int(len(train_idx)), "validation_faces": int(len(val_idx)),
                 "teacher_targets": int(has_teacher.sum())},
        "config": asdict(cfg),
        "history": history,
        "best_epoch": best["epoch"] if best else None,
        "validation": best,
        "seconds": round(time.time() - started, 1),
        "commit": source_commit(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    meta = {
        "name": "pam_faceid-base",
        "architecture": "mobilenet_v3_small trunk + flatten head, 128-d, L2-normalised",
        "input": default_input().to_metadata(),
        "similarity": "cosine",
        "flip": True,
        "threshold": best["threshold_far_1e-3"] if best else 0.5,
        "threshold_source": "held-out split of the training identities at FAR 1e-3",
        "provenance": {"data": cfg.roots + cfg.unlabeled, "date": report["date"], "commit": report["commit"],
                       "teacher": cfg.teacher},
        "metrics": {"validation": best},
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    plot_history(history, out / "training.png")
    return report


def plot_history(history: list[dict], path: Path) -> None:
    """Loss and validation curves as one PNG for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "triplet", "distill"):
        a.plot(epochs, [h[key] for h in history], label=key)
    a.set_xlabel("epoch")
    a.set_title("training loss")
    a.legend()
    for key in ("auc", "tar_at_far_1e-2", "tar_at_far_1e-3"):
        b.plot(epochs, [h[key] for h in history], label=key)
    b.set_xlabel("epoch")
    b.set_title("held-out training identities")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
