"""Fuzz a live faceidd over its socket: 100,000 inputs, each on a fresh connection; no crash, no hang, flat memory.

Inputs come from bench/fuzz_inputs.py: hypothesis draws a case (1-4
messages: valid ones with hostile fields, raw bytes, lying length and header
lengths, JPEG, broken-JPEG and noise frames) and each case is sent as drawn
plus --variants - 1 seeded byte-level mutations. With a model, every second
input follows a valid hello for an enrolled user (random templates), so it
is read as session messages and its frames reach the detector and the
embedder. Per input the daemon must close the connection within 8 s and send
only valid messages; at the end it must be alive, answer status, and have
no traceback or internal error in its log. VmRSS is read after every
chunk of 5,000 inputs; the first half of the run is the warm-up (allocator
arenas and the runtimes' buffers settle), and flat means the second half
grew by at most --rss-slack-mib (a leak of 100 bytes per input would add
about 5 MiB there). The daemon gets the Environment= of
systemd/faceidd.service (MALLOC_ARENA_MAX=2), as it runs when installed;
--glibc-default leaves it out.

    sudo .venv/bin/python bench/fuzz.py                  # 5,000 cases x 20 = 100,000 inputs, the README figure
    sudo .venv/bin/python bench/fuzz.py --cases 500      # a quick run
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings

from bench._common import (DEFAULT_OUT, Faceidd, daemon_config, default_model, machine, person_images,
                           require_model, save_json, short_tmp, unit_environment, write_config)
from bench.fuzz_inputs import FuzzFailure, cases, expand, send_to_daemon, vm_rss_kib
from pam_faceid.common import protocol

BENCH = Path(__file__).resolve().parent

CHUNK_CASES = 250
WORKERS = 4


def noise_jpegs() -> list[bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for shape in ((48, 64, 3), (16, 16, 3), (120, 160)):
        ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, shape, np.uint8))
        out.append(buf.tobytes())
    return out


def draw_chunk(index: int, n_cases: int, variants: int, jpegs: list[bytes]) -> list[bytes]:
    """``n_cases * variants`` inputs; chunk ``index`` always draws the same ones (hypothesis seed)."""
    out: list[bytes] = []

    @seed(index)
    @settings(max_examples=n_cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases(jpegs))
    def draw(case: Any) -> None:
        out.extend(expand(case, variants))

    draw()
    return out


def run(n_cases: int, variants: int, model: Path | None, slack_mib: float,
        env: dict[str, str] | None = None) -> dict[str, Any]:
    base = short_tmp("fidf")
    try:
        state_dir = base / "state"
        socket_path = str(base / "faceidd.sock")
        jpegs = noise_jpegs()
        prefixes = [b""]
        if model is not None:
            import cv2
            import numpy as np

            from pam_faceid.vision.embedder import model_id_of
            from pam_faceid.vision.embedder import Embedder
            from pam_faceid.common.store import Store

            vectors = np.random.default_rng(3).normal(size=(3, 128)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            Store(state_dir).add_templates("root", vectors, label="fuzz", model_id=model_id_of(Embedder(model)))
            jpegs += [cv2.imencode(".jpg", cv2.imread(str(p)))[1].tobytes() for p in person_images("Tony_Blair")[:2]]
            prefixes.append(protocol.encode("hello", protocol.hello_fields("root", "fuzz")))
        config = write_config(base / "etc" / "config.yaml",
                              daemon_config(base, model or base / "no-model", socket_path, state_dir))
        # Faceidd.start unlinks its NOTIFY_SOCKET after READY=1: later notifications fail at once, never block.
        daemon = Faceidd(base, config, socket_path, state_dir, env).start()
        try:
            answers: collections.Counter[str] = collections.Counter()
            slowest = 0.0
            failures: list[str] = []
            sent = 0
            rss: list[tuple[int, int]] = []
            started = time.monotonic()
            chunks = (n_cases + CHUNK_CASES - 1) // CHUNK_CASES
            for k in range(chunks):
                inputs = draw_chunk(k, min(CHUNK_CASES, n_cases - k * CHUNK_CASES), variants, jpegs)

                def worker(items: list[tuple[int, bytes]]) -> tuple[collections.Counter[str], float, list[str]]:
                    seen: collections.Counter[str] = collections.Counter()
                    slow, bad = 0.0, []
                    for i, data in items:
                        try:
                            result = send_to_daemon(socket_path, data, prefixes[i % len(prefixes)])
                        except FuzzFailure as exc:
                            bad.append(str(exc)[:300])
                            continue
                        seen.update(result.answers)
                        slow = max(slow, result.seconds)
                    return seen, slow, bad

                numbered = [(sent + i, data) for i, data in enumerate(inputs)]
                with ThreadPoolExecutor(WORKERS) as pool:
                    for seen, slow, bad in pool.map(worker, [numbered[w::WORKERS] for w in range(WORKERS)]):
                        answers.update(seen)
                        slowest = max(slowest, slow)
                        failures += bad
                sent += len(inputs)
                if daemon.proc.poll() is not None:
                    failures.append(f"faceidd exited with {daemon.proc.returncode} after {sent} inputs")
                    break
                rss.append((sent, vm_rss_kib(daemon.pid)))
                print(f"  {sent} inputs, RSS {rss[-1][1] / 1024:.1f} MiB, {time.monotonic() - started:.0f} s",
                      flush=True)
            wall = time.monotonic() - started
            alive = daemon.proc.poll() is None
            status_ok = alive and protocol.request_status(socket_path, timeout=5)["pid"] == daemon.pid
            logs = daemon.logs()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    first = rss[0][1] if rss else 0
    warm = next((r for n, r in rss if n >= sent // 2), 0)
    last = rss[-1][1] if rss else 0
    return {
        "inputs": sent, "cases": n_cases, "variants": variants, "session_inputs": sent // len(prefixes)
        if len(prefixes) > 1 else 0, "model": str(model) if model else None, "wall_s": wall,
        "inputs_per_s": sent / max(wall, 1e-9), "slowest_connection_s": slowest, "answers": dict(answers),
        "failures": failures[:20], "failure_count": len(failures), "alive": alive, "status_ok": status_ok,
        "tracebacks": logs.count("Traceback"), "internal_errors": logs.count("internal error"),
        "rss_kib": rss, "rss_first_mib": first / 1024, "rss_half_mib": warm / 1024, "rss_last_mib": last / 1024,
        "rss_max_mib": max((r for _, r in rss), default=0) / 1024,
        "rss_flat": (last - warm) / 1024 <= slack_mib, "environment": env or {},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="hypothesis cases (default 5000)")
    parser.add_argument("--variants", type=int, default=20, help="inputs per case: itself + mutations (default 20)")
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("FACEID_TEST_MODEL") or default_model()),
                        help="model folder (default: $FACEID_TEST_MODEL or the bundled model)")
    parser.add_argument("--no-model", action="store_true", help="fuzz without a model (no session inputs)")
    parser.add_argument("--rss-slack-mib", type=float, default=4.0,
                        help="allowed RSS growth over the second half of the run (default 4)")
    parser.add_argument("--glibc-default", action="store_true",
                        help="run faceidd without the unit's Environment= (MALLOC_ARENA_MAX): glibc's own arenas")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "fuzz.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/fuzz.py: run as root (faceidd reads a root-owned state folder)")
    model = None
    if not args.no_model:
        require_model(args.model)
        model = args.model
    result = run(args.cases, args.variants, model, args.rss_slack_mib, {} if args.glibc_default else unit_environment())
    result["machine"] = machine()
    result["command"] = "bench/fuzz.py " + " ".join(sys.argv[1:])
    save_json(args.out, result)
    ok = (result["failure_count"] == 0 and result["alive"] and result["status_ok"] and result["rss_flat"]
          and not result["tracebacks"] and not result["internal_errors"])
    print(f"{result['inputs']} inputs ({result['session_inputs']} inside a session) in {result['wall_s']:.0f} s "
          f"({result['inputs_per_s']:.0f}/s): failures {result['failure_count']}, daemon alive {result['alive']}, "
          f"tracebacks {result['tracebacks']}, slowest connection {result['slowest_connection_s']:.2f} s; "
          f"RSS after 5,000 inputs {result['rss_first_mib']:.1f} MiB, half-way {result['rss_half_mib']:.1f} MiB, "
          f"at the end {result['rss_last_mib']:.1f} MiB "
          f"(max {result['rss_max_mib']:.1f}): {'flat' if result['rss_flat'] else 'GREW'}")
    for failure in result["failures"][:5]:
        print("  " + failure)
    print(f"results: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
