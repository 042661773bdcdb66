"""faceid liveness: measure the liveness check on labelled captures (APCER per attack kind, BPCER).

The scoring and the metrics live in pam_faceid.model.pad; this module wires
the real path (camera code, faceidd's decoding, face choice and anti-spoofing
model) into them and prints the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pam_faceid.cli import EXIT_OK, EXIT_USAGE, CommandError

EXAMPLE = """example:
  faceid liveness ../shared/spoof/videos ../shared/spoof/stills
  faceid liveness /tmp/spoof_set --real ../shared/faces/dev/lfw --limit 200 --mode basic --json
  faceid liveness CAPTURES --threshold 0.5 --min-frames 4    # another operating point
  faceid liveness CAPTURES --model /tmp/tuned                 # another model, e.g. a fine-tuned export

CAPTURES/real/ holds bona fide sessions (also live/, genuine*/); every other folder is an attack kind named
by the folder (replay/, print/, mask/...). A session is a video file, an image, or a folder of frames."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceid liveness``."""
    parser = sub.add_parser(
        "liveness",
        help="measure the liveness check on labelled captures (APCER per attack kind, BPCER)",
        description="Score every session under CAPTURES/KIND/ the way faceidd does (every face taken as "
                    "matching) and print, per mode, APCER for each attack kind and BPCER (ISO/IEC 30107-3), "
                    "per session and per frame, with counts and 95 % Wilson intervals.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("captures", metavar="CAPTURES", nargs="*", type=Path,
                        help="folder of kind folders (real/, replay/, print/...)")
    parser.add_argument("--real", metavar="DIR", type=Path, action="append", default=[],
                        help="also count every image and video below DIR as a bona fide session (photos of live "
                             "people, e.g. ../shared/faces/dev/lfw); --limit spreads over it")
    parser.add_argument("--mode", choices=("basic", "strict", "both"), default="both",
                        help="operating point(s) to report (default both)")
    parser.add_argument("--threshold", type=float, metavar="T", help="mean P(real) needed, instead of the mode's")
    parser.add_argument("--min-frames", type=int, metavar="N", help="frames needed, instead of the mode's")
    parser.add_argument("--max-frames", type=int, default=60, metavar="N",
                        help="frames of a session looked at (default 60, faceidd's daemon.max_frames_per_session)")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N sessions per kind folder (name order)")
    parser.add_argument("--model", metavar="DIR", type=Path,
                        help="an anti-spoofing model folder to measure instead of the shipped one (minifasnet.onnx "
                             "and minifasnet.json, e.g. from python -m pam_faceid.model.minifasnet export --out DIR)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with every session's scores)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from pam_faceid import source_commit
    from pam_faceid.model import pad
    from pam_faceid.vision.antispoof import AntiSpoof, AntiSpoofError
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.vision.liveness import POLICIES

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise CommandError(f"--threshold {args.threshold}: must be from 0 to 1", EXIT_USAGE)
    for name in ("min_frames", "max_frames", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} {value}: must be at least 1", EXIT_USAGE)
    try:
        sessions = pad.scan(args.captures, args.limit)
        for folder in args.real:
            sessions += pad.scan_bona_fide(folder, args.limit)
        model = AntiSpoof(args.model)
    except (ValueError, OSError, AntiSpoofError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if not sessions:
        raise CommandError("no sessions found (videos, images or image folders in the kind folders)", EXIT_USAGE)
    pipeline = FacePipeline()
    progress = _progress(sessions, quiet=args.json)
    for session in progress:
        pad.score_session(session, pipeline.find, model, args.max_frames)
    modes = ("basic", "strict") if args.mode == "both" else (args.mode,)
    results = {}
    for mode in modes:
        policy = POLICIES[mode]
        results[mode] = pad.measure(sessions, args.min_frames or policy.min_frames,
                                    policy.threshold if args.threshold is None else args.threshold)
    if args.json:
        out = {"command": "faceid " + " ".join(sys.argv[1:]),
               "commit": source_commit(), "model": model.metadata.get("output", {}).get("sha256"), "modes": results,
               "sessions": [{"path": str(s.path), "kind": s.kind, "still": s.still, "frames": s.frames,
                             "scores": [round(x, 4) for x in s.scores], "error": s.error, "infrared": s.infrared}
                            for s in sessions]}
        print(json.dumps(out, indent=1))
        return EXIT_OK
    for mode, result in results.items():
        print(pad.table(result, mode))
        bpcer = result["bpcer"]["session"]
        if bpcer["trials"]:
            print(f"\nBPCER {bpcer['errors']}/{bpcer['trials']} = {100 * bpcer['rate']:.1f} % "
                  f"(95 % CI {100 * bpcer['ci95'][0]:.1f}-{100 * bpcer['ci95'][1]:.1f} %)\n")
    for s in sessions:
        if s.error:
            print(f"unreadable: {s.path}: {s.error}", file=sys.stderr)
        elif s.infrared and not s.scores:
            print(f"not scored: {s.path}: infrared (grey) frames, which faceidd refuses as not_live:infrared",
                  file=sys.stderr)
    return EXIT_OK


def _progress(sessions: list, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return sessions
    try:
        from tqdm import tqdm
    except ImportError:
        return sessions
    return tqdm(sessions, unit="session")
