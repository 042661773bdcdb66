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
from pathlib import Path
from typing import Any

import numpy as np

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

MAX_TEMPLATES = 100
"""Most templates one enroll run stores: more adds nothing but matching time."""

EXAMPLE = """examples:
  sudo faceid enroll alice                          # 5 frames from the camera
  sudo faceid enroll alice --label glasses --frames 8
  sudo faceid enroll alice --from ~/photos/alice/ clip.mp4 --frames 10"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid enroll USER [--from PATH...] [--frames N] [--label L]'."""
    parser = sub.add_parser(
        "enroll",
        help="capture a user's face (camera, photos or videos) and store it",
        description="Capture N good frames of USER's face from the camera (camera.device), or take them from "
                    "image files, image folders or video files (--from). A frame without exactly one usable face "
                    "is refused with its reason. The face templates are added to USER's enrolment and the "
                    "daemon reloads. Raw images are kept only when enroll.keep_images is on.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER", help="the user whose face this is")
    parser.add_argument("--from", dest="sources", nargs="+", metavar="PATH",
                        help="image files, image folders or video files instead of the camera")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="good frames to store (default: enroll.frames from the camera; every image with --from)")
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


def run(args: argparse.Namespace) -> int:
    """Capture, embed, store, reload."""
    from pam_faceid.vision.faces import FacePipeline
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
    wanted = args.frames or (MAX_TEMPLATES if args.sources else cfg.enroll.frames)
    label = args.label or _dt.datetime.now().strftime("enrol-%Y%m%d-%H%M%S")

    if args.sources:
        frames = common.frames_from(args.sources, args.frames)
    else:
        print(f"Look at the camera ({cfg.camera.device}): capturing {wanted} good frames…")
        frames = common.frames_from_camera(cfg)
    crops: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    seen = 0
    for frame in frames:
        seen += 1
        crop, reason = pipeline.process(frame.image)
        if crop is None:
            print(common.refusal_line(frame.where, reason or "no_face"))
            continue
        crops.append(crop)
        if cfg.enroll.keep_images:
            kept.append(frame.image)
        print(f"{frame.where}: ok ({len(crops)}/{wanted})")
        if len(crops) >= wanted:
            break
    if not crops:
        raise CommandError(f"no usable face in {seen} frame(s): nothing stored", EXIT_FAILURE)
    if not args.sources and len(crops) < wanted:
        print(f"note: only {len(crops)} of {wanted} frames were good before the camera stopped", file=sys.stderr)

    embeddings = embedder.embed(np.stack(crops))
    try:
        before = store.load(args.user)
        enrolment = store.add_templates(args.user, embeddings, label=label, model_id=common.model_id(embedder))
    except StoreError as exc:
        raise common.store_error(exc) from None
    if before is not None and before.templates:
        _warn_if_other_person(before.matrix(), embeddings, common.threshold(cfg, embedder))
    new = enrolment.templates[-len(crops):]
    if kept:
        try:
            _keep_images(cfg, args.user, new, kept)
        except (OSError, StoreError) as exc:
            print(f"note: raw images not kept: {str(exc).splitlines()[0]}", file=sys.stderr)
    print(f"enrolled {len(new)} template(s) for {args.user} with label {label!r}; "
          f"{args.user} now has {len(enrolment.templates)} template(s) in {store.path(args.user)}")
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
