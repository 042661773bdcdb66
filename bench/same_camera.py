"""Same-camera FAR side by side: one threshold against each user's operating point, on same-camera and web faces.

Collections: the held-out identities of train/yaleb (one camera, one room:
model.holdout, never trained or fit on) and dev/lfw (web photos, where the
shipped threshold was fit). Protocols, each on the same embeddings (every
image embedded once per collection): enrol-3 judged at the one global
threshold, enrol-3 judged at each identity's operating point
(vision.operating, what faceidd uses), and the guided protocol (enrol the
5 images guided enrolment keeps) at the operating point. Images a login
refuses as too dark (under camera.dark_threshold's default 10 %) are counted
apart. Each row's equivalent `faceid evaluate` command is in the output.

    .venv/bin/python bench/same_camera.py --out /tmp/same_camera.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import FACES, REPO, machine

from pam_faceid.cli.evaluate import guided_choice, make_embed, operating_for
from pam_faceid.model.evaluate import Embeddings, evaluate
from pam_faceid.model.holdout import held_out

KEYS = ("far", "frr", "false_accepts", "impostor_attempts", "false_rejects", "genuine_attempts", "too_dark",
        "user_threshold_min", "user_threshold_median", "user_threshold_max", "enroll_threshold_at_far_1e-3",
        "enroll_frr_at_far_1e-3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    yaleb, lfw = FACES / "train" / "yaleb", FACES / "dev" / "lfw"
    for folder in (yaleb, lfw):
        if not folder.is_dir():
            print(f"same_camera: {folder} is absent", file=sys.stderr)
            return 1
    embed, embedder = make_embed(None, "onnx", False, dark_threshold=10.0, guided=True)
    threshold = float(embedder.threshold)
    operating = operating_for(embedder, threshold)
    rows = []
    for name, root, ids in (("held-out train/yaleb (same camera)", yaleb, held_out(yaleb)), ("dev/lfw (web)", lfw, None)):
        cache = Embeddings()
        base = f"faceid evaluate ../shared/faces/{root.relative_to(FACES)}"
        held = " --held-out" if ids else ""
        plans = (("enrol-3, one threshold", 3, None, None, f"{base} --enroll 3{held} --flat"),
                 ("enrol-3, operating point", 3, operating, None, f"{base} --enroll 3{held}"),
                 ("guided (5 views), operating point", 5, operating, guided_choice, f"{base} --enroll 5 --guided{held}"))
        for label, k, op, guide, command in plans:
            started = time.perf_counter()
            result = evaluate(root, embed, enroll=k, threshold=threshold, workers=args.workers, operating=op,
                              identities=ids, guided=guide, embeddings=cache)
            row = {"collection": name, "protocol": label, "command": command,
                   "seconds": round(time.perf_counter() - started, 1), **{key: result.get(key) for key in KEYS}}
            rows.append(row)
            print(f"{name:38} {label:36} FAR {row['far']:.2e} ({row['false_accepts']}/{row['impostor_attempts']})  "
                  f"FRR {100 * row['frr']:5.2f} %  too dark apart {row['too_dark']:4}  thresholds "
                  f"{row['user_threshold_min']:.4f}-{row['user_threshold_max']:.4f}   [{command}]", flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"commit": commit, "global_threshold": threshold, "rows": rows, "machine": machine()}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
