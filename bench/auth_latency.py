"""Login latency, PAM call to verdict, three ways on the same frames, interleaved in one run.

(a) pam_faceid: python-pam -> pam_exec -> faceid-helper -> a warm faceidd,
    from pam_authenticate() until it returns (a temporary /etc/pam.d service
    and a temporary user, both removed afterwards).
(b) "the Howdy way" with our code: a fresh process per attempt that imports
    the libraries, loads the model and the enrolment and decides on the same
    frames with the same code (bench/_per_attempt.py), no daemon.
(c) Howdy's own path: a fresh process per attempt with dlib's HOG detector,
    5-point landmarks and ResNet descriptor, as Howdy's compare.py
    (bench/_howdy_attempt.py).

The camera is an image folder: attempt i shows FRAMES photos of one real
person (dev/lfw) that were not used to enrol them, the same photos to all
three. Opening the camera is timed inside each path and reported apart; the
headline figures are without it (a real V4L2 camera's start-up is the same
for all three). The three paths take turns attempt by attempt, in a rotating
order, so load from other work on this shared machine hits them alike, and
the ratios come from this one run. The daemon runs with the shipped unit's
environment and the benchmarks' policy (_common.BENCH_POLICY): liveness off,
since the camera replays still photos (bench/liveness.py measures that
check), and no lockout, so a no_match never turns later attempts into
refusals; the per-attempt path reads the same config.

Plain LFW photos of one person are hard for a small model, so those
attempts may mostly end no_match after every frame. A second phase times
matching logins of (a) and (b), interleaved: the camera shows enrolment
photos, as a camera shows the face it enrolled, so the verdict comes after
auth.min_matching_frames frames. Howdy is left out there: its compare step
refuses a distance of exactly 0 (``0 < match``), which an enrolment photo gives.

A last phase (bench/_sudo_race.py) times real sudo in a pty with a stranger
in view and the password typed 0.2 s after the prompt: today's pam_exec
stack beside the pam_python race (``faceid pam enable --start race``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import _sudo_race

try:
    import _howdy_attempt as howdy  # dlib: the bench extra
except ImportError as exc:
    howdy = None
    HOWDY_MISSING = str(exc)
from bench._common import (BENCH, BENCH_POLICY, CLEAN_ENV, DEFAULT_OUT, PYTHON, Faceidd, camera_folder,
                           cleanup_on_sigterm, daemon_config, default_model, embed_images, enrol, machine, pam_service,
                           person_images, require_faces, require_model, save_json, short_tmp, summary, temp_user,
                           unit_environment, write_config)

PATHS = ("daemon", "per_attempt", "howdy")
MATCH_PATHS = ("daemon_match", "per_attempt_match")
LABELS = {"daemon": "pam_faceid (PAM + helper + warm faceidd)",
          "per_attempt": "per-attempt process, our code (the Howdy way)",
          "howdy": "Howdy's path (dlib HOG + 5-point + ResNet)",
          "daemon_match": "pam_faceid, matching login",
          "per_attempt_match": "per-attempt process, matching login"}
GOALS = {"p50_ms": 100.0, "vs_howdy": 5.0, "vs_per_attempt": 10.0}


def howdy_enrolment(paths: list[Path], out: Path) -> int:
    """Howdy's model file for the user: one descriptor per enrolment photo (the first face HOG finds)."""
    import cv2

    models = howdy.load_models()
    data = []
    for path in paths:
        frame = cv2.imread(str(path))
        found = howdy.encodings(frame, howdy.MAX_HEIGHT / frame.shape[0], models)
        if found:
            data.append(found[0].tolist())
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.write_text(json.dumps([{"label": "bench", "id": 0, "data": data}]))
    return len(data)


def _child(command: list[str]) -> dict:
    """Run one fresh-process attempt; its verdict time is on the shared monotonic clock."""
    started = time.monotonic()
    proc = subprocess.run(command, env=CLEAN_ENV, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SystemExit(f"auth_latency: {' '.join(command[:2])} failed: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": out["verdict_at"] - started, "camera_open": out["camera_open"], "result": out["result"],
            "frames": out["frames"], "score": out["score"]}


class PamClient:
    """The PAM application, one persistent process: each request is one timed pam_authenticate."""

    def __init__(self, service: str, user: str, camera_log: Path):
        self.camera_log = camera_log
        self.seen = 0
        self.proc = subprocess.Popen([str(PYTHON), str(BENCH / "_pam_client.py"), service, user], env=CLEAN_ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def attempt(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("auth_latency: the PAM client died")
        out = json.loads(line)
        lines = self.camera_log.read_text().splitlines() if self.camera_log.exists() else []
        new = lines[self.seen:]
        self.seen = len(lines)
        camera_open = json.loads(new[-1])["camera_open"] if new else None
        return {"seconds": out["seconds"], "camera_open": camera_open, "result": "match" if out["ok"] else "no",
                "messages": out["messages"]}

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(10)


SESSION_LINE = re.compile(r"auth user=(\S+) .* verdict=(\S+) score=(\S+) frames=(\d+) ms=(\d+)")


def run(model: Path, person: str, attempts: int, warmup: int, frames: int, enrol_count: int,
        threshold: float | None, match_attempts: int, sudo_attempts: int = 0, stranger: str = "Hugo_Chavez") -> dict:
    from pam_faceid.common.config import load_config

    if howdy is None:
        raise SystemExit(f"auth_latency: Howdy's path needs dlib ({HOWDY_MISSING}): pip install '.[bench]', "
                         "or time only the sudo runs with --sudo-only")
    require_faces()
    require_model(model)
    images = person_images(person)
    enrol_paths, pool = images[:enrol_count], images[enrol_count:]
    rounds = warmup + attempts
    windows = [[pool[(i * frames + j) % len(pool)] for j in range(frames)] for i in range(rounds)]
    base = short_tmp()
    try:
        vectors, embedder, used = embed_images(enrol_paths, model)
        howdy_file = base / "howdy" / "models.json"
        howdy_enrolled = howdy_enrolment(enrol_paths, howdy_file)
        cameras = [camera_folder(base / "cam" / f"{i:03d}", window) for i, window in enumerate(windows)]
        match_camera = camera_folder(base / "cam" / "enrolled", used[:frames])
        socket_path = str(base / "run" / "faceidd.sock")
        state_dir = base / "state"
        config = base / "etc" / "config.yaml"
        extra = {"auth": {"threshold": threshold}} if threshold is not None else {}
        values = daemon_config(base, model, socket_path, state_dir, extra)
        camera_log = base / "camera-open.log"
        with temp_user() as user:
            enrol(state_dir, user, vectors, embedder)
            write_config(config, {**values, "camera": {"device": str(cameras[0])}})
            min_matching = int(load_config(str(config)).auth.min_matching_frames)
            helper = f"{PYTHON} {BENCH / '_timed_helper.py'} --camera-log {camera_log} --config {config}"
            samples: dict[str, list[dict]] = {name: [] for name in PATHS + MATCH_PATHS}
            with Faceidd(base, config, socket_path, state_dir, unit_environment()) as daemon, \
                    pam_service(helper) as service:
                client = PamClient(service, user, camera_log)
                try:
                    for i in range(rounds):
                        write_config(config, {**values, "camera": {"device": str(cameras[i])}})
                        order = PATHS[i % 3:] + PATHS[:i % 3]
                        for name in order:
                            if name == "daemon":
                                sample = client.attempt()
                            elif name == "per_attempt":
                                sample = _child([str(PYTHON), str(BENCH / "_per_attempt.py"), str(config), user])
                            else:
                                sample = _child([str(PYTHON), str(BENCH / "_howdy_attempt.py"), str(howdy_file),
                                                 str(cameras[i])])
                            sample["round"] = i
                            samples[name].append(sample)
                        print(f"\rattempt {i + 1 - warmup}/{attempts}" if i >= warmup else f"\rwarm-up {i + 1}",
                              end="", file=sys.stderr, flush=True)
                    write_config(config, {**values, "camera": {"device": str(match_camera)}})
                    for i in range(warmup + match_attempts):
                        for name in MATCH_PATHS[i % 2:] + MATCH_PATHS[:i % 2]:
                            if name == "daemon_match":
                                sample = client.attempt()
                            else:
                                sample = _child([str(PYTHON), str(BENCH / "_per_attempt.py"), str(config), user])
                            sample["round"] = i
                            samples[name].append(sample)
                        print(f"\rmatching login {i + 1 - warmup}/{match_attempts}" if i >= warmup
                              else f"\rwarm-up {i + 1}", end="", file=sys.stderr, flush=True)
                    race = None
                    if sudo_attempts:
                        strangers = camera_folder(base / "cam" / "stranger", person_images(stranger) * 10)
                        write_config(config, _sudo_race.stranger_config(values, strangers))
                        race = _sudo_race.run(base, user, config, sudo_attempts, warmup)
                finally:
                    client.close()
                    print(file=sys.stderr)
                    daemon_log = daemon.logs()
        sessions = [m.groups() for m in SESSION_LINE.finditer(daemon_log) if m.group(1) == user]
        for sample, (_u, verdict, score, nframes, ms) in zip(samples["daemon"] + samples["daemon_match"], sessions):
            sample.update({"result": verdict, "frames": int(nframes),
                           "score": None if score == "-" else float(score), "daemon_ms": int(ms)})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result = report(samples, warmup, {
        "model": str(model), "threshold": threshold if threshold is not None else embedder.threshold,
        "person": person, "enrol_photos": len(used), "howdy_enrol_photos": howdy_enrolled,
        "frames_per_attempt": frames, "attempts": attempts, "warmup": warmup, "match_attempts": match_attempts,
        "min_matching_frames": min_matching, "howdy_certainty": howdy.CERTAINTY,
        "liveness": BENCH_POLICY["liveness"]["mode"]})
    if race is not None:
        result["password_race"] = {**race, "stranger": stranger}
    return result


def sudo_only(model: Path, person: str, stranger: str, enrol_count: int, attempts: int, warmup: int) -> dict:
    """Only the sudo phase (no dlib needed): the user enrolled from ``person``, ``stranger`` in view."""
    require_faces()
    require_model(model)
    base = short_tmp()
    try:
        vectors, embedder, _used = embed_images(person_images(person)[:enrol_count], model)
        socket_path, state_dir = str(base / "run" / "faceidd.sock"), base / "state"
        config = base / "etc" / "config.yaml"
        values = daemon_config(base, model, socket_path, state_dir)
        strangers = camera_folder(base / "cam" / "stranger", person_images(stranger) * 10)
        write_config(config, _sudo_race.stranger_config(values, strangers))
        with temp_user() as user:
            enrol(state_dir, user, vectors, embedder)
            with Faceidd(base, config, socket_path, state_dir, unit_environment()):
                race = _sudo_race.run(base, user, config, attempts, warmup)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {"machine": machine(), "password_race": {**race, "stranger": stranger, "person": person}}


def path_summary(name: str, kept: list[dict]) -> dict:
    """p50/p95 with and without camera opening, match rate, frames, best scores of one path's timed attempts."""
    total = [1000 * s["seconds"] for s in kept]
    camera = [1000 * (s["camera_open"] or 0.0) for s in kept]
    out = {
        "label": LABELS[name],
        "ms": summary([t - c for t, c in zip(total, camera)]),
        "ms_with_camera_open": summary(total),
        "camera_open_ms": summary(camera),
        "match_rate": sum(s["result"] == "match" for s in kept) / max(1, len(kept)),
        "frames": summary([s["frames"] for s in kept if s.get("frames") is not None]),
        "samples_ms": [t - c for t, c in zip(total, camera)],
        "results": [s["result"] for s in kept],
        "scores": [s.get("score") for s in kept],
    }
    if name.startswith("daemon"):
        out["daemon_session_ms"] = summary([s["daemon_ms"] for s in kept if "daemon_ms" in s])
    return out


def report(samples: dict[str, list[dict]], warmup: int, setup: dict) -> dict:
    """Per path: p50/p95 with and without camera opening, match rate, frames; then the ratios of p50 and p95.

    The three paths on the same frames give the headline ratios; the matching logins (camera showing
    enrolment photos, so a verdict after min_matching_frames frames) give the time of a successful unlock.
    """
    paths = {name: path_summary(name, [s for s in samples[name] if s["round"] >= warmup]) for name in PATHS}
    matching = {name: path_summary(name, [s for s in samples[name] if s["round"] >= warmup])
                for name in MATCH_PATHS if samples.get(name)}
    ours = paths["daemon"]["ms"]
    ratios = {}
    for other in ("per_attempt", "howdy"):
        theirs = paths[other]["ms"]
        ratios[f"{other}_over_daemon_p50"] = theirs["p50"] / ours["p50"]
        ratios[f"{other}_over_daemon_p95"] = theirs["p95"] / ours["p95"]
    if len(matching) == 2:
        ratios["matching_per_attempt_over_daemon_p50"] = (matching["per_attempt_match"]["ms"]["p50"]
                                                          / matching["daemon_match"]["ms"]["p50"])
        ratios["matching_per_attempt_over_daemon_p95"] = (matching["per_attempt_match"]["ms"]["p95"]
                                                          / matching["daemon_match"]["ms"]["p95"])
    goals = {
        "p50_ms": ours["p50"] <= GOALS["p50_ms"],
        "vs_howdy": ratios["howdy_over_daemon_p50"] >= GOALS["vs_howdy"],
        "vs_per_attempt": ratios["per_attempt_over_daemon_p50"] >= GOALS["vs_per_attempt"],
    }
    if matching:
        goals["matching_p50_ms"] = matching["daemon_match"]["ms"]["p50"] <= GOALS["p50_ms"]
    return {"machine": machine(), "setup": setup, "paths": paths, "matching": matching, "ratios": ratios,
            "goals": GOALS, "goals_met": goals}


def _print_race(result: dict) -> None:
    for stack in result.get("password_race", {}).get("stacks", {}).values():
        print(f"{stack['label']:<55} start to prompt p50 {stack['prompt_ms']['p50']:7.1f} ms  "
              f"Enter to shell p50 {stack['enter_to_shell_ms']['p50']:6.1f} ms, p95 "
              f"{stack['enter_to_shell_ms']['p95']:6.1f} ms  "
              f"start to shell p50 {stack['start_to_shell_ms']['p50']:7.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="model folder (default: bundled)")
    parser.add_argument("--person", default="Tony_Blair", help="dev/lfw identity who logs in (default Tony_Blair)")
    parser.add_argument("--attempts", type=int, default=50, help="timed attempts per path (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    parser.add_argument("--frames", type=int, default=4, help="photos the camera shows per attempt (default 4)")
    parser.add_argument("--enrol", type=int, default=5, help="photos enrolled (default 5, enroll.frames)")
    parser.add_argument("--threshold", type=float, help="override the model's threshold (for a smoke model only)")
    parser.add_argument("--match-attempts", type=int, default=50,
                        help="timed matching logins per path, camera showing enrolment photos (default 50)")
    parser.add_argument("--sudo-attempts", type=int, default=10,
                        help="timed sudo runs per stack, stranger in view, password typed (default 10; 0: skip)")
    parser.add_argument("--sudo-only", action="store_true", help="only the sudo runs (no dlib needed)")
    parser.add_argument("--stranger", default="Hugo_Chavez", help="dev/lfw identity in view for those runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "auth_latency.json", help="result JSON")
    args = parser.parse_args(argv)
    cleanup_on_sigterm()
    if args.sudo_only:
        result = sudo_only(args.model, args.person, args.stranger, args.enrol, args.sudo_attempts, args.warmup)
        save_json(args.out, result)
        _print_race(result)
        return 0
    result = run(args.model, args.person, args.attempts, args.warmup, args.frames, args.enrol, args.threshold,
                 args.match_attempts, args.sudo_attempts, args.stranger)
    save_json(args.out, result)
    for _name, path in result["paths"].items():
        ms, cam = path["ms"], path["camera_open_ms"]
        print(f"{path['label']:<50} p50 {ms['p50']:7.1f} ms  p95 {ms['p95']:7.1f} ms  "
              f"(camera open p50 {cam['p50']:.1f} ms)  match {100 * path['match_rate']:.0f} %  "
              f"frames p50 {path['frames']['p50']}")
    for _name, path in result["matching"].items():
        ms = path["ms"]
        print(f"{path['label']:<50} p50 {ms['p50']:7.1f} ms  p95 {ms['p95']:7.1f} ms  "
              f"match {100 * path['match_rate']:.0f} %  frames p50 {path['frames']['p50']}")
    _print_race(result)
    r = result["ratios"]
    print(f"per-attempt / pam_faceid: {r['per_attempt_over_daemon_p50']:.1f}x (p50)   "
          f"Howdy / pam_faceid: {r['howdy_over_daemon_p50']:.1f}x (p50)   goals met: {result['goals_met']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
