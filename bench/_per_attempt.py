"""One login "the Howdy way" with our own code: a fresh process that loads everything, decides, exits.

The same code the daemon and helper run, minus the daemon: the daemon's
load_state (config, model, warm-up embedding, every enrolment and per-user
head), the helper's frame source and JPEG encoding, the daemon's
Engine.examine (through the user's head, if any) and Decision with the
config's liveness mode. Prints one JSON line: the monotonic time of the verdict, how long
the camera took to open, and the verdict. Args: CONFIG USER.
"""

from __future__ import annotations

import json
import sys
import time

from pam_faceid.camera import FrameSource
from pam_faceid.daemon.decision import Decision
from pam_faceid.daemon.engine import load_state
from pam_faceid.camera import encode_jpeg


def main() -> int:
    config, user = sys.argv[1], sys.argv[2]
    state = load_state(config, {})
    entry = state.users[user]
    if entry.engine is None or entry.threshold is None:
        raise SystemExit(f"model not loaded: {state.engine_error}")
    cfg = state.cfg
    decision = Decision(entry.threshold, cfg.auth.min_matching_frames, cfg.auth.timeout,
                        cfg.daemon.max_frames_per_session, liveness=cfg.liveness.mode)
    started = time.monotonic()
    source = FrameSource.from_config(cfg.camera)
    camera_open = time.monotonic() - started
    verdict = None
    with source:
        for frame in source.frames(timeout=cfg.auth.timeout):
            score, reason, decoded, face = entry.engine.examine(encode_jpeg(frame), entry.templates, entry.head)
            verdict = decision.observe(score, reason, time.monotonic(), decoded, face)
            if verdict is not None:
                break
    if verdict is None:
        verdict = decision.finish(time.monotonic(), "camera ended")
    print(json.dumps({"verdict_at": time.monotonic(), "camera_open": camera_open, "result": verdict.result,
                      "frames": verdict.frames, "score": verdict.score}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
