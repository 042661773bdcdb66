"""Load: many concurrent authentication sessions from many client processes against one faceidd.

Each of --processes client processes opens --sessions connections at the
same instant (a shared start time), so processes x sessions sessions are in
flight together. A session is what the helper does: connect, hello, JPEG
frames lock-step until the verdict (``end`` after the last frame). Half the
sessions show the enrolled person (4 other dev/lfw photos of them), half
another person. Before the burst, one session of each kind runs alone; its
verdict is the reference. Every session carries a unique service name; the
run checks that each got exactly one verdict, the reference of its kind, and
that the daemon's audit log holds exactly one line per session with the
same verdict: nothing lost, nothing crossed.

Reported: hello-to-verdict latency p50/p95/max, hello-to-ready latency (the
helper gives the daemon 1 s for that), frames scored per second, peak RSS.
``--no-frames`` runs sessions for a user who is not enrolled (hello ->
verdict only): it needs no model and measures the connection handling alone.

The daemon runs with the Environment= of systemd/faceidd.service,
daemon.max_sessions raised to cover the burst (the default, 8, makes the 9th
concurrent session wait up to 3 s for a slot and then answers "busy"), a
session timeout of 30 s (sessions queue for the one serialised detector),
and lockout and liveness off (_common.BENCH_POLICY: half the sessions fail
on purpose; the frames are different photos, not a live face).

    sudo .venv/bin/python bench/load.py                      # 20 processes x 10 sessions, the README figure
    sudo .venv/bin/python bench/load.py --processes 5 --sessions 4 --out /tmp/load.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import (DEFAULT_OUT, Faceidd, daemon_config, default_model, embed_images, enrol, machine,
                           person_images, proc_memory, require_faces, require_model, save_json, short_tmp, summary,
                           unit_environment, write_config)

from pam_faceid.common import protocol

PERSON = "Tony_Blair"
OTHER = "Hugo_Chavez"
USER = "loadowner"
FRAMES = 4
"""Frames a session may send: 2 matching frames (auth.min_matching_frames) decide a match."""


def jpeg_frames(paths: list[Path]) -> list[bytes]:
    """Frames as the helper sends them (pam_faceid.camera.encode_jpeg: <= 640 px, JPEG quality 85)."""
    import cv2

    from pam_faceid.camera import encode_jpeg

    return [encode_jpeg(cv2.imread(str(p))) for p in paths]


def one_session(path: str, tag: str, user: str, frames: list[bytes], deadline: float) -> dict[str, Any]:
    """One helper-like session; never raises: failures are recorded as results."""
    started = time.monotonic()
    out: dict[str, Any] = {"tag": tag, "ready_s": None, "result": None, "frames": 0}
    try:
        with protocol.Client(path, max(1.0, deadline - time.monotonic())) as client:
            reply = client.request("hello", protocol.hello_fields(user, tag), timeout=deadline - time.monotonic())
            out["ready_s"] = time.monotonic() - started
            for payload in frames:
                if reply.type not in ("ready", "progress"):
                    break
                reply = client.request("frame", payload=payload, timeout=deadline - time.monotonic())
                out["frames"] += 1
            if reply.type in ("ready", "progress"):
                reply = client.request("end", timeout=deadline - time.monotonic())
            out["result"] = reply.get("result") if reply.type == "verdict" else f"answer:{reply.type}"
    except protocol.DaemonError as exc:
        out["result"] = f"failed: {exc}"
    out["seconds"] = time.monotonic() - started
    return out


def client_process(path: str, index: int, sessions: int, start_at: float, user: str,
                   genuine: list[bytes], impostor: list[bytes], queue: Any) -> None:
    """One client process: ``sessions`` threads, all starting their session at ``start_at`` (time.time())."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        kind = "genuine" if (index + i) % 2 == 0 else "impostor"
        frames = genuine if kind == "genuine" else impostor
        time.sleep(max(0.0, start_at - time.time()))
        result = one_session(path, f"load-{index:02d}-{i:02d}", user, frames, time.monotonic() + 60)
        result["kind"] = kind
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(results)


AUDIT = re.compile(r"auth user=(\S+) service=(load-\d+-\d+) .* verdict=(\S+)")


def run(processes: int, sessions: int, model: Path | None, max_sessions: int) -> dict[str, Any]:
    total = processes * sessions
    base = short_tmp("fidl")
    try:
        state_dir = base / "state"
        socket_path = str(base / "faceidd.sock")
        genuine = impostor = []
        user = "loadnobody"  # not enrolled: --no-frames sessions end at hello
        if model is not None:
            vectors, embedder, _ = embed_images(person_images(PERSON)[:4], model)
            enrol(state_dir, USER, vectors, embedder)
            genuine = jpeg_frames(person_images(PERSON)[4:4 + FRAMES])
            impostor = jpeg_frames(person_images(OTHER)[:FRAMES])
            user = USER
        extra = {"daemon": {"max_sessions": max(max_sessions, 1)}, "auth": {"timeout": 30.0}}
        config = write_config(base / "etc" / "config.yaml",
                              daemon_config(base, model or base / "no-model", socket_path, state_dir, extra))
        with Faceidd(base, config, socket_path, state_dir, unit_environment()) as daemon:
            idle = proc_memory(daemon.pid)
            # What each kind of session gets alone: the burst must give every session exactly that.
            reference = {kind: one_session(socket_path, f"quiet-{kind}", user, frames, time.monotonic() + 30)["result"]
                         for kind, frames in (("genuine", genuine), ("impostor", impostor))}
            ctx = multiprocessing.get_context("fork")
            queue = ctx.Queue()
            start_at = time.time() + 1.0 + 0.05 * processes
            procs = [ctx.Process(target=client_process, args=(socket_path, p, sessions, start_at, user, genuine,
                                                              impostor, queue)) for p in range(processes)]
            for proc in procs:
                proc.start()
            peak = idle["rss_mb"]
            results: list[dict[str, Any]] = []
            while len(results) < total and any(p.is_alive() for p in procs) or not queue.empty():
                peak = max(peak, proc_memory(daemon.pid)["rss_mb"])
                try:
                    results += queue.get(timeout=0.05)
                except Exception:
                    pass
            for proc in procs:
                proc.join()
            wall = time.time() - start_at
            time.sleep(0.3)
            logs = daemon.logs()
            after = proc_memory(daemon.pid)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return check(results, logs, total, reference) | {
        "processes": processes, "sessions_per_process": sessions, "max_sessions": max_sessions,
        "frames_mode": model is not None, "reference": reference, "wall_s": wall, "rss_idle_mb": idle["rss_mb"],
        "rss_peak_mb": peak, "rss_after_mb": after["rss_mb"],
    }


def check(results: list[dict[str, Any]], logs: str, total: int, reference: dict[str, str]) -> dict[str, Any]:
    """Every session one verdict, the one its kind gets alone (``reference``), and that one in its audit line."""
    audit: dict[str, list[str]] = {}
    for _user, tag, verdict in AUDIT.findall(logs):
        audit.setdefault(tag, []).append(verdict)
    wrong, crossed = [], []
    for r in results:
        if r["result"] != reference[r["kind"]]:
            wrong.append(r)
        if audit.get(r["tag"]) != [r["result"]]:
            crossed.append((r["tag"], r["result"], audit.get(r["tag"])))
    counts: dict[str, int] = {}
    for r in results:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    frames = sum(r["frames"] for r in results)
    total_s = [r["seconds"] for r in results if r["ready_s"] is not None]
    return {
        "sessions": total, "answered": len(results), "verdicts": counts,
        "lost": total - sum(1 for r in results if r["result"] in protocol.RESULTS),
        "wrong": len(wrong), "wrong_examples": wrong[:5], "audit_mismatch": len(crossed),
        "audit_examples": crossed[:5], "audit_lines": sum(len(v) for v in audit.values()),
        "latency_s": summary(total_s), "ready_s": summary([r["ready_s"] for r in results if r["ready_s"] is not None]),
        "frames_scored": frames,
        "frames_per_s": frames / max(1e-9, max(total_s, default=0.0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=20, help="client processes (default 20)")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent sessions per process (default 10)")
    parser.add_argument("--model", type=Path, default=Path(os.environ.get("FACEID_TEST_MODEL") or default_model()),
                        help="model folder (default: $FACEID_TEST_MODEL or the bundled model)")
    parser.add_argument("--no-frames", action="store_true", help="hello -> verdict sessions only (no model needed)")
    parser.add_argument("--max-sessions", type=int, default=256, help="daemon.max_sessions for the run (default 256)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "load.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/load.py: run as root (faceidd reads a root-owned state folder)")
    model = None
    if not args.no_frames:
        require_faces()
        require_model(args.model)
        model = args.model
    result = run(args.processes, args.sessions, model, args.max_sessions)
    result["machine"] = machine()
    result["command"] = "bench/load.py " + " ".join(sys.argv[1:])
    save_json(args.out, result)
    lat, ready = result["latency_s"], result["ready_s"]
    print(f"{result['sessions']} concurrent sessions from {args.processes} processes "
          f"({'frames' if model else 'hello only'}): {result['answered']} answered, lost {result['lost']}, "
          f"wrong {result['wrong']}, audit mismatches {result['audit_mismatch']}; verdicts {result['verdicts']} "
          f"(alone: {result['reference']})")
    if lat["n"]:
        print(f"hello->verdict p50 {lat['p50']:.3f} s, p95 {lat['p95']:.3f} s, max {lat['max']:.3f} s; "
              f"hello->ready p50 {ready['p50']:.3f} s, p95 {ready['p95']:.3f} s; "
              f"{result['frames_scored']} frames ({result['frames_per_s']:.1f}/s); "
              f"RSS idle {result['rss_idle_mb']:.0f} MiB, peak {result['rss_peak_mb']:.0f} MiB")
    print(f"results: {args.out}")
    return 0 if result["lost"] == 0 and result["wrong"] == 0 and result["audit_mismatch"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
