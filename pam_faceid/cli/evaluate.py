"""faceid evaluate: measure the face model on a folder of faces (LFW pairs, enrol-K logins).

The metrics live in pam_faceid.model.evaluate; this module only wires the real
recognition path (FacePipeline -> Embedder) into them and prints the answer.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from pam_faceid.cli import EXIT_OK, EXIT_USAGE, CommandError

EXAMPLE = """example:
  faceid evaluate ../shared/faces/dev/lfw --pairs ../shared/faces/dev/pairs.txt --flip
  faceid evaluate ../shared/faces/dev/lfw --enroll 3 --json
  faceid evaluate ../shared/faces/train/yaleb --enroll 3 --held-out   # same-camera FAR (docs/same-camera.md)
  faceid evaluate ../shared/faces/dev/lfw --pairs ../shared/faces/dev/pairs.txt --enroll 3 \\
      --model runs/base --set-threshold    # store the FAR-1e-3 threshold in runs/base/model.json"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``faceid evaluate``."""
    parser = sub.add_parser(
        "evaluate",
        help="measure the face model on DATASET/IDENTITY/IMAGE folders",
        description="Measure the face model on a folder DATASET/IDENTITY/IMAGE: LFW-style pairs (accuracy with "
                    "10-fold-style threshold fitting, AUC, EER, TAR at FAR) and/or an enrol-K login protocol "
                    "(FAR, FRR, each identity judged at the operating point a login would fit it from its K templates, never "
                    "below the threshold; --flat for the one threshold). Unreadable files are skipped and counted.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", metavar="DATASET", help="folder of identity folders of images")
    parser.add_argument("--pairs", metavar="PAIRS", help="LFW pairs.txt ('folds n' header; name i j / name1 i name2 j)")
    parser.add_argument("--enroll", metavar="K", type=int,
                        help="enrol each identity's first K images, attempt with the rest and with everyone else")
    parser.add_argument("--model", metavar="DIR", help="model folder (default: the bundled model)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx", help="inference backend (default onnx)")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="cosine threshold for FAR/FRR (default: the model's shipped threshold)")
    parser.add_argument("--flip", action="store_true", help="sum each face's descriptor with its mirror image's before normalising")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--set-threshold", action="store_true",
                        help="with --enroll and --model: write the enrol-K threshold for FAR 1e-3 (one threshold for "
                             "everyone: the floor of every operating point) into the model's model.json, with this "
                             "run's data, date, commit and metrics as its provenance")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="images processed in parallel (default 1)")
    parser.add_argument("--held-out", action="store_true",
                        help="only the identities held out from all training and fitting (model.holdout: half of "
                             "train/yaleb): the same-camera measure")
    parser.add_argument("--record", action="store_true",
                        help="with --held-out, --enroll K and --model: store this run's FAR and FRR in the model's "
                             "model.json (metrics.same_camera, with the command and commit), where faceid status "
                             "shows it")
    parser.add_argument("--guided", action="store_true",
                        help="with --enroll K: enrol the images guided enrolment would keep (one per view it asks "
                             "for, each passing its quality checks, then more straight ones) instead of the first K")
    parser.add_argument("--flat", action="store_true",
                        help="with --enroll: judge every identity at the one threshold instead of its own operating "
                             "point (vision.operating, what a login uses)")
    parser.add_argument("--dark-threshold", type=float, default=10.0, metavar="PCT",
                        help="images darker than this (percent, as camera.dark_threshold) are refused as a login "
                             "refuses them, and counted apart (default 10; 0 = off)")
    parser.set_defaults(run=run)
    return parser


def make_embed(model: str | None, backend: str, flip: bool, dark_threshold: float = 0.0, guided: bool = False):
    """Build ``embed(image) -> unit vector`` over the real path, plus the embedder (for its threshold).

    Faces are chosen as for training photos (the face nearest the centre, as
    LFW-style collections centre the labelled person), not the live-camera
    "largest, refuse if ambiguous" rule. Each worker thread gets its own
    FacePipeline (the detector keeps per-call state); the Embedder is shared.
    ``flip`` adds the mirror image (Embedder.embed's flip-sum) to a model that does not already ask for it.
    With ``guided`` each image also gets enrolment's quality check (vision.quality.examine): (vector, Assessment).
    """
    import numpy as np

    from pam_faceid.common.images import brightness_percent
    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.model.evaluate import NoFace
    from pam_faceid.vision.faces import FacePipeline

    embedder = Embedder(model, backend=backend)
    flip = flip or embedder.flip
    local = threading.local()

    def embed(image: np.ndarray) -> np.ndarray | tuple[np.ndarray, object]:
        pipeline = getattr(local, "pipeline", None)
        if pipeline is None:
            pipeline = local.pipeline = FacePipeline(policy="centre", min_size=20, spec=embedder.input)
        if dark_threshold > 0 and brightness_percent(image) < dark_threshold:
            raise NoFace("too_dark")
        crop, reason = pipeline.process(image)
        if crop is None:
            raise NoFace(reason or "no_face")
        vector = embedder.embed(crop[None], flip=flip)[0]
        if guided:
            from pam_faceid.vision.quality import examine

            return vector, examine(pipeline.detector, embedder.input, image)[0]
        return vector

    return embed, embedder


BANK_DUPLICATE = 0.995
"""A bank face this close to a face of the run is one of the people measured (train/ collections are in the
shipped bank): it is left out, or each such person would meet their own photo among the "other people"."""


def load_bank(embedder):
    """The negative bank shipped with the model, or None (said once): what operating_for fits against."""
    from pam_faceid.model.negatives import NegativesError, load_shipped
    from pam_faceid.vision.embedder import model_id_of

    try:
        return load_shipped(embedder.model_dir, model_id_of(embedder))
    except NegativesError as exc:
        print(f"note: no negative bank ({exc}); operating points from the templates alone", file=sys.stderr)
        return None


def operating_for(embedder, threshold: float, bank=False):
    """evaluate's ``operating``: each identity's threshold from vision.operating.fit, the function enrolment uses,
    with the shipped negative bank (or ``bank``) less the people of this run."""
    import numpy as np

    from pam_faceid.vision.operating import fit

    if bank is False:
        bank = load_bank(embedder)

    def for_run(everyone: np.ndarray):
        kept = bank
        if bank is not None and len(everyone):
            closest = np.max(bank @ np.asarray(everyone, np.float32).T, axis=1)
            kept = bank[closest < BANK_DUPLICATE]
        return lambda templates: fit(templates, kept, threshold).threshold

    return for_run


def guided_choice(checks: list) -> list[int]:
    """The images guided enrolment keeps, as indices: the first good straight one, then the first good one of
    each other view (measured from it), then more good straight ones; images that fail a check never."""
    from pam_faceid.vision.quality import VIEWS, view_of

    good = [i for i, check in enumerate(checks) if check is not None and check.ok and check.pose is not None]
    straight = next((i for i in good if checks[i].view == "straight"), None)
    if straight is None:
        return good
    base = checks[straight].pose
    chosen = [straight]
    for view in VIEWS[1:]:
        match = next((i for i in good if i not in chosen and view_of(checks[i].pose, base) == view), None)
        if match is not None:
            chosen.append(match)
    chosen += [i for i in good if i not in chosen and view_of(checks[i].pose, base) == "straight"]
    return chosen + [i for i in good if i not in chosen]


def _fmt(value, kind: str = "g") -> str:
    if value is None:
        return "-"
    if kind == "%":
        return f"{100 * value:.2f} %"
    if kind == "f":
        return f"{value:.4f}"
    if kind == "s":
        return f"{value:.1f} s"
    return str(value)


def format_table(result: dict) -> str:
    """The result as aligned 'name  value' lines, the pairs and enrol blocks only when they ran."""
    rows: list[tuple[str, str]] = [
        ("images", _fmt(result["images"])),
        ("identities", _fmt(result["identities"])),
        ("no face found", _fmt(result["no_face"])),
    ]
    rows += [(f"  {reason}", str(count)) for reason, count in (result.get("no_face_reasons") or {}).items()]
    rows.append(("skipped files", _fmt(result.get("skipped_files"))))
    rows += [(f"  {reason}", str(count)) for reason, count in (result.get("skipped_reasons") or {}).items()]
    if result.get("pairs") is not None:
        std = result.get("accuracy_std")
        accuracy = _fmt(result["accuracy"], "f") + (f" ± {std:.4f}" if std is not None else "")
        rows += [
            ("pairs (scored / in file)", f"{result['pairs_scored']} / {result['pairs']}"),
            ("pairs missing an image", _fmt(result["pairs_missing_image"] + result["pairs_unreadable_image"])),
            ("pairs with no face (scored -1)", _fmt(result["pairs_no_face"])),
            (f"accuracy ({result.get('folds')} folds)", accuracy),
            ("ROC AUC", _fmt(result["auc"], "f")),
            ("EER", _fmt(result["eer"], "%")),
            ("TAR at FAR 1e-2", _fmt(result["tar_at_far_1e-2"], "%")),
            ("TAR at FAR 1e-3", _fmt(result["tar_at_far_1e-3"], "%")),
            ("best threshold (all pairs)", _fmt(result.get("best_threshold"), "f")),
        ]
    if result.get("enroll_k") is not None:
        rows += [
            (f"enrol {result['enroll_k']}: identities enrolled", _fmt(result["enrolled_identities"])),
            ("threshold", _fmt(result["threshold"], "f")),
            ("genuine attempts", _fmt(result["genuine_attempts"])),
            ("impostor attempts", _fmt(result["impostor_attempts"])),
            ("judged at", f"{result.get('operating_point')}: min {_fmt(result.get('user_threshold_min'), 'f')}, "
                          f"median {_fmt(result.get('user_threshold_median'), 'f')}, "
                          f"max {_fmt(result.get('user_threshold_max'), 'f')}"),
            ("templates", _fmt(result.get("templates_chosen"))),
            ("images refused as too dark (apart)", _fmt(result.get("too_dark"))),
            ("FAR", _fmt(result["far"], "%")),
            ("FRR", _fmt(result["frr"], "%")),
            ("one threshold for FAR 1e-3", _fmt(result.get("enroll_threshold_at_far_1e-3"), "f")),
            ("FRR there", _fmt(result.get("enroll_frr_at_far_1e-3"), "%")),
        ]
    fps = result.get("faces_per_second")
    rows += [
        ("seconds", _fmt(result["seconds"], "s")),
        ("faces per second", f"{fps:.1f}" if fps is not None else "-"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _set_threshold(model: Path, result: dict, args: argparse.Namespace) -> None:
    """Store the dev-chosen threshold beside the model, with where it came from (the only thing fit on dev)."""
    import datetime
    import json

    from pam_faceid import source_commit
    from pam_faceid.model.metrics import round_up
    from pam_faceid.common.store import StoreError, atomic_write_bytes

    threshold = result.get("enroll_threshold_at_far_1e-3")
    if threshold is None:
        raise CommandError("no threshold for FAR 1e-3: the enrol run had no genuine or no impostor attempts")
    path = model / "model.json"
    meta = json.loads(path.read_text())
    keys = ("accuracy", "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "enroll_k",
            "enroll_frr_at_far_1e-3", "genuine_attempts", "impostor_attempts", "images", "identities", "no_face")
    meta["threshold"] = round_up(float(threshold))
    meta["threshold_source"] = {
        "rule": f"lowest threshold with enrol-{args.enroll} FAR <= 1e-3 on the data below",
        "data": str(args.dataset), "pairs": args.pairs, "date": datetime.date.today().isoformat(),
        "commit": source_commit(), "command": " ".join(["faceid", *sys.argv[1:]]),
        "metrics": {k: result.get(k) for k in keys},
    }
    try:
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    print(f"threshold {meta['threshold']:.4f} written to {path}", file=sys.stderr)


def _record_same_camera(model: Path, result: dict) -> None:
    """Store the same-camera figure beside the model, with the command that measured it (faceid status shows it)."""
    import datetime
    import json

    from pam_faceid import source_commit
    from pam_faceid.common.store import StoreError, atomic_write_bytes

    path = model / "model.json"
    meta = json.loads(path.read_text())
    keys = ("far", "frr", "enroll_k", "genuine_attempts", "impostor_attempts", "false_accepts", "false_rejects",
            "too_dark", "identities", "operating_point", "user_threshold_min", "user_threshold_median",
            "user_threshold_max", "enroll_threshold_at_far_1e-3", "enroll_frr_at_far_1e-3")
    command = "faceid " + " ".join(a for a in sys.argv[1:] if a not in ("--record", "--json"))
    meta.setdefault("metrics", {})["same_camera"] = dict(
        {k: result.get(k) for k in keys}, command=command, commit=source_commit(),
        date=datetime.date.today().isoformat())
    try:
        atomic_write_bytes(path, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644)
    except StoreError as exc:
        raise CommandError(str(exc)) from None
    print(f"same-camera FAR {result.get('far')} / FRR {result.get('frr')} written to {path}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Load the model, run the protocols, print a table or one JSON object."""
    from pam_faceid.model.evaluate import EvaluateError, evaluate, parse_pairs, scan_dataset, show_path, to_json

    if args.workers < 1:
        raise CommandError(f"--workers needs N >= 1, got {args.workers}", EXIT_USAGE)
    if args.enroll is not None and args.enroll < 1:
        raise CommandError(f"--enroll needs K >= 1, got {args.enroll}", EXIT_USAGE)
    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise CommandError(f"--threshold is a cosine similarity in [-1, 1], got {args.threshold}", EXIT_USAGE)
    if args.set_threshold and (args.enroll is None or args.model is None):
        raise CommandError("--set-threshold needs --enroll K and --model DIR (the bundled model is not rewritten)",
                           EXIT_USAGE)
    if args.record and not (args.held_out and args.enroll is not None and args.model is not None):
        raise CommandError("--record needs --held-out, --enroll K and --model DIR", EXIT_USAGE)
    if args.pairs is not None and not Path(args.pairs).is_file():
        raise CommandError(f"pairs file {show_path(args.pairs)} does not exist", EXIT_USAGE)
    try:
        if args.pairs is not None:
            parse_pairs(args.pairs)
        scan_dataset(args.dataset)
    except EvaluateError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None

    identities = None
    if args.held_out:
        from pam_faceid.model.holdout import held_out, source_of

        identities = held_out(args.dataset)
        if not identities:
            raise CommandError(f"--held-out: no identities are held out of {source_of(args.dataset)} "
                               "(model.holdout holds out train/yaleb's yaleB21..yaleB39)", EXIT_USAGE)
    if not 0 <= args.dark_threshold <= 100:
        raise CommandError(f"--dark-threshold is a percentage 0-100, got {args.dark_threshold}", EXIT_USAGE)
    loaded = time.perf_counter()
    from pam_faceid.vision.embedder import ModelError
    from pam_faceid.vision.faces import DetectorError

    try:
        embed, embedder = make_embed(args.model, args.backend, args.flip, args.dark_threshold, args.guided)
    except (ModelError, DetectorError, OSError, ValueError, RuntimeError) as exc:
        raise CommandError(f"cannot load the model: {exc}") from None
    load_seconds = time.perf_counter() - loaded
    threshold = args.threshold if args.threshold is not None else float(embedder.threshold)
    try:
        operating = None if args.flat or args.enroll is None else operating_for(embedder, threshold)
        result = evaluate(args.dataset, embed, pairs=args.pairs, enroll=args.enroll, threshold=threshold,
                          workers=args.workers, progress=not args.json and sys.stderr.isatty(),
                          operating=operating, identities=identities,
                          guided=guided_choice if args.guided and args.enroll is not None else None)
    except EvaluateError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    result["model_load_seconds"] = load_seconds
    result["flip"] = bool(args.flip or getattr(embedder, "flip", False))
    result["backend"] = args.backend
    result["model"] = (getattr(embedder, "metadata", None) or {}).get("id")
    result["held_out"] = bool(args.held_out)
    result["dark_threshold"] = args.dark_threshold
    if args.set_threshold:
        _set_threshold(Path(args.model), result, args)
    if args.record:
        _record_same_camera(Path(args.model), result)
    if args.json:
        print(to_json(result))
    else:
        print(format_table(result))
    return EXIT_OK
