"""Measure a face embedder on a folder of faces: LFW pairs and an enrol-K login protocol.

This is how the project is judged on face collections nobody here has seen, so
every file is treated as hostile: anything that is not a readable image is
skipped and counted, never a crash. The model is not imported here; the caller
passes ``embed(image) -> unit vector | None`` (``None`` or ``NoFace`` = no face
found), so the metrics are testable without a model and work with any backend.
No torch at module level: the ONNX runtime path must stay light.

Layout: ``DATASET/IDENTITY/IMAGE``. Similarity is the dot product of unit
vectors; a pair or attempt matches when similarity >= threshold.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from pam_faceid.common.images import IMAGE_SUFFIXES, ImageError, entry_kind, load_image
from pam_faceid.model.metrics import acceptance, allowed_impostors, far_key, tar_at_far, threshold_at_far

log = logging.getLogger(__name__)

NO_FACE_SCORE = -1.0
"""Score of a pair where a face was not found: the lowest cosine, i.e. a rejection."""
FARS = (1e-2, 1e-3)
"""False-accept rates at which the true-accept rate is reported."""
PREFERRED_SUFFIXES = (".jpg", ".jpeg", ".png")
"""When a pairs entry matches several files (name_0001.jpg and name_0001.png), the first of these wins."""

EmbedFn = Callable[[np.ndarray], "np.ndarray | tuple[np.ndarray, object] | None"]
"""image -> unit vector, or (vector, tag) where the caller wants a per-image note kept (Embeddings.tags)."""


class EvaluateError(ValueError):
    """Bad input to the evaluation (missing dataset, bad pairs file): one line for the user."""


class NoFace(Exception):
    """Raised by an embed function to say why no face was used (the reason is counted)."""

    def __init__(self, reason: str = "no_face"):
        super().__init__(reason)
        self.reason = reason


def show_path(path: Path | str) -> str:
    """Path text safe to print: undecodable bytes in file names become escapes instead of crashing the output."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


# ----------------------------------------------------------------------------------------------- scanning


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


def scan_dataset(root: Path | str) -> Dataset:
    """List ``root/IDENTITY/FILE`` without reading any image; raise EvaluateError when there is nothing to evaluate.

    Only two levels are looked at, so nested folders and symlink loops cannot
    recurse; they and other non-files are skipped and counted by reason.
    """
    root = Path(root)
    if not root.exists():
        raise EvaluateError(f"dataset folder {show_path(root)} does not exist")
    if not root.is_dir():
        raise EvaluateError(f"{show_path(root)} is not a folder (expected DATASET/IDENTITY/IMAGE)")
    try:
        names = _sorted_entries(root)
    except OSError as exc:
        raise EvaluateError(f"cannot list dataset folder {show_path(root)}: {exc.strerror}") from None
    identities: dict[str, list[Path]] = {}
    skipped: Counter = Counter()
    identity_dirs = 0
    for name in names:
        path = root / name
        if name.startswith("."):
            skipped["hidden entry"] += 1
            continue
        kind = entry_kind(path)
        if kind == "file":
            skipped["file outside an identity folder"] += 1
            continue
        if kind != "dir":
            skipped[kind] += 1
            continue
        identity_dirs += 1
        try:
            entries = _sorted_entries(path)
        except OSError as exc:
            skipped[f"unreadable identity folder ({exc.strerror})"] += 1
            continue
        files = []
        for entry in entries:
            file_path = path / entry
            if entry.startswith("."):
                skipped["hidden entry"] += 1
                continue
            kind = entry_kind(file_path)
            if kind == "file":
                files.append(file_path)
            elif kind == "dir":
                skipped["nested folder"] += 1
            else:
                skipped[kind] += 1
        if files:
            identities[name] = files
    if identity_dirs == 0:
        raise EvaluateError(f"no identity folders in {show_path(root)} (expected DATASET/IDENTITY/IMAGE)")
    return Dataset(root=root, identities=identities, skipped=skipped)


# ----------------------------------------------------------------------------------------------- embedding


@dataclass
class Embeddings:
    """Each image embedded once: path -> unit vector, or why not (no face, unreadable), with timing."""

    vectors: dict[Path, np.ndarray] = field(default_factory=dict)
    no_face: dict[Path, str] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    tags: dict[Path, object] = field(default_factory=dict)
    """What an embed function returned beside the vector ((vector, tag)): the guided protocol's quality check."""
    seconds: float = 0.0

    def status(self, path: Path) -> str:
        if path in self.vectors:
            return "face"
        if path in self.no_face:
            return "no_face"
        if path in self.unreadable:
            return "unreadable"
        return "pending"

    @property
    def images(self) -> int:
        return len(self.vectors) + len(self.no_face)

    def embed_all(self, paths: Iterable[Path], embed: EmbedFn, *, workers: int = 1, progress: bool = False) -> None:
        """Embed every path not seen before; workers > 1 run in threads (``embed`` must be thread-safe)."""
        todo = list(dict.fromkeys(p for p in paths if self.status(p) == "pending"))
        if not todo:
            return
        lock = threading.Lock()
        warned = [0]

        def one(path: Path) -> None:
            try:
                image = load_image(path)
            except ImageError as exc:
                with lock:
                    self.unreadable[path] = str(exc)
                log.debug("skipped %s: %s", show_path(path), exc)
                return
            tag = None
            try:
                vector = embed(image)
                if isinstance(vector, tuple):
                    vector, tag = vector
                reason = None if vector is not None else "no_face"
            except NoFace as exc:
                vector, reason = None, exc.reason
            except Exception as exc:  # one bad image must not end a run over a million
                vector, reason = None, f"error ({exc.__class__.__name__})"
                with lock:
                    warned[0] += 1
                    if warned[0] <= 5:
                        log.warning("embedding %s failed: %s: %s", show_path(path), exc.__class__.__name__, exc)
            with lock:
                if tag is not None:
                    self.tags[path] = tag
                if vector is None:
                    self.no_face[path] = reason or "no_face"
                else:
                    self.vectors[path] = np.asarray(vector, dtype=np.float32).ravel()

        start = time.perf_counter()
        bar = _progress_bar(len(todo), progress)
        try:
            if workers <= 1:
                for path in todo:
                    one(path)
                    bar.update(1)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    for _ in pool.map(one, todo):
                        bar.update(1)
        finally:
            bar.close()
            self.seconds += time.perf_counter() - start


def _progress_bar(total: int, enabled: bool):
    """tqdm on stderr when wanted and installed; otherwise a bar that does nothing (tqdm is not a runtime dep)."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        class _Silent:
            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass

        return _Silent()
    return tqdm(total=total, unit="img", desc="embedding", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file: (name1, index1) vs (name2, index2), its fold and its line number."""

    name1: str
    index1: int
    name2: str
    index2: int
    fold: int
    line: int

    @property
    def same(self) -> bool:
        return self.name1 == self.name2


@dataclass
class PairsFile:
    pairs: list[Pair]
    folds: int


def _is_int(token: str) -> bool:
    return token.isascii() and token.isdigit()


def parse_pairs(path: Path | str) -> PairsFile:
    """Parse an LFW ``pairs.txt``: header "folds n" or "n", then folds of n same + n different lines.

    Same-person lines are ``name i j``, different-person lines ``name1 i name2 j``;
    the label comes from the line's form, the fold from its position (2n lines per
    fold). A file without a header is one fold. Errors name the line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise EvaluateError(f"cannot read pairs file {show_path(path)}: {exc.strerror}") from None
    lines = [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, tokens) for number, tokens in lines if tokens and not tokens[0].startswith("#")]
    if not lines:
        raise EvaluateError(f"{show_path(path)}: pairs file is empty")
    where = show_path(path)
    header_line, header = lines[0]
    folds, per_fold = 1, None
    if all(_is_int(t) for t in header) and len(header) in (1, 2):
        numbers = [int(t) for t in header]
        folds, half = (1, numbers[0]) if len(numbers) == 1 else numbers
        if folds < 1 or half < 1:
            raise EvaluateError(f"{where}:{header_line}: header needs positive numbers, got {' '.join(header)!r}")
        per_fold = 2 * half
        lines = lines[1:]
    elif all(_is_int(t) for t in header):
        raise EvaluateError(f"{where}:{header_line}: header must be 'folds n' or 'n', got {' '.join(header)!r}")
    pairs: list[Pair] = []
    for position, (number, tokens) in enumerate(lines):
        fold = position // per_fold if per_fold else 0
        if len(tokens) == 3 and _is_int(tokens[1]) and _is_int(tokens[2]):
            name1, i, name2, j = tokens[0], tokens[1], tokens[0], tokens[2]
        elif len(tokens) == 4 and _is_int(tokens[1]) and _is_int(tokens[3]):
            name1, i, name2, j = tokens
        else:
            raise EvaluateError(
                f"{where}:{number}: expected 'name i j' or 'name1 i name2 j', got {' '.join(tokens)!r}")
        if int(i) < 1 or int(j) < 1:
            raise EvaluateError(f"{where}:{number}: image numbers start at 1, got {' '.join(tokens)!r}")
        pairs.append(Pair(name1, int(i), name2, int(j), fold, number))
    if per_fold is not None and len(pairs) != folds * per_fold:
        raise EvaluateError(
            f"{where}:{header_line}: header promises {folds} fold(s) of {per_fold} pairs = {folds * per_fold} "
            f"lines, the file has {len(pairs)}")
    if not pairs:
        raise EvaluateError(f"{where}: no pairs in the file")
    return PairsFile(pairs=pairs, folds=folds)


def _suffix_rank(path: Path) -> tuple[int, str]:
    suffix = path.suffix.lower()
    rank = PREFERRED_SUFFIXES.index(suffix) if suffix in PREFERRED_SUFFIXES else len(PREFERRED_SUFFIXES)
    return rank, path.name


def pair_image_index(dataset: Dataset) -> dict[tuple[str, int], Path]:
    """(identity, number) -> file for files named ``IDENTITY_NNNN.ext`` (any padding, any extension)."""
    index: dict[tuple[str, int], Path] = {}
    for name, paths in dataset.identities.items():
        prefix = name + "_"
        for path in sorted(paths, key=_suffix_rank):
            stem = path.name.rsplit(".", 1)[0] if "." in path.name else path.name
            rest = stem[len(prefix):] if stem.startswith(prefix) else ""
            if _is_int(rest):
                index.setdefault((name, int(rest)), path)
    return index


# ----------------------------------------------------------------------------------------------- metrics


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The accuracy-maximising threshold on these scores and its accuracy (match = score >= threshold).

    Candidates are every distinct score (accept from it up), midpoints between
    neighbours and one above the maximum; on a tie the lowest threshold wins.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    if scores.size == 0:
        raise ValueError("no scores to fit a threshold on")
    values, inverse = np.unique(scores, return_inverse=True)
    genuine = np.bincount(inverse, weights=labels, minlength=len(values))
    impostor = np.bincount(inverse, weights=~labels, minlength=len(values))
    # Cut c accepts values[c:]: correct = genuine at or above the cut + impostors below it.
    genuine_above = np.concatenate([np.cumsum(genuine[::-1])[::-1], [0.0]])
    impostor_below = np.concatenate([[0.0], np.cumsum(impostor)])
    correct = genuine_above + impostor_below
    cut = int(np.argmax(correct))
    if cut == 0:
        threshold = values[0]
    elif cut == len(values):
        threshold = values[-1] + 1.0
    else:
        threshold = (values[cut - 1] + values[cut]) / 2.0
        if threshold <= values[cut - 1]:
            threshold = values[cut]
    return float(threshold), float(correct[cut] / scores.size)


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Fraction of pairs judged right when score >= threshold means "same person"."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    return float(np.mean((scores >= threshold) == labels))


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Equal error rate: where the ROC (linearly interpolated) crosses FPR = FNR = 1 - TPR."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    gap = fpr + tpr - 1.0  # FPR - FNR, non-decreasing along the curve from -1 to +1
    j = int(np.argmax(gap >= 0))
    if gap[j] == 0 or j == 0:
        return float((fpr[j] + 1.0 - tpr[j]) / 2.0)
    t = -gap[j - 1] / (gap[j] - gap[j - 1])
    return float(fpr[j - 1] + t * (fpr[j] - fpr[j - 1]))


def roc_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """AUC, EER and TAR at FAR 1e-2 / 1e-3 from scikit-learn's ROC; None when one class is missing."""
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels, dtype=bool)
    out: dict = {"auc": None, "eer": None}
    out.update({far_key(far): None for far in FARS})
    if labels.all() or not labels.any():
        return out
    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out["auc"] = float(roc_auc_score(labels, scores))
    out["eer"] = eer_from_roc(fpr, tpr)
    for far in FARS:
        out[far_key(far)] = tar_at_far(scores[labels], scores[~labels], far)
    return out


def pair_metrics(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> dict:
    """LFW protocol: each fold's accuracy at the threshold fitted on the other folds, then mean ± std, plus ROC.

    With one fold there are no other folds: its threshold is fitted on itself
    (optimistic, flagged by ``threshold_fitted_on_test``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    folds = np.asarray(folds)
    fold_ids = [f for f in np.unique(folds)]
    accuracies: list[float] = []
    thresholds: list[float] = []
    for f in fold_ids:
        test = folds == f
        train = ~test if len(fold_ids) > 1 else test
        threshold, _ = best_threshold(scores[train], labels[train])
        thresholds.append(threshold)
        accuracies.append(accuracy_at(scores[test], labels[test], threshold))
    out = {
        "accuracy": float(np.mean(accuracies)) if accuracies else None,
        "accuracy_std": float(np.std(accuracies)) if accuracies else None,
        "fold_accuracies": accuracies,
        "fold_thresholds": thresholds,
        "folds": len(fold_ids),
        "threshold_fitted_on_test": len(fold_ids) == 1,
        "best_threshold": best_threshold(scores, labels)[0] if scores.size else None,
    }
    out.update(roc_metrics(scores, labels))
    return out


# ----------------------------------------------------------------------------------------------- enrol-K


@dataclass
class EnrolResult:
    genuine_attempts: int
    impostor_attempts: int
    genuine_accepted: int
    impostor_accepted: int
    enrolled_identities: int
    genuine_scores: np.ndarray
    impostor_top: np.ndarray
    impostor_rejected_no_face: int
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """The threshold each enrolled identity was judged at (one value repeated when there is one threshold)."""

    @property
    def far(self) -> float | None:
        return self.impostor_accepted / self.impostor_attempts if self.impostor_attempts else None

    @property
    def frr(self) -> float | None:
        return 1.0 - self.genuine_accepted / self.genuine_attempts if self.genuine_attempts else None


TOP_FAR = max(FARS)
"""Of the millions of impostor scores only the highest are kept: enough for thresholds at FAR <= TOP_FAR."""


def enrol_scores(groups: Sequence[np.ndarray], found: Sequence[np.ndarray], k: int,
                 threshold: float | Sequence[float] | np.ndarray,
                 *, max_block: int = 1 << 24) -> EnrolResult:
    """Enrol-K protocol over per-identity embeddings (rows in file-name order; ``found`` False = no face).

    Identities with more than ``k`` images enrol their first ``k``; score = max
    cosine to the templates. Every later image of that identity is a genuine
    attempt; every image of every other identity an impostor attempt. No face
    (in the attempt, or in all templates) is a rejection. ``threshold`` is one
    number, or one per group (each enrolled user's operating point, as a login
    uses it). Vectorised in blocks.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    total = int(sizes.sum())
    enrolled = np.flatnonzero(sizes > k)
    dim = next((g.shape[1] for g in groups if len(g)), 1)
    m = len(enrolled)
    genuine_attempts = int((sizes[enrolled] - k).sum())
    impostor_attempts = int((total - sizes[enrolled]).sum())
    keep = allowed_impostors(TOP_FAR, impostor_attempts) + 1
    top = np.zeros(0, dtype=np.float32)
    per_group = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (len(groups),))
    slot_threshold = per_group[enrolled]  # [m]
    if m == 0 or total == 0:
        return EnrolResult(genuine_attempts, impostor_attempts, 0, 0, 0, np.zeros(0), top, 0, slot_threshold)
    templates = np.stack([np.asarray(groups[i][:k], dtype=np.float32) for i in enrolled])  # [m, k, d]
    template_ok = np.stack([np.asarray(found[i][:k], dtype=bool) for i in enrolled])  # [m, k]
    flat_templates = templates.reshape(m * k, dim).T
    vectors = np.concatenate([np.asarray(g, dtype=np.float32).reshape(-1, dim) for g in groups])
    ok = np.concatenate([np.asarray(f, dtype=bool) for f in found])
    owner = np.repeat(np.arange(len(groups)), sizes)
    position = np.concatenate([np.arange(s) for s in sizes])
    slot_of = np.full(len(groups), -1)
    slot_of[enrolled] = np.arange(m)
    own_slot = slot_of[owner]
    genuine_accepted = impostor_accepted = impostor_no_face = 0
    genuine_scores: list[np.ndarray] = []
    block = max(1, max_block // (m * k))
    for start in range(0, total, block):
        rows = slice(start, min(total, start + block))
        sims = (vectors[rows] @ flat_templates).reshape(-1, m, k)
        sims = np.where(template_ok[None], sims, -np.inf).max(axis=2)  # [b, m]
        sims[~ok[rows]] = -np.inf
        own = own_slot[rows]
        mine = own >= 0
        idx = np.flatnonzero(mine)
        own_scores = sims[idx, own[idx]]
        genuine_rows = position[rows][idx] >= k
        genuine_scores.append(own_scores[genuine_rows])
        genuine_accepted += int((own_scores[genuine_rows] >= slot_threshold[own[idx]][genuine_rows]).sum())
        sims[idx, own[idx]] = np.nan  # own enrolment: neither genuine nor impostor
        with np.errstate(invalid="ignore"):
            impostor_accepted += int((sims >= slot_threshold[None, :]).sum())
        impostor = sims[~np.isnan(sims)]
        impostor_no_face += int(np.count_nonzero(~np.isfinite(impostor)))
        top = np.concatenate([top, impostor])
        if top.size > keep:
            top = np.partition(top, top.size - keep)[top.size - keep:]
    return EnrolResult(genuine_attempts, impostor_attempts, genuine_accepted, impostor_accepted, m,
                       np.concatenate(genuine_scores), top, impostor_no_face, slot_threshold)


def threshold_for_far(result: EnrolResult, far: float) -> tuple[float | None, float | None]:
    """metrics.threshold_at_far over every impostor attempt, and the FRR there (for choosing a default)."""
    if not result.impostor_attempts or not result.genuine_attempts:
        return None, None
    threshold = threshold_at_far(result.impostor_top, far, count=result.impostor_attempts)
    return threshold, 1.0 - acceptance(result.genuine_scores, threshold)


# ----------------------------------------------------------------------------------------------- the run


RESULT_KEYS = ("accuracy", "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "threshold", "far", "frr",
               "genuine_attempts", "impostor_attempts", "images", "identities", "no_face", "seconds")


OperatingFn = Callable[[np.ndarray], Callable[[np.ndarray], float]]
"""Given every face vector of the run [N,D] (so a negative bank can leave out the people measured), the function
mapping one identity's templates [K,D] to its threshold."""


def evaluate(root: Path | str, embed: EmbedFn, *, pairs: Path | str | None = None, enroll: int | None = None,
             threshold: float | None = None, workers: int = 1, progress: bool = False,
             operating: OperatingFn | None = None, identities: Iterable[str] | None = None,
             guided: Callable[[list[object]], list[int]] | None = None,
             embeddings: Embeddings | None = None) -> dict:
    """Run the requested protocols on ``root`` and return one flat result dict (RESULT_KEYS first, None = not run).

    Images are embedded once each even when used by many pairs and both
    protocols. Without ``pairs`` or ``enroll`` every image is embedded (counts and speed only).
    ``operating`` gives each enrolled identity its own threshold from its
    templates (vision.operating.fit: the login's operating point); without it
    every identity is judged at ``threshold``. ``identities`` limits the run to
    those identity folders (the same-camera held-out set). Images refused as
    too dark (``NoFace("too_dark")``) are left out of the enrol protocol and
    counted apart, as faceidd refuses such frames before any face is looked at.
    ``guided`` picks each identity's K templates as guided enrolment would:
    given the tags of its images (in file order) it returns the indices of
    the images to enrol; the rest are the attempts. ``embeddings`` carries
    the vectors from one call to the next (the bench runs several protocols
    on one collection and embeds each image once).
    """
    started = time.perf_counter()
    if enroll is not None and enroll < 1:
        raise EvaluateError(f"--enroll needs K >= 1, got {enroll}")
    if enroll is not None and threshold is None:
        raise EvaluateError("the enrol protocol needs a threshold")
    pairs_file = parse_pairs(pairs) if pairs is not None else None
    dataset = scan_dataset(root)
    if identities is not None:
        wanted_ids = set(identities)
        dataset.identities = {name: paths for name, paths in dataset.identities.items() if name in wanted_ids}
        if not dataset.identities:
            raise EvaluateError(f"none of the requested identities is in {show_path(dataset.root)}")
    emb = embeddings if embeddings is not None else Embeddings()
    result: dict = dict.fromkeys(RESULT_KEYS)
    result["threshold"] = threshold
    result["dataset_identities"] = len(dataset.identities)
    result["dataset_files"] = dataset.files

    wanted: list[Path] = []
    resolved: list[tuple[Pair, Path | None, Path | None]] = []
    if pairs_file is not None:
        index = pair_image_index(dataset)
        for pair in pairs_file.pairs:
            a = index.get((pair.name1, pair.index1))
            b = index.get((pair.name2, pair.index2))
            resolved.append((pair, a, b))
            wanted.extend(p for p in (a, b) if p is not None)
    if enroll is not None or pairs_file is None:
        wanted.extend(p for paths in dataset.identities.values() for p in paths)
    emb.embed_all(wanted, embed, workers=workers, progress=progress)

    if pairs_file is not None:
        result.update(_run_pairs(resolved, emb, threshold))
    if enroll is not None:
        result.update(_run_enrol(dataset, emb, enroll, threshold, operating, guided))

    used = [p for p in dict.fromkeys(wanted) if emb.status(p) in ("face", "no_face")]
    result["images"] = len(used)
    result["identities"] = len({p.parent.name for p in used})
    result["no_face"] = len(emb.no_face)
    result["no_face_reasons"] = dict(Counter(emb.no_face.values()).most_common())
    skipped = Counter(dataset.skipped)
    skipped.update(emb.unreadable.values())
    result["skipped_files"] = int(sum(skipped.values()))
    result["skipped_reasons"] = dict(skipped.most_common())
    result["embed_seconds"] = emb.seconds
    result["faces_per_second"] = len(emb.vectors) / emb.seconds if emb.seconds > 0 else None
    result["images_per_second"] = emb.images / emb.seconds if emb.seconds > 0 else None
    result["seconds"] = time.perf_counter() - started
    return result


def _run_pairs(resolved: list[tuple[Pair, Path | None, Path | None]], emb: Embeddings,
               threshold: float | None) -> dict:
    scores, labels, folds = [], [], []
    missing = unreadable = no_face = 0
    for pair, a, b in resolved:
        if a is None or b is None:
            missing += 1
            continue
        status = (emb.status(a), emb.status(b))
        if "unreadable" in status:
            unreadable += 1
            continue
        if status == ("face", "face"):
            score = float(np.dot(emb.vectors[a], emb.vectors[b]))
        else:
            no_face += 1
            score = NO_FACE_SCORE
        scores.append(score)
        labels.append(pair.same)
        folds.append(pair.fold)
    out = {
        "pairs": len(resolved),
        "pairs_scored": len(scores),
        "pairs_missing_image": missing,
        "pairs_unreadable_image": unreadable,
        "pairs_no_face": no_face,
        "pairs_same": int(np.sum(labels)),
        "pairs_different": int(len(labels) - np.sum(labels)),
    }
    if missing or unreadable:
        log.warning("%d of %d pairs skipped: %d name an image that is not in the dataset, %d an unreadable one",
                    missing + unreadable, len(resolved), missing, unreadable)
    if scores:
        out.update(pair_metrics(np.array(scores), np.array(labels), np.array(folds)))
        if threshold is not None:
            s, lab = np.array(scores), np.array(labels, dtype=bool)
            out["pairs_accuracy_at_threshold"] = accuracy_at(s, lab, threshold)
    return out


def _run_enrol(dataset: Dataset, emb: Embeddings, k: int, threshold: float,
               operating: OperatingFn | None = None, guided: Callable[[list[object]], list[int]] | None = None) -> dict:
    groups, found = [], []
    dim = next((len(v) for v in emb.vectors.values()), 1)
    too_dark = 0
    for paths in dataset.identities.values():
        usable = [p for p in paths if emb.status(p) in ("face", "no_face") and emb.no_face.get(p) != "too_dark"]
        too_dark += sum(emb.no_face.get(p) == "too_dark" for p in paths)
        if guided is not None and len(usable) > k:
            chosen = [i for i in guided([emb.tags.get(p) for p in usable]) if 0 <= i < len(usable)][:k]
            usable = [usable[i] for i in chosen] + [p for i, p in enumerate(usable) if i not in set(chosen)]
        rows = np.zeros((len(usable), dim), dtype=np.float32)
        ok = np.zeros(len(usable), dtype=bool)
        for i, p in enumerate(usable):
            if p in emb.vectors:
                rows[i] = emb.vectors[p]
                ok[i] = True
        groups.append(rows)
        found.append(ok)
    thresholds: float | np.ndarray = threshold
    if operating is not None:
        everyone = np.concatenate([g[f] for g, f in zip(groups, found)]) if groups else np.zeros((0, dim))
        per_user = operating(everyone)
        thresholds = np.array([per_user(g[:k][f[:k]]) if len(g) > k and f[:k].any() else threshold
                               for g, f in zip(groups, found)], dtype=np.float64)
    res = enrol_scores(groups, found, k, thresholds)
    t_far, frr_at = threshold_for_far(res, 1e-3)
    used = res.thresholds
    return {
        "enroll_k": k,
        "enrolled_identities": res.enrolled_identities,
        "genuine_attempts": res.genuine_attempts,
        "impostor_attempts": res.impostor_attempts,
        "far": res.far,
        "frr": res.frr,
        "false_accepts": res.impostor_accepted,
        "false_rejects": res.genuine_attempts - res.genuine_accepted,
        "too_dark": too_dark,
        "operating_point": "per user (vision.operating)" if operating is not None else "one threshold",
        "templates_chosen": "guided (the views enrolment asks for)" if guided is not None else "first K",
        "user_threshold_min": float(used.min()) if used.size else None,
        "user_threshold_median": float(np.median(used)) if used.size else None,
        "user_threshold_max": float(used.max()) if used.size else None,
        "enroll_threshold_at_far_1e-3": t_far,
        "enroll_frr_at_far_1e-3": frr_at,
    }


def to_json(result: dict) -> str:
    """One JSON object; NaN/inf become null so any JSON reader accepts it."""

    def clean(value):
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.floating, float)):
            return float(value) if math.isfinite(value) else None
        if isinstance(value, (np.integer,)):
            return int(value)
        if isinstance(value, (np.bool_,)):
            return bool(value)
        return value

    return json.dumps(clean(result))
