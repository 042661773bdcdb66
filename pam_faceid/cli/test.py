"""faceid test: does the face path recognise USER right now, frame by frame?

Without --pam it runs the daemon's own decision (the same FacePipeline,
Embedder, threshold and min_matching_frames rule) in this process, so an admin
sees each frame's score against the threshold and why frames are refused.
With --pam SERVICE it runs the real PAM stack through python-pam, the way
sudo or a greeter would, and prints what PAM answered and said.

Exit codes: 0 recognised (or PAM said success); 1 not recognised / PAM
failure / no usable frame; 2 bad arguments (unknown user, missing file, no
such PAM service); 4 not root (needed without --pam: enrolments are root's).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time

import numpy as np

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid test                      # you, in front of the camera
  sudo faceid test alice --from clip.mp4
  faceid test alice --pam sudo          # the real PAM stack of /etc/pam.d/sudo
  faceid test alice --pam login --password"""

DEFAULT_FRAMES = 20


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid test [USER] [--from PATH...] [--frames N] [--pam SERVICE [--password]]'."""
    parser = sub.add_parser(
        "test",
        help="show, frame by frame, whether USER's face is recognised",
        description="Look at frames from the camera (or --from files) and print for each one the similarity to "
                    "USER's templates and whether it passes the threshold, then the session verdict as the daemon "
                    "would give it. With --pam SERVICE, authenticate USER through the real PAM stack of "
                    "/etc/pam.d/SERVICE instead and print what PAM answered.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", nargs="?", metavar="USER", help="who to test (default: you, or $SUDO_USER)")
    parser.add_argument("--from", dest="sources", nargs="+", metavar="PATH",
                        help="image files, image folders or video files instead of the camera")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames to look at (default {DEFAULT_FRAMES})")
    parser.add_argument("--pam", metavar="SERVICE", help="authenticate through PAM service SERVICE (python-pam)")
    parser.add_argument("--password", action="store_true",
                        help="with --pam: ask for a password to give PAM if the face is not recognised")
    parser.set_defaults(run=run)
    return parser


def run_pam(user: str, service: str, password: str = "") -> tuple[bool, int, str, list[str], float]:
    """Authenticate through the real PAM stack: (ok, code, reason, messages PAM showed, seconds)."""
    import pam

    handle = pam.pam()
    started = time.monotonic()
    ok = handle.authenticate(user, password, service=service, resetcreds=False)
    return bool(ok), int(handle.code), str(handle.reason), list(handle.messages), time.monotonic() - started


def _pam(args: argparse.Namespace, user: str) -> int:
    if "/" in args.pam or not os.path.isfile(os.path.join("/etc/pam.d", args.pam)):
        raise CommandError(f"no PAM service {args.pam!r}: /etc/pam.d/{args.pam} does not exist", EXIT_USAGE)
    password = ""
    if args.password:
        if not sys.stdin.isatty():
            raise CommandError("--password needs a terminal to ask on", EXIT_USAGE)
        password = getpass.getpass(f"password for {user} (given to PAM only if asked): ")
    ok, code, reason, messages, seconds = run_pam(user, args.pam, password)
    for message in messages:
        print(f"PAM said: {message}")
    print(f"PAM answered: {'success' if ok else 'failure'} (code {code}: {reason}) in {seconds:.2f} s")
    return 0 if ok else EXIT_FAILURE


def run(args: argparse.Namespace) -> int:
    """Score frames against the user's templates, or run PAM."""
    from pam_faceid.daemon import Decision
    from pam_faceid.faces import FacePipeline
    from pam_faceid.store import StoreError

    user = args.user or common.default_user()
    common.check_user(user)
    if args.pam:
        return _pam(args, user)
    if args.password:
        raise CommandError("--password goes with --pam", EXIT_USAGE)
    if args.frames < 1:
        raise CommandError("--frames must be at least 1", EXIT_USAGE)
    common.require_root("reading enrolments")
    cfg = common.load_cfg(args)
    try:
        enrolment = common.open_store(cfg).load(user)
    except StoreError as exc:
        raise common.store_error(exc) from None
    if enrolment is None or not enrolment.templates:
        raise CommandError(f"{user} is not enrolled (run: sudo faceid enroll {user})", EXIT_FAILURE)
    embedder = common.load_embedder(cfg)
    templates = enrolment.matrix()
    threshold = common.threshold(cfg, embedder)
    pipeline = FacePipeline(dark_threshold=float(cfg.camera.dark_threshold), spec=embedder.input)
    frames = common.frames_from(args.sources, args.frames) if args.sources else common.frames_from_camera(cfg)
    need = int(cfg.auth.min_matching_frames)
    print(f"testing {user}: {len(templates)} template(s), threshold {threshold:.3f}, {need} matching frame(s) needed")
    started = time.monotonic()
    decision = Decision(threshold, need, timeout=float("inf"), max_frames=args.frames, started=started)
    verdict = None
    for frame in frames:
        t0 = time.monotonic()
        crop, reason = pipeline.process(frame.image)
        if crop is None:
            print(f"{frame.where}: {reason} ({common.hint(reason or '')})")
            verdict = decision.observe(None, reason, time.monotonic())
        else:
            score = float(np.max(templates @ embedder.embed_one(crop)))
            ms = (time.monotonic() - t0) * 1000
            verdict = decision.observe(score, None, time.monotonic())
            word = f"MATCH ({decision.matches} of {need} needed)" if score >= threshold else "no match"
            print(f"{frame.where}: score {score:.3f} {'>=' if score >= threshold else '<'} {threshold:.3f} "
                  f"{word} ({ms:.0f} ms)")
        if verdict is not None:  # the daemon would have answered here and closed the session
            break
    final = verdict or decision.finish(time.monotonic())
    best = "-" if final.score is None else f"{final.score:.3f}"
    counts = f"{decision.matches} of {decision.frames} frame(s) matched, {need} needed (auth.min_matching_frames)"
    if final.result == "match":
        print(f"verdict: match (best score {best}; {counts}; after {time.monotonic() - started:.2f} s)")
        return 0
    print(f"verdict: {final.result} (best score {best}; {counts}; {decision.faces} with a face)")
    return EXIT_FAILURE
