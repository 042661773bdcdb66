"""faceid enroll: capture a user's face and store it as templates the daemon compares against.

Every frame goes through the same FacePipeline and Embedder as a login, so
what is stored is exactly what a login is matched with. A frame without
exactly one usable face is refused with its reason and what to do about it;
nothing is stored unless at least one frame was good, and the store writes
atomically, so a failed enrolment never damages the previous one.

Exit codes: 0 enrolled; 1 no usable face / store or model problem; 2 bad
arguments (unknown user, missing file); 4 not root.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

MAX_TEMPLATES = 100
"""Most templates one enroll run stores: more adds nothing but matching time."""
FRAMES_PER_VIEW = 40
"""Frames a guided view may take (a few seconds of camera) before it is skipped as missed."""

EXAMPLE = """examples:
  sudo faceid enroll alice                          # guided: straight, left, right, up, down
  sudo faceid enroll alice --glasses --frames 12    # and a view with/without glasses
  sudo faceid enroll alice --from ~/photos/alice/ clip.mp4 --frames 10"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid enroll USER [--from PATH...] [--frames N] [--label L]'."""
    parser = sub.add_parser(
        "enroll",
        help="capture a user's face (camera, photos or videos) and store it",
        description="Guided enrolment: from the camera (camera.device) USER is asked for a few views (straight, "
                    "turned a little left and right, tilted up and down; --glasses adds one), each frame is checked "
                    "(one face, size, sharpness, light, pose reached) and told what to fix. From image files, image "
                    "folders or video files (--from) every frame gets the same checks and a summary of the views "
                    "covered. The templates are added to USER's enrolment with USER's operating point (the threshold "
                    "fit to them, never below the global one) and the daemon reloads. Raw images are kept only when "
                    "enroll.keep_images is on.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER", help="the user whose face this is")
    parser.add_argument("--from", dest="sources", nargs="+", metavar="PATH",
                        help="image files, image folders or video files instead of the camera")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="good frames to store (default: enroll.frames from the camera; every image with --from)")
    parser.add_argument("--glasses", action="store_true",
                        help="from the camera: also ask for a straight view with glasses on (or off)")
    parser.add_argument("--label", metavar="L",
                        help="name for these templates, to remove them together later (default: enrol-DATE-TIME)")
    parser.set_defaults(run=run)
    return parser


def _keep_images(cfg: Any, user: str, templates: list[Any], frames: list[np.ndarray]) -> None:
    """Raw frames next to the enrolment, root only, named after their template id (enroll.keep_images)."""
    import cv2

    from pam_faceid.common.store import atomic_write_bytes

    folder = Path(cfg.daemon.state_dir) / "images" / user
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder.parent, 0o700)
    os.chmod(folder, 0o700)
    for template, frame in zip(templates, frames):
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        if ok:
            atomic_write_bytes(folder / f"{template.id}.jpg", buf.tobytes())
    print(f"kept {len(frames)} raw images in {folder} (enroll.keep_images)")


@dataclass
class Captured:
    """The good frames of an enrolment: aligned crops, their raw frames, and which view each shows."""

    crops: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    views: list[str] = field(default_factory=list)
    seen: int = 0

    def add(self, crop: np.ndarray, frame: np.ndarray, view: str) -> None:
        self.crops.append(crop)
        self.frames.append(frame)
        self.views.append(view)

    def summary(self, asked: list[str]) -> str:
        """'views covered: straight 3, left 1, right -, ...': what the enrolment holds and what it misses."""
        from pam_faceid.vision.quality import PROMPTS

        counts = [f"{view} {self.views.count(view) or '-'}" for view in asked]
        missing = [view for view in asked if view not in self.views]
        text = f"views covered: {', '.join(counts)}"
        if missing:
            text += f" (missing: {', '.join(missing)}; enrol again to add them: {'; '.join(PROMPTS[v] for v in missing)})"
        return text


def _examine(pipeline: Any, frame: np.ndarray, straight: Any, dark_threshold: float) -> tuple[Any, np.ndarray | None]:
    from pam_faceid.vision.quality import examine

    return examine(pipeline.detector, pipeline.spec, frame, straight, dark_threshold)


def from_files(frames: Iterator[Any], pipeline: Any, wanted: int, dark_threshold: float, keep: bool) -> Captured:
    """Every frame of the files checked; the good ones kept (up to ``wanted``) with the view each shows."""
    got = Captured()
    straight = None
    for frame in frames:
        got.seen += 1
        check, crop = _examine(pipeline, frame.image, straight, dark_threshold)
        if not check.ok or crop is None:
            print(f"{frame.where}: refused: {check.advice()}")
            continue
        if straight is None and check.view == "straight":
            straight = check.pose
        view = check.view or "between views"
        got.add(crop, frame.image if keep else np.zeros(0), view)
        print(f"{frame.where}: ok, {view} ({len(got.crops)}/{wanted})")
        if len(got.crops) >= wanted:
            break
    return got


def guided(frames: Iterator[Any], pipeline: Any, views: list[str], per_view: int, dark_threshold: float,
           keep: bool, frames_per_view: int = FRAMES_PER_VIEW) -> Captured:
    """Ask for each view in turn, check every frame, say what is wrong, and move on when the view is caught.

    A view not caught within ``frames_per_view`` frames is skipped (named in the summary);
    the straight view is measured first, the turns are measured from it.
    """
    from pam_faceid.vision.quality import PROMPTS

    got = Captured()
    straight = None
    stream = iter(frames)
    for number, view in enumerate(views, 1):
        caught = got.views.count(view)
        if caught >= per_view:
            continue  # caught early, while another view was asked for
        print(f"[{number}/{len(views)}] {PROMPTS[view]}", flush=True)
        tries = 0
        last = ""
        for frame in stream:
            got.seen += 1
            tries += 1
            check, crop = _examine(pipeline, frame.image, straight, dark_threshold)
            wanted_view = "straight" if view == "glasses" else view
            if check.ok and crop is not None and check.view == wanted_view:
                if view == "straight" and straight is None:
                    straight = check.pose
                got.add(crop, frame.image if keep else np.zeros(0), view)
                caught += 1
                print(f"      {view}: ok ({caught}/{per_view}) [{len(got.crops)} template(s)]", flush=True)
                if caught >= per_view:
                    break
                continue
            later = views[number:]
            if check.ok and crop is not None and check.view in later and got.views.count(check.view) < per_view:
                got.add(crop, frame.image if keep else np.zeros(0), check.view)
                print(f"      {check.view}: ok, caught early [{len(got.crops)} template(s)]", flush=True)
                continue
            advice = check.advice() if not check.ok else f"not yet: {PROMPTS[view]}" + (
                f" (this looks {check.view})" if check.view else "")
            if advice != last:
                print(f"      {frame.where}: {advice}", flush=True)
                last = advice
            if tries >= frames_per_view:
                break
        if not caught:
            print(f"      {view}: missed ({last or 'no more frames'}); going on", flush=True)
    return got


def run(args: argparse.Namespace) -> int:
    """Capture (guided from the camera, checked from files), embed, fit the operating point, store, reload."""
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.vision.quality import VIEWS
    from pam_faceid.common.store import StoreError

    if args.frames is not None and not 1 <= args.frames <= MAX_TEMPLATES:
        raise CommandError(f"--frames {args.frames}: give 1 to {MAX_TEMPLATES}", EXIT_USAGE)
    if args.label is not None and not args.label.strip():
        raise CommandError("--label must not be empty", EXIT_USAGE)
    common.require_root("enrolling a face")
    common.check_user(args.user)
    cfg = common.load_cfg(args)
    store = common.open_store(cfg)
    embedder = common.load_embedder(cfg)
    pipeline = FacePipeline(dark_threshold=cfg.camera.dark_threshold, spec=embedder.input)
    label = args.label or _dt.datetime.now().strftime("enrol-%Y%m%d-%H%M%S")
    keep = bool(cfg.enroll.keep_images)
    views = list(VIEWS) + (["glasses"] if args.glasses else [])

    if args.sources:
        wanted = args.frames or MAX_TEMPLATES
        got = from_files(common.frames_from(args.sources, args.frames), pipeline, wanted,
                         cfg.camera.dark_threshold, keep)
        asked = list(VIEWS)
    else:
        wanted = args.frames or cfg.enroll.frames
        per_view = max(1, -(-wanted // len(views)))
        print(f"Guided enrolment of {args.user} with the camera ({cfg.camera.device}): {len(views)} views, "
              f"{per_view} good frame(s) each")
        got = guided(common.frames_from_camera(cfg, dark=True), pipeline, views, per_view, cfg.camera.dark_threshold, keep)
        asked = views
    if not got.crops:
        raise CommandError(f"no usable face in {got.seen} frame(s): nothing stored", EXIT_FAILURE)
    print(got.summary(asked))

    embeddings = embedder.embed(np.stack(got.crops))
    operating = common.operating_point(cfg, embedder)
    try:
        before = store.load(args.user)
        enrolment = store.add_templates(args.user, embeddings, label=label, model_id=common.model_id(embedder),
                                        operating=operating)
    except StoreError as exc:
        raise common.store_error(exc) from None
    if before is not None and before.templates:
        _warn_if_other_person(before.matrix(), embeddings, common.threshold(cfg, embedder))
    new = enrolment.templates[-len(got.crops):]
    if keep:
        try:
            _keep_images(cfg, args.user, new, got.frames)
        except (OSError, StoreError) as exc:
            print(f"note: raw images not kept: {str(exc).splitlines()[0]}", file=sys.stderr)
    print(f"enrolled {len(new)} template(s) for {args.user} with label {label!r}; "
          f"{args.user} now has {len(enrolment.templates)} template(s) in {store.path(args.user)}")
    from pam_faceid.vision.operating import OperatingPoint

    point = OperatingPoint.from_json(enrolment.operating_point)
    if point is not None:
        print(f"operating point: {point.line()}")
    common.reload_daemon(cfg, "enroll")
    return 0


def _warn_if_other_person(old: np.ndarray, new: np.ndarray, threshold: float) -> None:
    """Adding someone else's face to an enrolment by mistake would let them in: say so."""
    if old.shape[1] != new.shape[1]:
        return
    best = float(np.max(old @ new.T))
    if best < threshold:
        print(f"warning: the new frames do not look like the existing templates (best similarity {best:.3f} < "
              f"threshold {threshold:.3f}); if this is someone else, run 'faceid remove' with the new label",
              file=sys.stderr)
