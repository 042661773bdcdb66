"""Liveness on labelled captures: APCER per attack kind and BPCER at the shipped operating points, and the trade-off.

Every source is scored once by ``faceid liveness --json`` (the camera code,
faceidd's decoding, face choice and anti-spoofing model, every face taken as
matching); every operating point is then re-applied to the stored per-frame
scores with the check's own rule (pam_faceid.model.pad), so the curves and
the tables come from the same numbers.

- synthetic: bench/spoof_set.py sessions rendered from dev/lfw photos
  (generated into a temporary folder, or ``--sets``): prints, screens, a
  video on a screen, and genuine stand-ins, all rendered photographs;
- real captures: ../shared/spoof (webcam videos of two people and their
  replays on a phone; the MiniFASNet source's sample stills);
- live photos: ``--real-photos`` photos of live people (dev/lfw, bona fide);
- grey copies of ../shared/spoof's videos (what an IR camera's frames look like to the model,
  though not IR): the model's mean P(real) over their first 60 frames, scored directly, since
  faceidd does not score grey frames (vision.liveness: ``infrared``).

The thresholds in pam_faceid/vision/liveness.py were chosen from this
output with a train/celeba synthetic set (seed 1), ../shared/spoof and 300
dev/lfw photos (docs/liveness.md); the default synthetic set here (dev/lfw,
seed 3) was not looked at for that choice, but its identities are among the
dev/lfw photos, so nothing here is a held-out test of people.
Writes liveness.json (--out) and bench/liveness_tradeoff.png.

    .venv/bin/python bench/liveness.py                      # about 6 minutes on 2 cores
    .venv/bin/python bench/liveness.py --sets /tmp/spoof_set --count 24
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import BENCH, DEFAULT_OUT, DEV_LFW, REPO, machine, save_json, VENV_BIN

from pam_faceid import source_commit  # noqa: E402
from pam_faceid.model import pad  # noqa: E402
from pam_faceid.vision.liveness import POLICIES  # noqa: E402

SPOOF = REPO.parent / "shared" / "spoof"
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
PLOT = BENCH / "liveness_tradeoff.png"


def faceid_liveness(args: list[str]) -> dict:
    command = [str(VENV_BIN / "faceid"), "liveness", *args, "--json"]
    print("$ faceid liveness " + " ".join(args), file=sys.stderr)
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode:
        raise SystemExit(f"liveness bench: faceid liveness failed: {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout)
    result["args"] = args
    return result


def real_capture_args(photos: Path, count: int) -> list[str]:
    """``faceid liveness`` arguments for the real captures: ../shared/spoof, and ``count`` photos of live people
    from ``photos``; whichever of the two is there."""
    args = [str(SPOOF / "videos"), str(SPOOF / "stills")] if SPOOF.is_dir() else []
    if photos.is_dir():
        args += ["--real", str(photos), "--limit", str(count)]
    return args


def sessions_of(result: dict) -> list[pad.Session]:
    return [pad.Session(Path(s["path"]), s["kind"], s["still"], s["frames"], s["scores"], s["error"],
                        s.get("infrared", 0)) for s in result["sessions"]]


def grey_copies(frames: int = 60) -> dict[str, float]:
    """Mean P(real) of the first ``frames`` frames of each ../shared/spoof video turned grey (frames with a face)."""
    import cv2
    import numpy as np

    from pam_faceid.vision.antispoof import AntiSpoof
    from pam_faceid.vision.faces import FacePipeline, FaceRefused

    model, faces = AntiSpoof(), FacePipeline()
    out = {}
    for path in sorted((SPOOF / "videos").glob("*/*")):
        capture, scores = cv2.VideoCapture(str(path)), []
        for _ in range(frames):
            ok, frame = capture.read()
            if not ok:
                break
            grey = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
            try:
                scores.append(model.score(grey, faces.find(grey).box))
            except FaceRefused:
                continue
        out[f"{path.parent.name}/{path.name}"] = round(float(np.mean(scores)), 3) if scores else None
    return out


def curve(sessions: list[pad.Session], min_frames: int) -> list[dict]:
    """APCER (worst kind, pooled) and BPCER at each threshold, per session."""
    out = []
    for t in THRESHOLDS:
        m = pad.measure(sessions, min_frames, t)
        apcer = [r for r in m["apcer"].values() if r["trials"]]
        pooled = pad.rate(sum(r["errors"] for r in apcer), sum(r["trials"] for r in apcer))
        out.append({"threshold": t, "bpcer": m["bpcer"]["session"]["rate"],
                    "apcer_worst": max((r["rate"] for r in apcer), default=None), "apcer_pooled": pooled["rate"]})
    return out


def plot(curves: dict[str, list[dict]], points: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colours = {"synthetic": "tab:orange", "real captures + live photos": "tab:blue"}
    for name, rows in curves.items():
        xs = [100 * r["bpcer"] for r in rows if r["bpcer"] is not None]
        ax.plot(xs, [100 * r["apcer_worst"] for r in rows if r["bpcer"] is not None], "-", color=colours[name],
                label=f"{name}: worst attack kind")
        ax.plot(xs, [100 * r["apcer_pooled"] for r in rows if r["bpcer"] is not None], ":", color=colours[name],
                label=f"{name}: all attacks")
        for mode, marker in (("basic", "o"), ("strict", "s")):
            p = points[name][mode]
            ax.plot(100 * p["bpcer"], 100 * p["apcer_worst"], marker, color=colours[name], markersize=8,
                    label=f"{name}: {mode}")
    ax.set_xlabel("BPCER, % of bona fide sessions refused")
    ax.set_ylabel("APCER, % of attack sessions let in")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.set_title("Liveness trade-off over the threshold (basic's frame count)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=Path, help="a folder bench/spoof_set.py wrote (default: generate one now)")
    parser.add_argument("--split", default="dev/lfw", help="identities of the generated set (default dev/lfw)")
    parser.add_argument("--seed", type=int, default=3, help="seed of the generated set (default 3)")
    parser.add_argument("--count", type=int, default=24, help="sessions per kind (default 24)")
    parser.add_argument("--real-photos", type=Path, default=DEV_LFW, help="bona fide photos (default dev/lfw)")
    parser.add_argument("--photos", type=int, default=300, help="how many of them, spread evenly (default 300)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "liveness.json", help="result JSON")
    args = parser.parse_args(argv)
    made = None
    sets = args.sets
    if sets is None:
        from spoof_set import generate

        sets = made = Path(tempfile.mkdtemp(prefix="spoof_set_"))
        print(f"generating {args.count} sessions per kind from {args.split} (seed {args.seed}) into {sets}",
              file=sys.stderr)
        generate(sets, split=args.split, count=args.count, seed=args.seed)
    try:
        sources = {"synthetic": faceid_liveness([str(sets), "--limit", str(args.count)])}
        real_args = real_capture_args(args.real_photos, args.photos)
        if real_args:
            sources["real captures + live photos"] = faceid_liveness(real_args)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    result: dict = {"machine": machine(), "commit": source_commit(), "policies": {
        mode: {"min_frames": p.min_frames, "threshold": p.threshold} for mode, p in POLICIES.items()},
        "sources": {}, "curves": {}, "points": {}}
    for name, scored in sources.items():
        sessions = sessions_of(scored)
        result["sources"][name] = {"args": scored["args"], "modes": scored["modes"]}
        result["curves"][name] = curve(sessions, POLICIES["basic"].min_frames)
        result["points"][name] = {}
        for mode in POLICIES:
            m = scored["modes"][mode]
            apcer = [r["rate"] for r in m["apcer"].values() if r["trials"]]
            result["points"][name][mode] = {"bpcer": m["bpcer"]["session"]["rate"] or 0.0,
                                            "apcer_worst": max(apcer, default=0.0)}
            print(f"\n### {name}: faceid liveness {' '.join(scored['args'])}\n")
            print(pad.table(m, mode))
    if SPOOF.is_dir():
        result["grey_copies"] = grey_copies()
        print("\ngrey copies of ../shared/spoof's videos, mean P(real) of 60 frames: "
              + ", ".join(f"{k} {v}" for k, v in result["grey_copies"].items()))
    plot(result["curves"], result["points"], PLOT)
    save_json(args.out, result)
    print(f"\nplot: {PLOT.relative_to(REPO)}; results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
