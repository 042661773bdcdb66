"""faceid calibrate: the threshold that gives a target false-accept rate on this machine's own faces.

Genuine scores: each enrolled template against the user's other templates
(leave one out: what a login frame scores against the enrolment). Impostor
scores: every face of the negative bank (pam_faceid.model.negatives) and every other
enrolled user's templates against the user's templates. The threshold is the
lowest one whose impostor acceptance is at most --far (pam_faceid.model.metrics,
rounded up to 4 decimals); FRR is the genuine
share under it. Each user's operating point (vision.operating.fit, the
function enrolment uses) is printed too; --apply writes the threshold to
auth.threshold and stores each user's point, refit on that threshold and
this bank, with their enrolment. With fewer than 1/FAR impostor scores the FAR cannot be
resolved, and the command says so.

Exit codes: 0 calibrated; 1 not enough data (fewer than 2 templates, no
negative bank) or a store/model problem; 2 bad arguments; 4 not root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common
from pam_faceid.model.metrics import rates, round_up, threshold_at_far
from pam_faceid.vision.operating import fit

EXAMPLE = """examples:
  sudo faceid calibrate alice --negatives /srv/faces/others --plot /tmp/alice.png
  sudo faceid calibrate --far 1e-4
  sudo faceid calibrate alice --apply        # also write auth.threshold"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid calibrate [USER] [--far F] [--plot FILE.png] [--negatives DIR] [--apply]'."""
    parser = sub.add_parser(
        "calibrate",
        help="choose the threshold for a target false-accept rate from the enrolments and a negative bank",
        description="Score USER's templates against each other (genuine) and against other people (negative "
                    "bank and other enrolled users: impostors), choose the lowest threshold whose false-accept "
                    "rate is at most --far, and print FAR and FRR there. --plot writes score histograms and the "
                    "ROC curve as a PNG; --apply writes the threshold to auth.threshold.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", nargs="?", metavar="USER", help="calibrate on this user (default: every user)")
    parser.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    parser.add_argument("--plot", metavar="FILE.png", help="write score histograms and the ROC curve here")
    parser.add_argument("--negatives", metavar="DIR",
                        help="build the negative bank from this folder of other people's face photos (cached)")
    parser.add_argument("--limit", type=int, default=1000, metavar="N",
                        help="with --negatives: use at most N photos, spread over its sub-folders (default 1000)")
    parser.add_argument("--apply", action="store_true", help="write the threshold to auth.threshold and reload")
    parser.set_defaults(run=run)
    return parser


def scores(templates: dict[str, np.ndarray], negatives: np.ndarray, users: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) similarity scores for ``users`` (see the module docstring)."""
    genuine, impostor = [], []
    for user in users:
        mine = templates[user]
        sims = mine @ mine.T
        for i in range(len(mine)):
            genuine.append(float(np.max(np.delete(sims[i], i))))
        others = [templates[u] for u in templates if u != user]
        pool = np.concatenate([negatives] + others) if others else negatives
        if len(pool):
            impostor.extend(np.max(pool @ mine.T, axis=1).tolist())
    return np.asarray(genuine, np.float32), np.asarray(impostor, np.float32)


def plot(path: str, genuine: np.ndarray, impostor: np.ndarray, threshold: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (hist, roc) = plt.subplots(1, 2, figsize=(11, 4.2))
    high = max(1.0, float(genuine.max()), float(impostor.max()))
    low = min(float(genuine.min()), float(impostor.min()), high - 0.05)
    bins = np.linspace(low, high, 60)
    hist.hist(impostor, bins=bins, alpha=0.6, density=True, label=f"impostor ({len(impostor)})")
    hist.hist(genuine, bins=bins, alpha=0.6, density=True, label=f"genuine ({len(genuine)})")
    hist.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    hist.set_xlabel("cosine similarity")
    hist.set_ylabel("density")
    hist.legend()
    cuts = np.unique(np.concatenate([genuine, impostor]))
    fars = np.array([np.mean(impostor >= t) for t in cuts])
    tars = np.array([np.mean(genuine >= t) for t in cuts])
    floor = 1.0 / max(len(impostor), 1)
    roc.plot(np.maximum(fars, floor / 2), tars)
    roc.set_xscale("log")
    roc.axvline(max(np.mean(impostor >= threshold), floor / 2), color="k", linestyle="--")
    roc.set_xlabel("false-accept rate")
    roc.set_ylabel("true-accept rate")
    roc.set_title("ROC")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Gather scores, choose the threshold, report, plot, apply."""
    from pam_faceid.model import negatives as bank
    from pam_faceid.common.store import StoreError

    if not 0 < args.far < 1:
        raise CommandError(f"--far {args.far}: give a rate between 0 and 1, such as 1e-3", EXIT_USAGE)
    if args.limit < 10:
        raise CommandError(f"--limit {args.limit}: give at least 10", EXIT_USAGE)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise CommandError(f"--plot {args.plot}: give a .png file name", EXIT_USAGE)
    common.require_root("calibrating (enrolments are root's)")
    cfg = common.load_cfg(args)
    embedder = common.load_embedder(cfg)
    model = common.model_id(embedder)
    try:
        good, _bad = common.open_store(cfg).load_all()
    except StoreError as exc:
        raise common.store_error(exc) from None
    templates = {u: e.matrix() for u, e in good.items() if not e.model_id or not model or e.model_id == model}
    users = [args.user] if args.user else sorted(templates)
    for user in users:
        if user not in templates:
            raise CommandError(f"{user} is not enrolled with the current model", EXIT_FAILURE)
        if len(templates[user]) < 2:
            raise CommandError(f"{user} has {len(templates[user])} template; calibration needs at least 2 "
                               f"(sudo faceid enroll {user})", EXIT_FAILURE)
    if not users:
        raise CommandError("nobody is enrolled: enrol first", EXIT_FAILURE)
    try:
        if args.negatives:
            from tqdm import tqdm

            folder = Path(args.negatives)
            with tqdm(total=None, desc="negative bank", unit="img", leave=False) as bar:
                def tick(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(1)

                negatives = bank.build(folder, embedder, limit=args.limit, progress=tick)
            saved = bank.save(cfg.daemon.state_dir, negatives, model, str(folder))
            source = f"admin bank {saved}"
            print(f"negative bank: {len(negatives)} faces from {folder}, cached in {saved}")
        else:
            negatives, source = bank.load_default(cfg.daemon.state_dir, common.model_dir(cfg), model)
    except bank.NegativesError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from None
    genuine, impostor = scores(templates, negatives, users)
    if not len(impostor):
        raise CommandError("no impostor scores to set a FAR on: add a negative bank (--negatives DIR)", EXIT_FAILURE)
    chosen = round_up(threshold_at_far(impostor, args.far))
    far, frr = rates(genuine, impostor, chosen)
    current = common.threshold(cfg, embedder)
    cur_far, cur_frr = rates(genuine, impostor, current)
    who = ", ".join(users)
    print(f"scores for {who}: {len(genuine)} genuine, {len(impostor)} impostor")
    if len(impostor) * args.far < 1:
        print(f"note: {len(impostor)} impostor scores cannot resolve FAR {args.far:g} (need {int(np.ceil(1 / args.far))}"
              f"): the threshold is above every impostor score; add negatives for a sharper answer")
    print(f"threshold for FAR <= {args.far:g}: {chosen:.4f}  (FAR {far:.4g}, FRR {frr:.4g})")
    print(f"current threshold {current:.4f} ({cfg.auth.threshold}): FAR {cur_far:.4g}, FRR {cur_frr:.4g}")
    base = chosen if args.apply else current
    points = {user: fit(templates[user], negatives, base, bank_source=source) for user in users}
    for user, point in points.items():
        print(f"{user}: operating point {point.line()}")
    if args.plot:
        plot(args.plot, genuine, impostor, chosen, f"{who}: threshold {chosen:.3f} for FAR {args.far:g}")
        print(f"wrote {args.plot}")
    if args.apply:
        from pam_faceid.common.config import ConfigError, set_value

        try:
            set_value(cfg.path, "auth.threshold", f"{chosen:.4f}")
        except ConfigError as exc:
            raise CommandError(str(exc), EXIT_FAILURE) from None
        print(f"auth.threshold = {chosen:.4f} in {cfg.path}")
        store = common.open_store(cfg)
        try:
            for user in users:
                store.set_operating_point(user, lambda matrix, u=user: fit(matrix, negatives, chosen,
                                                                           bank_source=source).to_json())
        except StoreError as exc:
            raise common.store_error(exc) from None
        print(f"operating points of {who} stored with their enrolments")
        common.reload_daemon(cfg, "calibrate")
    return 0
