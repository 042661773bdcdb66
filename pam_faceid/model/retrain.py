"""Per-user retraining (faceid retrain): the seed's per-user Siamese training, done in seconds on stored vectors.

The seed trained a whole network per user for hours on 7 owner and 10 other
images. Here only the user's head (pam_faceid.common.userhead: W initialised to
the identity, b to 0, then L2 normalisation) is fine-tuned, on the user's
stored BASE embeddings, so no image is needed and 10 captures take seconds:

- anchors and positives: the user's training captures (label 0);
- negatives: the negative bank (pam_faceid.model.negatives), every face its own
  label; each step the bank faces closest to the user under the current head
  are mined (plus a few random ones) and pytorch-metric-learning's
  BatchHardMiner picks each anchor's hardest positive and negative for its
  TripletMarginLoss; a small penalty keeps W near the identity, because
  with a handful of captures 16k free numbers would otherwise memorise them.

The honest part is the decision. A share of the user's captures is held out
(30 %, at least 2) and the bank is split in two: one half to mine from, the
other to choose each head's threshold for the FAR target (as `faceid
calibrate` does: the lowest threshold whose share of bank faces scoring at
least it is <= FAR). The new head is kept only if its FRR on the held-out
captures at its threshold is lower than the current head's at the current
head's; a tie keeps the current one. Neither the captures nor the bank
faces that choose or judge a head have trained it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
import cv2
import torch

from pam_faceid.model.metrics import rates, threshold_at_far
from pam_faceid.common.userhead import UserHead
from pam_faceid.common.images import read_image
from pam_faceid.model.training import triplet_loss_and_miner
from pam_faceid.vision.faces import FacePipeline

MIN_CAPTURES = 4
"""Two to train on (an anchor needs a positive) and two to judge the result with."""


@dataclass
class RetrainConfig:
    """Knobs of one retraining run; the defaults finish in a few seconds on 2 cores."""

    far: float = 1e-3
    epochs: int = 100
    holdout: float = 0.3
    min_holdout: int = 2
    bank_eval_fraction: float = 0.5
    margin: float = 0.3
    lr: float = 0.01
    identity_weight: float = 0.1
    hard_negatives: int = 64
    random_negatives: int = 64
    seed: int = 0


@dataclass
class Metrics:
    """FRR on held-out captures and FAR on held-out bank faces at a threshold chosen for the FAR target."""

    threshold: float
    far: float
    frr: float
    genuine: int
    impostor: int

    def line(self) -> str:
        return (f"threshold {self.threshold:.4f}: FRR {self.frr:.3f} on {self.genuine} held-out captures, "
                f"FAR {self.far:.4f} on {self.impostor} bank faces")


@dataclass
class Outcome:
    """What a run did: both heads' metrics, whether the new one is kept, and the head itself."""

    kept: bool
    before: Metrics
    after: Metrics
    head: UserHead
    train_count: int
    held_out: int
    seconds: float
    losses: list[float] = field(default_factory=list)

    @property
    def reason(self) -> str:
        if self.kept:
            return f"FRR at FAR {self.head.meta.get('far', 0):g} fell from {self.before.frr:.3f} to {self.after.frr:.3f}"
        return (f"FRR on the held-out captures did not fall ({self.before.frr:.3f} before, {self.after.frr:.3f} "
                f"with the new head)")


def split_captures(count: int, cfg: RetrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded shuffle, so the same enrolment always splits the same way."""
    held = max(cfg.min_holdout, int(round(count * cfg.holdout)))
    if count - held < 2:
        raise ValueError(f"{count} captures: retraining needs at least {MIN_CAPTURES} "
                         f"({held} held out to judge, 2 to train on)")
    order = np.random.default_rng(cfg.seed).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def split_bank(count: int, cfg: RetrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(mining, evaluation) indices of the bank; fixed by the seed so every user and run uses the same halves."""
    order = np.random.default_rng(1_000_003 + cfg.seed).permutation(count)
    cut = int(round(count * cfg.bank_eval_fraction))
    return np.sort(order[cut:]), np.sort(order[:cut])


def measure(head: UserHead, enrolled: np.ndarray, probes: np.ndarray, negatives: np.ndarray,
            far: float) -> Metrics:
    """Score as the daemon does (best similarity to the enrolled captures) and pick the threshold for ``far``."""
    enrolled_h, probes_h, negatives_h = head.apply(enrolled), head.apply(probes), head.apply(negatives)
    genuine = np.max(probes_h @ enrolled_h.T, axis=1)
    impostor = np.max(negatives_h @ enrolled_h.T, axis=1)
    threshold = threshold_at_far(impostor, far)
    far_at, frr_at = rates(genuine, impostor, threshold)
    return Metrics(threshold, far_at, frr_at, len(genuine), len(impostor))


def decide(before: Metrics, after: Metrics) -> bool:
    """Keep the new head only if it lowers FRR at the FAR target on the held-out captures; a tie keeps the current."""
    return after.frr < before.frr


def fit_head(positives: np.ndarray, negatives: np.ndarray, cfg: RetrainConfig, progress: bool = True,
             extra_positives: np.ndarray | None = None) -> tuple[UserHead, list[float]]:
    """Train W, b from the identity with the triplet loss; returns the head (threshold unset) and the losses."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 100x128 matrices: extra threads only spin against each other (10-50x slower)
    try:
        return _fit(torch, positives, negatives, cfg, progress, extra_positives)
    finally:
        torch.set_num_threads(threads)


def _fit(torch: Any, positives: np.ndarray, negatives: np.ndarray, cfg: RetrainConfig, progress: bool,
         extra_positives: np.ndarray | None) -> tuple[UserHead, list[float]]:
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    own = positives if extra_positives is None or not len(extra_positives) else np.concatenate(
        [positives, extra_positives])
    pos = torch.from_numpy(np.ascontiguousarray(own, np.float32))
    bank = torch.from_numpy(np.ascontiguousarray(negatives, np.float32))
    dim = pos.shape[1]
    eye = torch.eye(dim)
    weight = torch.nn.Parameter(eye.clone())
    bias = torch.nn.Parameter(torch.zeros(dim))
    optimiser = torch.optim.Adam([weight, bias], lr=cfg.lr)
    loss_fn, miner = triplet_loss_and_miner(cfg.margin, "hard")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x @ weight.T + bias, dim=1)

    hard = min(cfg.hard_negatives, len(bank))
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="retraining head", unit="step", disable=not progress, leave=False):
        with torch.no_grad():
            closeness = (forward(bank) @ forward(pos).T).max(dim=1).values
            chosen = torch.topk(closeness, hard).indices.numpy()
        others = gen.choice(len(bank), size=min(cfg.random_negatives, len(bank)), replace=False)
        picked = np.unique(np.concatenate([chosen, others]))
        batch = torch.cat([pos, bank[torch.from_numpy(picked)]])
        labels = torch.cat([torch.zeros(len(pos), dtype=torch.long), torch.arange(1, len(picked) + 1)])
        embeddings = forward(batch)
        triplets = miner(embeddings, labels)
        drift = ((weight - eye) ** 2).sum() + (bias ** 2).sum()
        loss = loss_fn(embeddings, labels, triplets) + cfg.identity_weight * drift
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    head = UserHead(weight.detach().numpy().astype(np.float32).copy(), bias.detach().numpy().astype(np.float32).copy(),
                    float("nan"), "")
    return head, losses


def retrain(captures: np.ndarray, bank: np.ndarray, model_id: str, current: UserHead | None = None,
            cfg: RetrainConfig | None = None, progress: bool = True,
            extra_positives: dict[int, np.ndarray] | None = None) -> Outcome:
    """Train a new head for one user and decide whether it beats ``current`` (None: the base model alone).

    ``captures`` are the user's stored base embeddings [N,D]; ``bank`` the
    negative bank [M,D]; ``extra_positives`` optional augmented embeddings per
    capture index (only those of training captures are used). The returned
    head carries the threshold for ``cfg.far`` computed with all captures
    enrolled, as the daemon will enrol them.
    """
    cfg = cfg or RetrainConfig()
    started = time.monotonic()
    captures = np.asarray(captures, np.float32)
    bank = np.asarray(bank, np.float32)
    if len(captures) < MIN_CAPTURES:
        raise ValueError(f"{len(captures)} captures: retraining needs at least {MIN_CAPTURES}")
    if captures.shape[1] != bank.shape[1]:
        raise ValueError(f"captures have {captures.shape[1]} values, the negative bank {bank.shape[1]}")
    train_idx, held_idx = split_captures(len(captures), cfg)
    mine_idx, eval_idx = split_bank(len(bank), cfg)
    extra = [extra_positives[i] for i in train_idx if extra_positives and i in extra_positives]
    head, losses = fit_head(captures[train_idx], bank[mine_idx], cfg, progress,
                            np.concatenate(extra) if extra else None)
    base = current or UserHead.identity(captures.shape[1])
    before = measure(base, captures[train_idx], captures[held_idx], bank[eval_idx], cfg.far)
    after = measure(head, captures[train_idx], captures[held_idx], bank[eval_idx], cfg.far)
    kept = decide(before, after)
    final = measure(head, captures, captures[:0], bank[eval_idx], cfg.far)
    head.threshold = final.threshold
    head.model_id = model_id
    head.meta = {
        "far": cfg.far, "captures": len(captures), "train_captures": len(train_idx), "held_out": len(held_idx),
        "bank_faces": len(bank), "epochs": cfg.epochs, "margin": cfg.margin,
        "before": _metrics_dict(before), "after": _metrics_dict(after),
        "threshold_bank_far": final.far, "augmented": int(sum(len(e) for e in extra)),
    }
    return Outcome(kept, before, after, head, len(train_idx), len(held_idx), time.monotonic() - started, losses)


def augment_crop(crop: np.ndarray) -> np.ndarray:
    """A few camera-like variants of one aligned crop (darker, brighter, softer, slightly turned): [K,H,W,3]."""

    size = crop.shape[1], crop.shape[0]
    variants = [
        np.clip(crop.astype(np.float32) * 0.6, 0, 255).astype(np.uint8),
        np.clip(crop.astype(np.float32) * 1.35 + 10, 0, 255).astype(np.uint8),
        cv2.GaussianBlur(crop, (5, 5), 1.2),
    ]
    for angle in (-6.0, 6.0):
        matrix = cv2.getRotationMatrix2D((size[0] / 2, size[1] / 2), angle, 1.04)
        variants.append(cv2.warpAffine(crop, matrix, size, borderMode=cv2.BORDER_REPLICATE))
    return np.stack(variants)


def augmented_captures(images_dir: str | os.PathLike[str], template_ids: list[str],
                       embedder: Any) -> dict[int, np.ndarray]:
    """Embeddings of augmented variants of the raw frames kept at enrolment (enroll.keep_images), by capture index.

    Frames are named ``<template id>.jpg``; a missing or faceless one is
    simply not augmented. Without kept frames this is empty and retraining
    uses the stored embeddings alone.
    """

    folder = Path(images_dir)
    if not folder.is_dir():
        return {}
    pipeline = None
    out: dict[int, np.ndarray] = {}
    for index, tid in enumerate(template_ids):
        path = folder / f"{tid}.jpg"
        if not path.is_file():
            continue
        pipeline = pipeline or FacePipeline(spec=embedder.input)
        image = read_image(path)
        crop = pipeline.process(image)[0] if image is not None else None
        if crop is not None:
            out[index] = embedder.embed(augment_crop(crop))
    return out


def _metrics_dict(m: Metrics) -> dict[str, Any]:
    return {"threshold": round(m.threshold, 6), "far": m.far, "frr": m.frr, "genuine": m.genuine,
            "impostor": m.impostor}
