"""Measure liveness on labelled captures (presentation-attack detection, ISO/IEC 30107-3 terms).

A capture folder holds one folder per kind: ``real/`` (or ``live``,
``genuine*``, ``bona_fide``: bona fide presentations) and any other name for
an attack kind (``replay/``, ``print/``, ``mask/``...). In a kind folder
each video file, each image and each sub-folder of images (frames in name
order) is one session. Frames travel as faceidd receives them: the camera
code the helper runs (vision.camera: a video, an image, an image folder),
faceidd's decoding (daemon.engine.decode_frame), its face choice
(FacePipeline, largest face) and its liveness check (vision.liveness), with
every face taken as matching, so only liveness decides.

- APCER of a kind: attack sessions of that kind called live, over attack
  sessions of that kind in which a face was found.
- BPCER: bona fide sessions never called live, over bona fide sessions with
  a face.
A session counts as live when the verdict is live after ANY of its first
``max_frames`` frames, as faceidd stops at the first live verdict (the
attacker-friendly reading). A single image is shown for as many frames as
the mode needs. Per frame: each frame's own P(real) against the threshold.
Intervals are Wilson score intervals at 95 %.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pam_faceid.common.images import IMAGE_SUFFIXES
from pam_faceid.camera import CameraError, open_source
from pam_faceid.daemon.engine import FrameRefused, decode_frame
from pam_faceid.vision.faces import FaceRefused
from pam_faceid.vision.liveness import LivenessCheck, Policy, looks_infrared

VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v", ".mpg", ".mpeg"})
BONA_FIDE_NAMES = ("real", "live", "bona_fide", "bonafide")
BONA_FIDE_PREFIXES = ("real_", "live_", "genuine")


def is_bona_fide(kind: str) -> bool:
    """Whether a kind folder's name says bona fide (a live person at the camera)."""
    name = kind.lower()
    return name in BONA_FIDE_NAMES or name.startswith(BONA_FIDE_PREFIXES)


@dataclass
class Session:
    """One capture: where, its kind, and once scored its per-frame P(real) (frames with a face only)."""

    path: Path
    kind: str
    still: bool
    frames: int = 0
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    infrared: int = 0

    @property
    def bona_fide(self) -> bool:
        return is_bona_fide(self.kind)


def _entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def scan(roots: Iterable[Path], limit: int | None = None) -> list[Session]:
    """The sessions under each capture folder's kind folders, at most ``limit`` per kind and root (name order).

    Raises ValueError naming a root that is not a folder or holds no kind folder.
    """
    sessions: list[Session] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root}: not a folder (give a folder of kind folders: real/, replay/, print/...)")
        kinds = [p for p in _entries(root) if p.is_dir()]
        if not kinds:
            raise ValueError(f"{root}: no kind folders in it (real/, replay/, print/...)")
        for kind_dir in kinds:
            found = []
            for entry in _entries(kind_dir):
                suffix = entry.suffix.lower()
                frames = entry.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in entry.iterdir())
                if frames or suffix in VIDEO_SUFFIXES:
                    found.append(Session(entry, kind_dir.name, still=False))
                elif suffix in IMAGE_SUFFIXES:
                    found.append(Session(entry, kind_dir.name, still=True))
            sessions.extend(found[:limit] if limit else found)
    return sessions


def scan_bona_fide(root: Path, limit: int | None = None) -> list[Session]:
    """Every image and video below ``root`` (any depth) as a bona fide session of kind "real_<folder name>";
    with ``limit``, that many spread evenly over the name order (photos of live people, e.g. dev/lfw)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if limit and len(paths) > limit:
        paths = [paths[i * len(paths) // limit] for i in range(limit)]
    return [Session(p, f"real_{root.name}", still=p.suffix.lower() in IMAGE_SUFFIXES) for p in paths]


def jpeg_frames(path: Path, max_frames: int) -> Iterator[bytes]:
    """The first ``max_frames`` frames of a capture as the PAM helper sends them (no dark-frame skipping)."""
    with open_source(os.fspath(path), dark_threshold=0.0) as source:
        for n, jpeg in enumerate(source.jpeg_frames()):
            if n >= max_frames:
                return
            yield jpeg


def faces_of(session: Session, find: Callable[[Any], Any], max_frames: int) -> Iterator[tuple[Any, Any]]:
    """(frame, face) for each of the capture's first ``max_frames`` frames in which faceidd would score a face.

    Counts ``session.frames`` and ``.infrared`` on the way and records an
    unreadable capture in ``session.error``, so the measurement and the
    training (model.pad_training) see the same frames and the same crops.
    """
    try:
        for jpeg in jpeg_frames(session.path, max_frames):
            session.frames += 1
            frame = decode_frame(jpeg)
            if frame is None:
                continue
            if looks_infrared(frame):  # as the check does: not scored (vision.liveness)
                session.infrared += 1
                continue
            try:
                face = find(frame)
            except FaceRefused:
                continue
            yield frame, face
    except (CameraError, FrameRefused, OSError) as exc:
        session.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def score_session(session: Session, find: Callable[[Any], Any], model: Any, max_frames: int) -> Session:
    """Fill ``session.frames`` and ``.scores`` through faceidd's decoding, face choice and model."""
    for frame, face in faces_of(session, find, max_frames):
        session.scores.append(float(model.score(frame, face.box)))
    return session


def session_live(scores: list[float], min_frames: int, threshold: float, still: bool) -> bool:
    """Whether faceidd's check (vision.liveness) at this operating point calls the session live after any of
    its frames; a still is shown for ``min_frames`` frames."""
    check = LivenessCheck("basic", policy=Policy(min_frames=min_frames, threshold=threshold))
    for score in (scores[:1] * min_frames if still else scores):
        check.observe(score)
        if check.verdict().live:
            return True
    return False


def wilson(errors: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a rate (0, 1 for no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = errors / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(errors: int, trials: int) -> dict[str, Any]:
    low, high = wilson(errors, trials)
    return {"errors": errors, "trials": trials, "rate": errors / trials if trials else None,
            "ci95": [round(low, 4), round(high, 4)]}


def measure(sessions: list[Session], min_frames: int, threshold: float) -> dict[str, Any]:
    """APCER per attack kind and BPCER, per session and per frame, at one operating point."""
    kinds: dict[str, dict[str, Any]] = {}
    for kind in sorted({s.kind for s in sessions}):
        group = [s for s in sessions if s.kind == kind]
        scored = [s for s in group if s.scores]
        bona_fide = is_bona_fide(kind)
        # An error is a bona fide session refused or an attack accepted.
        wrong = sum(session_live(s.scores, min_frames, threshold, s.still) != bona_fide for s in scored)
        frames = [x for s in scored for x in s.scores]
        wrong_frames = sum((x >= threshold) != bona_fide for x in frames)
        kinds[kind] = {"bona_fide": bona_fide, "metric": "BPCER" if bona_fide else "APCER",
                       "sessions": len(group), "no_face": sum(1 for s in group if not s.scores and not s.error and not s.infrared),
                       "infrared": sum(1 for s in group if not s.scores and s.infrared),
                       "unreadable": sum(1 for s in group if s.error),
                       "session": rate(wrong, len(scored)), "frame": rate(wrong_frames, len(frames))}
    bona = [k for k in kinds.values() if k["bona_fide"]]

    def pooled(group: list[dict[str, Any]], unit: str) -> dict[str, Any]:
        return rate(sum(k[unit]["errors"] for k in group), sum(k[unit]["trials"] for k in group))

    return {"min_frames": min_frames, "threshold": threshold, "kinds": kinds,
            "bpcer": {"session": pooled(bona, "session"), "frame": pooled(bona, "frame")},
            "apcer": {kind: k["session"] for kind, k in kinds.items() if not k["bona_fide"]}}


def table(result: dict[str, Any], mode: str) -> str:
    """The measurement as a Markdown table: one row per kind, its metric with counts and interval."""
    lines = [(f"liveness.mode {mode}: live when the mean P(real) of >= {result['min_frames']} frames reaches "
              f"{result['threshold']:g}"), "",
             "| kind | metric | sessions (not scored) | per session | 95 % CI | per frame | 95 % CI |",
             "|---|---|---|---|---|---|---|"]

    def cell(r: dict[str, Any]) -> tuple[str, str]:
        if not r["trials"]:
            return "-", "-"
        return (f"{r['errors']}/{r['trials']} = {100 * r['rate']:.1f} %",
                f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} %")

    for kind, k in result["kinds"].items():
        sess, sess_ci = cell(k["session"])
        frame, frame_ci = cell(k["frame"])
        missing = k["no_face"] + k["unreadable"] + k["infrared"]
        lines.append(f"| {kind} | {k['metric']} | {k['sessions']} ({missing}) | {sess} | {sess_ci} | {frame} | "
                     f"{frame_ci} |")
    return "\n".join(lines)
