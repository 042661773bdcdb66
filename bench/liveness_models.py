"""The shipped anti-spoofing model beside other exports (fine-tuned ones) on the same captures, in one run.

Each model folder (``python -m pam_faceid.model.minifasnet export --finetuned
RUN --heads both|tuned --out DIR``) is measured by ``faceid liveness --model
DIR --json`` on the synthetic set (``--sets``, bench/spoof_set.py from dev/lfw)
and on the real captures (../shared/spoof and ``--photos`` dev/lfw photos),
exactly as bench/liveness.py measures the shipped one. Printed per model and
mode: the worst attack kind's APCER and the bona fide BPCER of the synthetic
set; BPCER, replay and still-attack APCER on the real captures; BPCER on the
live photos.

    .venv/bin/python -m bench.liveness_models --sets /tmp/spoof_set --models /tmp/ens /tmp/tuned
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench._common import DEFAULT_OUT, DEV_LFW, machine, save_json
from bench.liveness import SPOOF, faceid_liveness, real_capture_args

from pam_faceid import source_commit


def cell(rates: dict) -> str:
    return f"{rates['errors']}/{rates['trials']}" if rates["trials"] else "-"


def summary(synthetic: dict, real: dict, mode: str) -> list[str]:
    """The row's cells: synthetic worst kind, synthetic BPCER, real BPCER, replay, stills, live photos."""
    syn = synthetic["modes"][mode]
    kinds = {k: r for k, r in syn["apcer"].items() if r["trials"]}
    worst = max(kinds, key=lambda k: kinds[k]["rate"])
    kinds_real = real["modes"][mode]["kinds"]

    def of(kind: str) -> str:
        return cell(kinds_real[kind]["session"]) if kind in kinds_real else "-"

    return [f"{cell(kinds[worst])} ({worst})", cell(syn["bpcer"]["session"]), of("real"), of("replay"), of("attack"),
            of("real_lfw")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, required=True, help="a synthetic set bench/spoof_set.py wrote (dev/lfw)")
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders to measure")
    parser.add_argument("--count", type=int, default=24, help="sessions per synthetic kind (default 24)")
    parser.add_argument("--photos", type=int, default=300, help="dev/lfw photos, spread evenly (default 300)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "liveness_models.json", help="result JSON")
    args = parser.parse_args(argv)
    if not SPOOF.is_dir() or not DEV_LFW.is_dir():
        raise SystemExit(f"liveness models bench: needs {SPOOF} and {DEV_LFW}")
    real_args = real_capture_args(DEV_LFW, args.photos)
    results = {}
    for model in [None, *args.models]:
        extra = [] if model is None else ["--model", str(model)]
        name = "shipped" if model is None else str(model)
        results[name] = {"synthetic": faceid_liveness([str(args.sets), "--limit", str(args.count), *extra]),
                         "real": faceid_liveness([*real_args, *extra])}
    header = ("| model | mode | synthetic: worst attack kind APCER | synthetic BPCER | real captures BPCER | "
              "replays APCER | still attacks APCER | live photos BPCER |")
    lines = [header, "|" + "---|" * 8]
    for name, r in results.items():
        for mode in ("basic", "strict"):
            lines.append(f"| {name} | {mode} | " + " | ".join(summary(r["synthetic"], r["real"], mode)) + " |")
    print("\n".join(lines))
    save_json(args.out, {"machine": machine(), "commit": source_commit(), "sets": str(args.sets),
                         "table": lines, "results": {n: {k: {"args": v["args"], "modes": v["modes"]}
                                                         for k, v in r.items()} for n, r in results.items()}})
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
