"""Turn the benchmarks' JSON results into bench/results.md and the PNG plots, so no figure is typed by hand.

Reads helper_start.json, auth_latency.json, embedder.json, daemon_memory.json,
retrain.json, same_camera.json and the liveness results from the results folder; a missing
one is reported as not run. Plots: ROC and score histograms on the dev pairs (one curve per
backend) and the login latency distribution of the three paths. The README
links bench/results.md rather than carrying a copy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import BENCH, DEFAULT_OUT

COLOURS = {"onnx": "tab:blue", "torch": "tab:green", "dlib": "tab:red",
           "daemon": "tab:blue", "per_attempt": "tab:orange", "howdy": "tab:red",
           "daemon_match": "navy", "per_attempt_match": "saddlebrown"}


def _load(folder: Path, name: str) -> dict | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{suffix}"


def _pct(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _ok(flag: Any) -> str:
    return "yes" if flag else "**no**"


# ---------------------------------------------------------------- plots

def plot_dev(emb: dict, out_dir: Path) -> list[str]:
    """ROC (log FAR) and genuine/impostor score histograms on dev pairs, one per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    backends = emb["backends"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in backends.items():
        labels, scores = np.asarray(r["labels"], bool), np.asarray(r["scores"])
        if labels.all() or not labels.any():
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        acc = r["accuracy"]["accuracy"]
        ax.plot(np.maximum(fpr, 1e-4), tpr, color=COLOURS.get(name),
                label=f"{r['label']} (acc {_f(acc, 3)}, AUC {_f(r['accuracy']['auc'], 3)})")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC on dev pairs ({len(next(iter(backends.values()))['labels'])} pairs)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "roc_dev.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(backends), figsize=(4 * len(backends), 3.4), squeeze=False)
    for ax, (_name, r) in zip(axes[0], backends.items()):
        labels, scores = np.asarray(r["labels"], bool), np.asarray(r["scores"])
        bins = np.linspace(-0.2, 1.0, 61)
        ax.hist(np.clip(scores[labels], -0.2, 1.0), bins=bins, alpha=0.6, color="tab:green", label="same person")
        ax.hist(np.clip(scores[~labels], -0.2, 1.0), bins=bins, alpha=0.6, color="tab:red", label="different")
        if r.get("threshold") is not None and -0.2 <= r["threshold"] <= 1.0:
            ax.axvline(r["threshold"], color="k", ls="--", lw=1, label="shipped threshold")
        ax.set_title(r["label"], fontsize=9)
        ax.set_xlabel("cosine similarity (no face = -1, clipped)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "scores_dev.png", dpi=110)
    plt.close(fig)
    return ["roc_dev.png", "scores_dev.png"]


def plot_latency(auth: dict, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.6))
    shown = {**auth["paths"], **(auth.get("matching") or {})}
    everything = [x for p in shown.values() for x in p["samples_ms"]]
    bins = np.logspace(np.log10(max(1.0, min(everything) * 0.9)), np.log10(max(everything) * 1.1), 60)
    for name, p in shown.items():
        ax.hist(p["samples_ms"], bins=bins, alpha=0.55, color=COLOURS.get(name),
                histtype="step" if name.endswith("_match") else "bar", lw=1.8,
                label=f"{p['label']}: p50 {p['ms']['p50']:.0f} ms")
    ax.set_xscale("log")
    ticks = [t for t in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000) if bins[0] <= t <= bins[-1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("PAM call (or process start) to verdict, camera opening excluded [ms, log]")
    ax.set_ylabel("attempts")
    ax.set_title(f"Login latency, {auth['setup']['attempts']} attempts per path (outlines: matching logins)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)
    plt.close(fig)
    return ["latency.png"]


# ---------------------------------------------------------------- markdown

def machine_section(m: dict) -> list[str]:
    return [
        "| machine | |", "|---|---|",
        f"| CPU | {m['cpu']} (`nproc` = {m['nproc']}) |",
        f"| memory | {m['memory_gb']} GB |",
        f"| kernel | {m['kernel']} |",
        f"| python / torch / onnxruntime | {m['python']} / {m['torch']} / {m['onnxruntime']} |",
        f"| opencv / dlib / numpy | {m['opencv']} / {m['dlib']} / {m['numpy']} |",
        f"| load average at start | {' '.join(str(x) for x in m['loadavg'])} |",
        f"| date | {m['date']} |", ""]


def auth_section(auth: dict) -> list[str]:
    s, p, r, g = auth["setup"], auth["paths"], auth["ratios"], auth["goals_met"]
    lines = [
        "## Login latency: PAM call to verdict (`bench/auth_latency.py`)", "",
        f"{s['attempts']} attempts per path after {s['warmup']} warm-up rounds, interleaved in one run. "
        f"Camera: an image folder of {s['frames_per_attempt']} photos of {s['person']} per attempt "
        f"(dev/lfw, 250x250), never the {s['enrol_photos']} enrolment photos; the same photos for all three paths. "
        f"pam_faceid decides after {s['min_matching_frames']} matching frames at threshold {s['threshold']:.3f}; "
        f"Howdy after one frame under distance {s['howdy_certainty']:.2f} (its default certainty 3.5). "
        "Times exclude camera opening, shown apart."
        + (f" Liveness is {s['liveness']} in this run (the camera replays still photos; its cost and what it "
           "stops are measured by `bench/liveness_latency.py` and `bench/liveness.py`)."
           if s.get("liveness") else ""), "",
        "| path | p50 ms | p95 ms | camera open p50 ms | match rate | frames p50 |",
        "|---|---:|---:|---:|---:|---:|"]
    for name in ("daemon", "per_attempt", "howdy"):
        q = p[name]
        lines.append(f"| {q['label']} | {_f(q['ms']['p50'])} | {_f(q['ms']['p95'])} | "
                     f"{_f(q['camera_open_ms']['p50'], 2)} | {_pct(q['match_rate'], 0)} | "
                     f"{_f(q['frames']['p50'], 0)} |")
    session = p["daemon"].get("daemon_session_ms") or {}
    lines += [
        "",
        f"Inside faceidd (hello to verdict, from its log) a pam_faceid login took p50 {_f(session.get('p50'), 0)} ms; "
        "the rest is PAM, pam_exec and starting the helper.", "",
        "| ratio (same run) | p50 | p95 | goal | met |", "|---|---:|---:|---:|---|",
        f"| Howdy's path / pam_faceid | {_f(r['howdy_over_daemon_p50'])}x | {_f(r['howdy_over_daemon_p95'])}x | "
        f">= {auth['goals']['vs_howdy']:.0f}x | {_ok(g['vs_howdy'])} |",
        f"| per-attempt process / pam_faceid | {_f(r['per_attempt_over_daemon_p50'])}x | "
        f"{_f(r['per_attempt_over_daemon_p95'])}x | >= {auth['goals']['vs_per_attempt']:.0f}x | "
        f"{_ok(g['vs_per_attempt'])} |",
        f"| pam_faceid p50 | {_f(p['daemon']['ms']['p50'])} ms | | <= {auth['goals']['p50_ms']:.0f} ms | "
        f"{_ok(g['p50_ms'])} |", ""]
    matching = auth.get("matching") or {}
    if matching:
        m = matching["daemon_match"]
        lines += [
            f"Matching logins ({s.get('match_attempts')} per path, interleaved, same run): the camera shows "
            f"{s['frames_per_attempt']} of the enrolment photos, as a camera shows the face it enrolled, so the verdict "
            f"comes after {s['min_matching_frames']} frames. Howdy is left out: its compare step refuses a distance of "
            "exactly 0, which an enrolment photo gives.", "",
            "| path | p50 ms | p95 ms | match rate | frames p50 | inside faceidd p50 ms |",
            "|---|---:|---:|---:|---:|---:|"]
        for name in ("daemon_match", "per_attempt_match"):
            q = matching[name]
            inside = (q.get("daemon_session_ms") or {}).get("p50")
            lines.append(f"| {q['label']} | {_f(q['ms']['p50'])} | {_f(q['ms']['p95'])} | {_pct(q['match_rate'], 0)} | "
                         f"{_f(q['frames']['p50'], 0)} | {_f(inside, 0)} |")
        lines += ["",
                  f"Per-attempt process / pam_faceid on matching logins: {_f(r['matching_per_attempt_over_daemon_p50'])}x "
                  f"(p50), {_f(r['matching_per_attempt_over_daemon_p95'])}x (p95); pam_faceid p50 "
                  f"{_f(m['ms']['p50'])} ms against the {auth['goals']['p50_ms']:.0f} ms goal: "
                  f"{_ok(g.get('matching_p50_ms'))}.", ""]
    lines += ["![latency](latency.png)", ""]
    return lines


def helper_section(h: dict, auth: dict | None = None) -> list[str]:
    f, i = h["first_frame_ms"], h["interpreter_ms"]
    lines = [
        "## PAM helper start to first frame (`bench/helper_start.py`)", "",
        f"The real `faceid-helper` started as pam_exec starts it, against a stub daemon, camera = {h['camera']}; "
        f"{h['runs']} runs.", "",
        "| | p50 ms | p95 ms | budget | met |", "|---|---:|---:|---:|---|",
        f"| process start to first frame received | {_f(f['p50'])} | {_f(f['p95'])} | {h['budget_ms']:.0f} ms | "
        f"{_ok(h['within_budget'])} |",
        f"| bare `python -c pass` (the floor) | {_f(i['p50'])} | {_f(i['p95'])} | | |", ""]
    if h.get("video_first_frame_ms"):
        v = h["video_first_frame_ms"]
        lines[-2:-2] = [f"| the same with a video camera ({h['video_camera']}; OpenCV decodes it, as it does a "
                        f"V4L2 camera's frames) | {_f(v['p50'])} | {_f(v['p95'])} | | |"]
    if auth and not auth["goals_met"]["vs_per_attempt"]:
        goal, paths = auth["goals"]["vs_per_attempt"], auth["paths"]
        per, ours = paths["per_attempt"]["ms"]["p50"], paths["daemon"]["ms"]["p50"]
        lines += [
            f"Why the per-attempt goal ({goal:.0f}x) is not met: it would need a login of {_f(per / goal, 0)} ms, "
            f"less than this helper's own start to its first frame (p50 {_f(f['p50'], 0)} ms). The per-attempt "
            "process runs the same ONNX model, so it differs from a pam_faceid login only by importing OpenCV "
            f"and onnxruntime and loading the models: {_f(per - ours, 0)} ms at p50 in the login run above.", ""]
    return lines


def embedder_section(emb: dict) -> list[str]:
    b = emb["backends"]
    quick = f" **Quick run: first {emb['quick']} pairs of each half-fold only.**" if emb.get("quick") else ""
    lines = [
        "## The face model: speed, memory, accuracy (`bench/embedder.py`)", "",
        f"Each backend alone in a fresh process, one thread. Embedding = aligned face to vector, on the same "
        f"{next(iter(b.values()))['faces_timed']} dev photos for all (median per face over {emb['passes']} passes); end to end = "
        "detection, landmarks, alignment and embedding of one photo. RSS = the process after loading its "
        "pipeline and embedding one face. Accuracy: dev pairs through `pam_faceid.model.evaluate.evaluate`."
        + quick, "",
        "| model | ms / face | faces / s | end to end ms / photo | RSS MiB | load s | dev pairs accuracy | AUC | "
        "TAR @ FAR 1e-3 | pairs without a face |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("onnx", "torch", "dlib"):
        if name not in b:
            continue
        r, a = b[name], b[name]["accuracy"]
        std = f" ± {a['accuracy_std']:.3f}" if a.get("accuracy_std") is not None else ""
        lines.append(f"| {r['label']} | {_f(r['ms_per_face'], 2)} | {_f(r['faces_per_second'], 0)} | "
                     f"{_f(r['end_to_end_ms_per_photo'], 1)} | {_f(r['memory']['rss_mb'], 0)} | "
                     f"{_f(r['load_seconds'], 2)} | {_f(a['accuracy'], 4)}{std} | {_f(a['auc'], 4)} | "
                     f"{_pct(a['tar_at_far_1e-3'])} | {a.get('pairs_no_face')} |")
    ratios = emb.get("ratios", {})
    if ratios:
        lines += ["", "Ratios (same run): " + "; ".join(
            f"{k.replace('_over_', ' / ').replace('_', ' ')} = {v:.1f}x" for k, v in ratios.items())]
    lines += ["", "![ROC on dev](roc_dev.png)", "", "![score histograms on dev](scores_dev.png)", ""]
    return lines


def memory_section(mem: dict) -> list[str]:
    m = mem["median"]
    return [
        "## faceidd memory (`bench/daemon_memory.py`)", "",
        f"Median of {mem['repeats']} fresh daemons; {mem['templates_per_user']} templates per user (embeddings of "
        f"real faces); load = {mem['sessions']} concurrent sessions for {mem['load_seconds']:.0f} s streaming photos "
        f"of a stranger ({mem['stranger']}).", "",
        "| state | RSS MiB |", "|---|---:|",
        f"| idle, 1 user enrolled | {_f(m['idle_1'], 0)} |",
        f"| idle, 100 users enrolled | {_f(m['idle_100'], 0)} |",
        f"| {mem['sessions']} concurrent sessions (peak of 50 ms samples) | {_f(m['load_peak'], 0)} |",
        f"| idle again after the load | {_f(m['after_load'], 0)} |", "",
        f"Under that load faceidd scored {_f(m['load_frames_per_second'], 0)} frames/s "
        f"({_f(m['load_sessions'], 0)} sessions, {_f(m['load_errors'], 0)} errors); start to READY=1: "
        f"{_f(m['ready_seconds_100'], 2)} s with 100 users.", ""]


def retrain_section(rt: dict | None) -> list[str]:
    lines = ["## Per-user retraining against the seed's (`bench/retrain.py`)", ""]
    if rt is None:
        return lines + ["Not run.", ""]
    lines += [rt.get("summary", ""), ""]
    rows = rt.get("rows", [])
    if rows:
        lines += ["| method | seconds | FAR | FRR | threshold | held-out owner / other images |",
                  "|---|---:|---:|---:|---:|---|"]
        for row in rows:
            lines.append(f"| {row['method']} | {_f(row.get('seconds'), 1)} | {_pct(row.get('far'))} | "
                         f"{_pct(row.get('frr'))} | {_f(row.get('threshold'), 3)} | "
                         f"{row.get('owner_attempts', '–')} / {row.get('other_attempts', '–')} |")
    for key, value in (rt.get("ratios") or {}).items():
        lines.append(f"\n{key}: {value:.1f}x")
    if rt.get("pending"):
        lines += ["", f"**Pending:** {rt['pending']}"]
    return lines + [""]


def liveness_section(lv: dict | None, lat: dict | None) -> list[str]:
    """APCER per attack kind and BPCER at the shipped operating points (faceid liveness), the trade-off plot,
    and the model's cost to a matching login beside liveness off."""
    lines = ["## Liveness: the anti-spoofing model (`bench/liveness.py`, `bench/liveness_latency.py`)", ""]
    if lv is None and lat is None:
        return lines + ["Not run.", ""]
    if lv is not None:
        policies = lv["policies"]
        lines += ["Per session (live after any frame, as faceidd stops at the first live verdict); "
                  + "; ".join(f"{mode}: mean P(real) of >= {p['min_frames']} frames reaches {p['threshold']}"
                              for mode, p in policies.items()) + ". 95 % Wilson intervals. Commands: "
                  + "; ".join(f"`faceid liveness {' '.join(src['args'])}`" for src in lv["sources"].values()), "",
                  "| source | kind | metric | basic | strict |", "|---|---|---|---|---|"]
        for name, src in lv["sources"].items():
            basic, strict = src["modes"]["basic"], src["modes"]["strict"]
            for kind, k in basic["kinds"].items():
                cells = []
                for m in (basic, strict):
                    r = m["kinds"][kind]["session"]
                    cells.append(f"{r['errors']}/{r['trials']} = {_pct(r['rate'])} ({_pct(r['ci95'][0])}-"
                                 f"{_pct(r['ci95'][1])})" if r["trials"] else "–")
                lines.append(f"| {name} | {kind} | {k['metric']} | {cells[0]} | {cells[1]} |")
        lines += ["", "![APCER against BPCER over the threshold](liveness_tradeoff.png)", ""]
    if lat is not None:
        lines += [f"Matching login of a live person at a webcam ({lat['setup']['video']}, first "
                  f"{lat['setup']['frames']} frames), PAM call to verdict, liveness off and basic interleaved, "
                  f"{lat['setup']['attempts']} attempts each:", "",
                  "| liveness | p50 ms | p95 ms | inside faceidd p50 ms | frames p50 | match rate |",
                  "|---|---:|---:|---:|---:|---:|"]
        for mode in ("off", "basic"):
            r = lat[mode]
            lines.append(f"| {mode} | {_f(r['ms']['p50'])} | {_f(r['ms']['p95'])} | {_f(r['daemon_ms']['p50'])} | "
                         f"{_f(r['frames']['p50'], 0)} | {_pct(r['match_rate'], 0)} |")
        lines += ["", f"basic / off at p50: {lat['basic_over_off_p50']:.2f}x; p50 <= {lat['goal_p50_ms']:.0f} ms "
                      f"with the model on: {_ok(lat['goal_met'])}.", ""]
    return lines


def liveness_models_section(lm: dict | None) -> list[str]:
    """The shipped anti-spoofing model beside fine-tuned exports (bench/liveness_models.py), when that was run."""
    if lm is None:
        return []
    return ["## Liveness: the shipped model beside fine-tuned ones (`bench/liveness_models.py`)", "",
            f"Synthetic set {lm['sets']}; commit {lm['commit']}. How the fine-tuned models were made, and why none "
            "ships: docs/liveness.md.", "", *lm["table"], ""]


def same_camera_section(sc: dict | None) -> list[str]:
    lines = ["## Same-camera FAR: one threshold against each user's operating point (`bench/same_camera.py`)", ""]
    if sc is None:
        return lines + ["Not run.", ""]
    lines += [f"Held-out train/yaleb people (one camera, never trained or fit on) and dev/lfw; global threshold "
              f"{sc['global_threshold']:.4f}; images under 10 % brightness counted apart; commit {sc['commit']}. "
              "Why the targets are not all met: docs/same-camera.md.", "",
              "| collection | protocol | FAR | FRR | too dark (apart) | thresholds min / median / max | command |",
              "|---|---|---:|---:|---:|---|---|"]
    for row in sc.get("rows", []):
        lines.append(f"| {row['collection']} | {row['protocol']} | {row['far']:.2e} ({row['false_accepts']} / "
                     f"{row['impostor_attempts']}) | {_pct(row['frr'], 2)} | {row['too_dark']} | "
                     f"{_f(row['user_threshold_min'], 4)} / {_f(row['user_threshold_median'], 4)} / "
                     f"{_f(row['user_threshold_max'], 4)} | `{row['command']}` |")
    return lines + [""]


def body(results: dict[str, dict | None], command: str, elapsed: float | None) -> list[str]:
    """Every section, from the JSON results alone; image links relative to bench/."""
    helper, auth, emb, mem, rt = (results[k] for k in ("helper_start", "auth_latency", "embedder",
                                                       "daemon_memory", "retrain"))
    first = next((x for x in (auth, emb, mem, helper, rt) if x), None)
    if first is None:
        raise SystemExit("report: no results")
    took = f" It took {elapsed / 60:.1f} minutes, every step included." if elapsed is not None else ""
    lines = [f"Command: `{command}` (as root, from the repository root).{took}", ""]
    lines += machine_section(first["machine"])
    lines += auth_section(auth) if auth else ["## Login latency", "", "Not run.", ""]
    lines += helper_section(helper, auth) if helper else []
    lines += embedder_section(emb) if emb else ["## The face model", "", "Not run.", ""]
    lines += memory_section(mem) if mem else ["## faceidd memory", "", "Not run.", ""]
    lines += liveness_section(results.get("liveness"), results.get("liveness_latency"))
    lines += liveness_models_section(results.get("liveness_models"))
    lines += retrain_section(rt)
    lines += same_camera_section(results.get("same_camera"))
    return lines


def write(folder: Path, out_dir: Path, command: str, elapsed: float | None = None) -> Path:
    results = {name: _load(folder, name) for name in ("helper_start", "auth_latency", "embedder",
                                                      "daemon_memory", "retrain", "liveness", "liveness_latency",
                                                      "liveness_models", "same_camera")}
    if not any(results.values()):
        raise SystemExit(f"report: no results in {folder}")
    lines = body(results, command, elapsed)
    head = ["# pam_faceid benchmarks", "",
            "Generated by `bench/report.py` from the JSON results of one run of `bench/run_all.sh`; every figure "
            "is a median of repeated runs or a ratio from the same run. Nothing here is typed by hand.", ""]
    if results["embedder"]:
        plot_dev(results["embedder"], out_dir)
    if results["auth_latency"]:
        plot_latency(results["auth_latency"], out_dir)
    path = out_dir / "results.md"
    path.write_text("\n".join(head + lines).rstrip() + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_OUT, help="folder of the benchmarks' JSON files")
    parser.add_argument("--out-dir", type=Path, default=BENCH, help="where results.md and the PNGs go")
    parser.add_argument("--command", default="bench/run_all.sh", help="the command line to print in results.md")
    parser.add_argument("--elapsed", type=float, help="seconds the whole run took, to print beside the command")
    args = parser.parse_args(argv)
    print(write(args.results, args.out_dir, args.command, args.elapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
