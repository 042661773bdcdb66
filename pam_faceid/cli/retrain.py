"""faceid retrain: fine-tune a user's own head on their stored captures, kept only if it helps.

Trains the per-user head (pam_faceid.model.retrain) from the user's enrolled
templates and the negative bank (the one shipped with the model, or the
admin's from `faceid calibrate --negatives`), judges it on held-out captures
and keeps it only when it lowers FRR at the FAR target; otherwise the
current head (or the base model) stays and the command says so. --revert
swaps the head with the previous one (no head counts as one), so running it
twice undoes it. The daemon is asked to reload either way.

Exit codes: 0 new head kept (or reverted); 3 ran, but the current head is
kept because the new one was not better; 1 not enough captures, no negative
bank, store/model problem; 2 bad arguments or unknown user; 4 not root.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any
from pathlib import Path

from pam_faceid.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXIT_NOT_IMPROVED = 3

EXAMPLE = """examples:
  sudo faceid retrain alice                 # train, judge on held-out captures, keep if better
  sudo faceid retrain alice --far 1e-4 --epochs 200
  sudo faceid retrain alice --revert        # back to the previous head (or the base model)

exit codes: 0 new head kept or reverted; 3 new head not better, current kept;
            1 cannot retrain (too few captures, no negative bank, model/store problem);
            2 bad arguments; 4 not root"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid retrain USER [--far F] [--epochs N] [--seed S] [--revert]'."""
    parser = sub.add_parser(
        "retrain",
        help="fine-tune a user's own head on their captures (kept only if it lowers FRR)",
        description="Fine-tune USER's per-user head (a linear map on the base embedding) with a triplet loss: "
                    "anchors and positives from USER's enrolled captures, hard negatives mined from the negative "
                    "bank. Part of the captures is held out; the new head is kept only if it lowers FRR on them "
                    "at the threshold giving the target FAR on bank faces it never trained on. Prints the numbers "
                    "before and after; --revert goes back. Needs at least 4 captures (faceid enroll).",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER")
    parser.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help="training steps (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split and training (default 0)")
    parser.add_argument("--revert", action="store_true", help="swap back to the previous head and stop")
    parser.set_defaults(run=run)
    return parser


def _describe(head: Any) -> str:
    if head is None:
        return "the base model alone"
    meta = getattr(head, "meta", {})
    return f"the head saved {meta.get('saved', '?')}, threshold {head.threshold:.4f}"


def _revert(cfg: object, user: str) -> int:
    from pam_faceid.common.userhead import HeadError, revert_head

    try:
        now, before = revert_head(cfg.daemon.state_dir, user)  # type: ignore[attr-defined]
    except HeadError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    print(f"{user} now uses {_describe(now)}; the one replaced is kept for another --revert")
    common.reload_daemon(cfg, "retrain")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Load captures and bank, train, judge, keep or not, reload."""
    from pam_faceid.model import negatives
    from pam_faceid.common import userhead
    from pam_faceid.model.retrain import MIN_CAPTURES, RetrainConfig, augmented_captures, retrain
    from pam_faceid.common.store import StoreError

    if not 0 < args.far < 1:
        raise CommandError(f"--far {args.far}: give a rate between 0 and 1, such as 1e-3", EXIT_USAGE)
    if args.epochs is not None and not 1 <= args.epochs <= 10000:
        raise CommandError(f"--epochs {args.epochs}: give 1 to 10000", EXIT_USAGE)
    common.require_root("retraining (enrolments and heads are root's)")
    common.check_user(args.user)
    cfg = common.load_cfg(args)
    state_dir = cfg.daemon.state_dir
    if args.revert:
        return _revert(cfg, args.user)
    embedder = common.load_embedder(cfg)
    model = common.model_id(embedder)
    try:
        enrolment = common.open_store(cfg).load(args.user)
    except StoreError as exc:
        raise common.store_error(exc) from None
    if enrolment is None or not enrolment.templates:
        raise CommandError(f"{args.user} is not enrolled (sudo faceid enroll {args.user})", EXIT_FAILURE)
    stale = enrolment.stale_for(model)
    if stale:
        raise CommandError(f"{args.user}: {stale}", EXIT_FAILURE)
    if len(enrolment.templates) < MIN_CAPTURES:
        raise CommandError(f"{args.user} has {len(enrolment.templates)} capture(s); retraining needs at least "
                           f"{MIN_CAPTURES} (sudo faceid enroll {args.user} --frames 10)", EXIT_FAILURE)
    try:
        bank, source = negatives.load_default(state_dir, common.model_dir(cfg), model)
    except negatives.NegativesError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    current = userhead.load_head(state_dir, args.user, model)
    extra = augmented_captures(Path(state_dir) / "images" / args.user, [t.id for t in enrolment.templates], embedder)
    rcfg = RetrainConfig(far=args.far, seed=args.seed)
    if args.epochs is not None:
        rcfg.epochs = args.epochs
    try:
        outcome = retrain(enrolment.matrix(), bank, model, current, rcfg, extra_positives=extra)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    extra_note = f", {sum(len(v) for v in extra.values())} augmented from kept frames" if extra else ""
    print(f"{args.user}: {len(enrolment.templates)} captures ({outcome.train_count} to train on{extra_note}, "
          f"{outcome.held_out} held out); {source}: {len(bank)} faces, half to mine, half to set thresholds")
    print(f"before ({_describe(current)}): {outcome.before.line()}")
    print(f"after  (new head, {rcfg.epochs} steps, {outcome.seconds:.1f} s): {outcome.after.line()}")
    if not outcome.kept:
        print(f"kept {_describe(current)}: {outcome.reason}")
        return EXIT_NOT_IMPROVED
    try:
        path = userhead.save_head(state_dir, args.user, outcome.head)
    except userhead.HeadError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    print(f"kept the new head: {outcome.reason}; saved in {path}, threshold {outcome.head.threshold:.4f} for FAR "
          f"{args.far:g} with all {len(enrolment.templates)} captures (faceid retrain {args.user} --revert goes back)")
    if cfg.auth.threshold != "auto":
        print(f"note: auth.threshold is {cfg.auth.threshold}, not auto: the daemon applies that number to this "
              f"head too", file=sys.stderr)
    common.reload_daemon(cfg, "retrain")
    return EXIT_OK
