"""Fitting the five-point template the network's crops are aligned to, on train/ faces only.

dlib's network was trained on dlib's own chips (its 5-point landmarks,
150 px, padding 0.25); ours come from YuNet's five points, which are other
points (eye centres, nose tip, mouth corners). The template is fitted with
nothing but the network and our detector: its shape is the mean of YuNet's
points over the faces (each set brought to eyes level and unit size, then
made left-right symmetric), and its scale and height in the crop are the
ones whose crops separate same-person from different-person pairs best
(d' of cosine similarities) over held-out train identities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pam_faceid.common.images import read_image
from pam_faceid.model.dataset import scan_labelled
from pam_faceid.vision.faces import FacePipeline, FaceRefused
from pam_faceid.vision.faces import align

log = logging.getLogger(__name__)

MIRROR = [1, 0, 2, 4, 3]  # the point each point becomes in a mirrored face


@dataclass
class Sample:
    images: list[np.ndarray]
    landmarks: np.ndarray  # [N,5,2]
    labels: np.ndarray  # [N]


def load_sample(root: Path, identities: int, per_identity: int, seed: int = 0) -> Sample:
    """Up to ``per_identity`` photos each of ``identities`` people with 2+ photos; faces found as for training."""

    by_id: dict[str, list[Path]] = {}
    for path, name in scan_labelled(root):
        by_id.setdefault(name, []).append(path)
    multi = sorted(name for name, paths in by_id.items() if len(paths) >= 2)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(multi, size=min(identities, len(multi)), replace=False)
    pipeline = FacePipeline(policy="centre", min_size=20)
    images, marks, labels = [], [], []
    for label, name in enumerate(chosen):
        for path in by_id[name][:per_identity]:
            image = read_image(path)
            if image is None:
                continue
            try:
                face = pipeline.find(image)
            except FaceRefused:
                continue
            images.append(image)
            marks.append(face.landmarks)
            labels.append(label)
    return Sample(images, np.asarray(marks, np.float32), np.asarray(labels))


def mean_shape(landmarks: np.ndarray) -> np.ndarray:
    """Mean of the point sets, each centred, eye line level and inter-eye distance 1; made symmetric."""
    shapes = []
    for pts in landmarks.astype(np.float64):
        eye = pts[1] - pts[0]
        angle = np.arctan2(eye[1], eye[0])
        rot = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
        p = (pts - pts.mean(0)) @ rot.T / np.linalg.norm(eye)
        shapes.append(p)
    mean = np.mean(shapes, axis=0)
    mirrored = mean[MIRROR] * np.array([-1.0, 1.0])
    return (mean + mirrored) / 2


def template_for(shape: np.ndarray, size: int, eye_fraction: float, centre_y: float) -> np.ndarray:
    """The shape scaled to an inter-eye distance of ``eye_fraction`` x size, centred at (size/2, centre_y x size)."""
    return (shape * eye_fraction * size + np.array([size / 2, centre_y * size])).astype(np.float32)


def separation(vectors: np.ndarray, labels: np.ndarray) -> float:
    """d' between same-person and different-person cosine similarities."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    upper = np.triu(np.ones_like(sims, dtype=bool), 1)
    same = labels[:, None] == labels[None, :]
    g, i = sims[same & upper], sims[~same & upper]
    return float((g.mean() - i.mean()) / np.sqrt((g.var() + i.var()) / 2))


def fit(sample: Sample, embed, spec_for, *, size: int) -> tuple[np.ndarray, dict]:
    """Coarse grid then a finer one over (eye fraction, centre height); returns the template and the search."""

    shape = mean_shape(sample.landmarks)
    tried: dict[tuple[float, float], float] = {}

    def score(e: float, c: float) -> float:
        key = (round(e, 4), round(c, 4))
        if key not in tried:
            spec = spec_for(template_for(shape, size, e, c))
            crops = np.stack([align(img, lm, spec) for img, lm in zip(sample.images, sample.landmarks)])
            tried[key] = separation(embed(crops, spec), sample.labels)
            log.info("eye fraction %.3f, centre %.3f: d' %.4f", e, c, tried[key])
        return tried[key]

    best = max(((e, c) for e in np.arange(0.33, 0.481, 0.03) for c in np.arange(0.44, 0.561, 0.03)),
               key=lambda ec: score(*ec))
    for step in (0.015, 0.0075):
        best = max(((best[0] + de * step, best[1] + dc * step) for de in (-1, 0, 1) for dc in (-1, 0, 1)),
                   key=lambda ec: score(*ec))
    template = template_for(shape, size, *best)
    report = {"faces": len(sample.labels), "identities": int(len(np.unique(sample.labels))),
              "eye_fraction": round(best[0], 4), "centre_y": round(best[1], 4), "d_prime": round(tried[
                  (round(best[0], 4), round(best[1], 4))], 4),
              "grid": [[e, c, round(d, 4)] for (e, c), d in sorted(tried.items())]}
    return template, report
