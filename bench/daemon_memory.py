"""faceidd's resident memory: idle with 1 and with 100 enrolled users, and under 8 concurrent sessions.

Users are synthetic but their templates are real: each gets 5 embeddings
(enroll.frames) of real dev/lfw faces, written with Store as `faceid enroll`
writes them. RSS is read from /proc (VmRSS) a settling second after the
daemon says READY=1; under load it is sampled every 50 ms while 8 clients
(daemon.max_sessions) each run sessions back to back for a few seconds,
streaming JPEG frames of a person who is not enrolled (so sessions run to
their timeout, the daemon's longest), and the peak sample is reported with
the frames the daemon scored per second. Every figure is the median of
REPEATS fresh daemons. The daemon runs with the shipped unit's environment
(MALLOC_ARENA_MAX) and without lockout (_common.BENCH_POLICY), which would
otherwise refuse the stranger's sessions at hello after a few failures, but
with the shipped liveness.mode (basic: the anti-spoofing model is loaded and
warmed up at start); ``--liveness-every-frame`` makes every face match
(auth.threshold -1) so that the model also runs on every frame under load.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEFAULT_OUT, DEV_LFW, Faceidd, daemon_config, default_model, embed_images,  # noqa: E402
                     machine, median, person_images, proc_memory, require_faces, require_model, save_json,
                     short_tmp, unit_environment, write_config)

from pam_faceid.common import protocol  # noqa: E402

TEMPLATES_PER_USER = 5
SESSIONS = 8
SETTLE = 1.0


def pool_vectors(model: Path, count: int) -> tuple[np.ndarray, object]:
    """Embeddings of the first ``count`` dev/lfw photos with a face (identities in name order)."""
    paths: list[Path] = []
    for folder in sorted(DEV_LFW.iterdir()):
        paths += sorted(folder.iterdir())[:2]
        if len(paths) >= count + 20:
            break
    vectors, embedder, _used = embed_images(paths, model)
    return vectors[:count], embedder


def enrol_users(state_dir: Path, users: int, vectors: np.ndarray, embedder: object) -> list[str]:
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.common.store import Store

    store = Store(state_dir)
    names = []
    for u in range(users):
        rows = [(u * TEMPLATES_PER_USER + j) % len(vectors) for j in range(TEMPLATES_PER_USER)]
        name = f"benchuser{u:03d}"
        store.add_templates(name, vectors[rows], label="bench", model_id=model_id_of(embedder))
        names.append(name)
    return names


def load_sessions(socket_path: str, users: list[str], frames: list[bytes], seconds: float) -> dict:
    """SESSIONS client threads running sessions back to back for ``seconds``; counts what the daemon answered."""
    stop = time.monotonic() + seconds
    counts = {"frames": 0, "sessions": 0, "errors": 0}
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            try:
                with protocol.Client(socket_path, 5.0) as c:
                    answer = c.request("hello", protocol.hello_fields(users[k % len(users)], "bench"), timeout=5.0)
                    while answer.type in ("ready", "progress") and time.monotonic() < stop:
                        answer = c.request("frame", payload=frames[i % len(frames)], timeout=10.0)
                        i += 1
                        with lock:
                            counts["frames"] += 1
                with lock:
                    counts["sessions"] += 1
            except protocol.DaemonError:
                with lock:
                    counts["errors"] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(SESSIONS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["seconds"] = time.monotonic() - started
    return counts


def one_round(model: Path, vectors: np.ndarray, embedder: object, frames: list[bytes], load_seconds: float,
              every_frame: bool = False) -> dict:
    out: dict = {}
    extra: dict = {"liveness": {"mode": "basic"}}
    if every_frame:
        extra["auth"] = {"threshold": -1.0}
    for users in (1, 100):
        base = short_tmp()
        try:
            socket_path = str(base / "run" / "faceidd.sock")
            state_dir = base / "state"
            names = enrol_users(state_dir, users, vectors, embedder)
            config = write_config(base / "etc" / "config.yaml", daemon_config(base, model, socket_path, state_dir,
                                                                                    extra))
            with Faceidd(base, config, socket_path, state_dir, unit_environment()) as daemon:
                time.sleep(SETTLE)
                out[f"idle_{users}"] = proc_memory(daemon.pid)["rss_mb"]
                out[f"ready_seconds_{users}"] = daemon.ready_seconds
                if users == 100:
                    peak = [0.0]
                    done = threading.Event()

                    def sample() -> None:
                        while not done.is_set():
                            peak[0] = max(peak[0], proc_memory(daemon.pid)["rss_mb"])
                            time.sleep(0.05)

                    sampler = threading.Thread(target=sample)
                    sampler.start()
                    try:
                        counts = load_sessions(socket_path, names, frames, load_seconds)
                    finally:
                        done.set()
                        sampler.join()
                    out["load_peak"] = peak[0]
                    out["load_frames_per_second"] = counts["frames"] / counts["seconds"]
                    out["load_sessions"] = counts["sessions"]
                    out["load_errors"] = counts["errors"]
                    time.sleep(SETTLE)
                    out["after_load"] = proc_memory(daemon.pid)["rss_mb"]
        finally:
            shutil.rmtree(base, ignore_errors=True)
    return out


def run(model: Path, repeats: int, load_seconds: float, stranger: str, every_frame: bool = False) -> dict:
    from pam_faceid.common.images import read_image
    from pam_faceid.vision.camera import encode_jpeg

    require_faces()
    require_model(model)
    vectors, embedder = pool_vectors(model, 200)
    frames = [encode_jpeg(read_image(p)) for p in person_images(stranger)[:20]]
    rounds = [one_round(model, vectors, embedder, frames, load_seconds, every_frame) for _ in range(repeats)]
    keys = rounds[0].keys()
    return {"machine": machine(), "model": str(model), "repeats": repeats, "load_seconds": load_seconds,
            "sessions": SESSIONS, "templates_per_user": TEMPLATES_PER_USER, "stranger": stranger,
            "liveness": "basic", "liveness_every_frame": every_frame,
            "median": {k: median([r[k] for r in rounds]) for k in keys}, "rounds": rounds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="model folder (default: bundled)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh daemons per figure (default 3)")
    parser.add_argument("--load-seconds", type=float, default=6.0, help="length of the load phase (default 6)")
    parser.add_argument("--stranger", default="Hugo_Chavez", help="dev/lfw identity shown under load")
    parser.add_argument("--liveness-every-frame", action="store_true",
                        help="every face matches under load, so the anti-spoofing model runs on every frame")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "daemon_memory.json", help="result JSON")
    args = parser.parse_args(argv)
    result = run(args.model, args.repeats, args.load_seconds, args.stranger, args.liveness_every_frame)
    save_json(args.out, result)
    m = result["median"]
    print(f"faceidd RSS: idle 1 user {m['idle_1']:.0f} MiB, idle 100 users {m['idle_100']:.0f} MiB, "
          f"{SESSIONS} sessions peak {m['load_peak']:.0f} MiB ({m['load_frames_per_second']:.0f} frames/s), "
          f"after load {m['after_load']:.0f} MiB; start to ready {m['ready_seconds_100']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
