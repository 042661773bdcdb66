"""faceid status: is face unlock working here, and for whom?

One screen with what an admin checks first: the daemon, the camera, the
model and its measured accuracy (each figure with the data it was measured
on: dev pairs or held-out training identities), who is enrolled (and whose file is
unreadable), lockouts, and which PAM services call the helper. Every part
reports its own problem and the others still show.

Exit codes: 0 shown; 1 shown, but something is broken (daemon down, camera
or model missing, an unreadable enrolment); the output says what.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from pam_faceid.cli import EXIT_FAILURE
from pam_faceid.cli import _common as common
from pam_faceid.common import sealed

EXAMPLE = """examples:
  sudo faceid status
  sudo faceid status --json"""

PAM_DIR = "/etc/pam.d"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid status'."""
    parser = sub.add_parser(
        "status",
        help="daemon, camera, model, enrolled users, lockouts, PAM services",
        description="Show the daemon (asked over its socket when it runs), the camera, the model and its "
                    "metrics, the enrolled users, lockouts and the PAM services that have face auth on. "
                    "Run as root for the daemon's and the enrolments' part.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)
    return parser


def pam_services(cfg: Any, pam_dir: str = PAM_DIR) -> dict[str, list[str]]:
    """The PAM services whose stack runs the face line: where auth.services lets the face in, and where the helper
    skips it (network daemons, services installed later)."""
    from pam_faceid.common.config import service_allowed
    from pam_faceid.pamstack.pamconf import services_reaching_face

    reached = services_reaching_face(Path(pam_dir))
    return {"face": [name for name in reached if service_allowed(name, cfg.auth.services)],
            "skipped": [name for name in reached if not service_allowed(name, cfg.auth.services)]}


def _daemon(cfg: Any) -> dict[str, Any]:
    from pam_faceid.common.protocol import DaemonError, request_status

    if os.geteuid() != 0:
        return {"running": None, "error": "status is asked as root only: run with sudo"}
    try:
        return {"running": True, **request_status(cfg.daemon.socket)}
    except DaemonError as exc:
        return {"running": False, "error": str(exc).splitlines()[0]}


def _camera(cfg: Any) -> dict[str, Any]:
    from pam_faceid.vision.camera import CameraError, FrameSource

    info: dict[str, Any] = {"device": cfg.camera.device}
    started = time.monotonic()
    try:
        with FrameSource.from_config(cfg.camera) as source:
            info["kind"] = source.kind
            frame = next(iter(source.frames(timeout=2.0)), None)
    except CameraError as exc:
        info.update(ok=False, error=str(exc).splitlines()[0])
        return info
    if frame is None:
        info.update(ok=False, error="opened, but gave no usable frame within 2 s")
    else:
        info.update(ok=True, frame=f"{frame.shape[1]}x{frame.shape[0]}", ms=round((time.monotonic() - started) * 1000))
    return info


FIGURES = ("accuracy", "auc", "eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "enroll_frr_at_far_1e-3", "far", "frr")
"""The accuracy figures shown from model.json; counts and training internals stay in --json."""

SECTION_DATA = {"validation": "held-out identities of the training data (they chose the epoch)",
                "same_camera": "same-camera people never trained or fit on (docs/same-camera.md)"}
"""What data each metrics section of model.json was measured on, where model.json does not say."""


def figures(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """model.json's accuracy figures, each with the data it was measured on: dev figures and validation differ."""
    found = []
    source = meta.get("threshold_source")
    if isinstance(source, dict) and isinstance(source.get("metrics"), dict):
        data = " + ".join(str(source[key]) for key in ("data", "pairs") if source.get(key))
        found.append({"data": f"dev pairs {data} (people never trained on; the threshold was fit here)",
                      "metrics": source["metrics"]})
    for name, metrics in (meta.get("metrics") or {}).items():
        if isinstance(metrics, dict):
            data = f"{name}, {SECTION_DATA.get(name, 'data not recorded in model.json')}"
            if metrics.get("command"):
                data += f" [{metrics['command']}]"
            found.append({"data": data, "metrics": metrics})
    return found


def _model(cfg: Any) -> dict[str, Any]:
    from pam_faceid.vision.embedder import ModelError, load_metadata

    folder = common.model_dir(cfg)
    info: dict[str, Any] = {"path": str(folder), "backend": cfg.model.backend}
    try:
        meta = load_metadata(folder)
    except ModelError as exc:
        info.update(ok=False, error=str(exc))
        return info
    info.update(ok=True, name=meta.get("name") or meta.get("id") or "unnamed", threshold=meta.get("threshold"),
                configured_threshold=cfg.auth.threshold, metrics=meta.get("metrics") or {}, figures=figures(meta))
    return info


def _enrolments(cfg: Any) -> dict[str, Any]:
    from pam_faceid.common.store import StoreError

    if os.geteuid() != 0:
        return {"error": "enrolments are readable by root only: run with sudo"}
    try:
        good, bad = common.open_store(cfg).load_all()
    except StoreError as exc:
        return {"error": str(exc)}
    from pam_faceid.vision.operating import OperatingPoint
    from pam_faceid.vision.userhead import HeadError, read_head

    current = common.current_model_id(cfg) or ""
    users: dict[str, dict[str, Any]] = {}
    bad_heads: dict[str, str] = {}
    stale: dict[str, str] = {}
    stale_heads: dict[str, str] = {}
    for user, enrolment in sorted(good.items()):
        try:
            stored = read_head(cfg.daemon.state_dir, user)
        except (HeadError, StoreError) as exc:
            stored, bad_heads[user] = None, str(exc)
        if stored is not None and current and stored.model_id != current:
            stale_heads[user] = (f"made for model {stored.model_id}, the current model is {current} "
                                 f"(ignored: scored by the base model; sudo faceid retrain {user})")
        point = OperatingPoint.from_json(enrolment.operating_point)
        users[user] = {"templates": len(enrolment.templates), "per_user_model": stored is not None,
                       "threshold": None if point is None else point.threshold,
                       "operating_point": None if point is None else point.line()}
        why = enrolment.stale_for(current)
        if why:
            stale[user] = why
    return {"users": users, "unreadable": bad, "unreadable_heads": bad_heads, "must_reenrol": stale,
            "stale_heads": stale_heads}


def _lockouts(cfg: Any) -> dict[str, Any]:
    """Locked-out users, unreadable lockout files and password ages, read from the state folder (what faceidd reads)."""
    from pam_faceid.daemon.lockout import LockoutStore

    if os.geteuid() != 0:
        return {"error": "lockout state is readable by root only: run with sudo"}
    now = time.time()
    good, bad = LockoutStore(cfg.daemon.state_dir).entries()
    hours = cfg.auth.require_password_after
    password: dict[str, Any] = {}
    if hours > 0:
        password = {user: None if state.password_used is None else round((now - state.password_used) / 3600, 2)
                    for user, state in good.items()}
    return {"locked": {user: state.locked_until for user, state in good.items() if state.locked(now)},
            "failures": {user: len(state.failures) for user, state in good.items() if state.failures},
            "unreadable": bad, "require_password_after": hours, "password_used_hours_ago": password}


def _figure_line(figure: dict[str, Any]) -> str:
    shown = [f"{key}={figure['metrics'][key]:.4g}" for key in FIGURES
             if isinstance(figure["metrics"].get(key), (int, float))]
    return f"on {figure['data']}: {', '.join(shown) or 'no accuracy figures'}"


def _print(report: dict[str, Any]) -> None:
    d = report["daemon"]
    if d.get("running"):
        model = d.get("model") or {}
        print(f"daemon:   running, pid {d.get('pid')}, up {d.get('uptime', 0):.0f} s, socket {d.get('socket')}, "
              f"{len(d.get('users', []))} user(s) loaded, model {model.get('id') or 'unnamed'} "
              f"threshold {model.get('threshold')}" + (f", MODEL ERROR: {model['error']}" if model.get("error") else ""))
        for user, why in (d.get("skipped") or {}).items():
            print(f"          skipped {user}: {why}")
        live = d.get("liveness") or {}
        if live.get("error"):
            print(f"          liveness {live.get('mode')}: ANTI-SPOOFING MODEL ERROR: {live['error']} "
                  "(every face login falls through to the password)")
    else:
        print(f"daemon:   {'not running' if d.get('running') is False else 'unknown'} ({d.get('error')})")
    c = report["camera"]
    if c.get("ok"):
        print(f"camera:   {c['device']} ({c.get('kind')}): ok, {c['frame']} frame in {c['ms']} ms")
    else:
        print(f"camera:   {c['device']}: NOT USABLE: {c.get('error')}")
    m = report["model"]
    if m.get("ok"):
        print(f"model:    {m['path']} ({m['name']}, {m['backend']}), shipped threshold {m['threshold']}, "
              f"auth.threshold {m['configured_threshold']}")
        for figure in m.get("figures", []):
            print("          " + _figure_line(figure))
    else:
        print(f"model:    NOT USABLE: {m.get('error')}")
    e = report["enrolments"]
    if "error" in e:
        print(f"enrolled: unknown ({e['error']})")
    else:
        users = e["users"]
        listed = ", ".join(f"{u} ({v['templates']}{', own model' if v['per_user_model'] else ''})"
                           for u, v in users.items())
        print(f"enrolled: {listed or 'nobody'}")
        for user, v in users.items():
            print(f"          {user}: " + (f"operating point {v['operating_point']}" if v.get("operating_point")
                                           else "global threshold (no operating point stored)"))
        for user, why in e["unreadable"].items():
            print(f"          UNREADABLE {user}: {why}")
        for user, why in e.get("unreadable_heads", {}).items():
            print(f"          UNREADABLE per-user head of {user} (ignored: scored by the base model): {why}")
        for user, why in e.get("must_reenrol", {}).items():
            print(f"          MUST RE-ENROL {user}: {why}")
        for user, why in e.get("stale_heads", {}).items():
            print(f"          OLD per-user head of {user}: {why}")
    _print_lockouts(report["lockouts"], report["enrolments"])
    services = report["pam_services"]
    print(f"pam:      face used by {', '.join(services['face']) or 'no service'} (in {PAM_DIR})")
    if services["skipped"]:
        print(f"          face skipped, password only: {', '.join(services['skipped'])} (not in auth.services)")
    keyring = report["keyring"]
    listed = "unknown (root only)" if keyring is None else ", ".join(keyring) or "nobody"
    print(f"keyring:  sealed login password for {listed} (faceid keyring status)")


def _print_lockouts(lockouts: dict[str, Any], enrolments: dict[str, Any]) -> None:
    from pam_faceid.daemon.lockout import describe

    if "error" in lockouts:
        print(f"lockouts: unknown ({lockouts['error']})")
        return
    locked = lockouts["locked"]
    print("lockouts: " + (", ".join(f"{user} until {describe(until)}" for user, until in locked.items()) or "none")
          + (" (faceid unlock USER lifts one)" if locked else ""))
    for user, why in lockouts["unreadable"].items():
        print(f"          UNREADABLE {user}: {why} (face auth refused; fix: faceid unlock {user})")
    hours = lockouts["require_password_after"]
    if hours > 0:
        ages = lockouts["password_used_hours_ago"]
        due = [u for u in enrolments.get("users", {}) if ages.get(u) is None or ages[u] > hours]
        print(f"password: required every {hours:g} h (auth.require_password_after); face auth refused until the "
              f"password is used for: {', '.join(due) if due else 'nobody'}")


def run(args: argparse.Namespace) -> int:
    """Gather every part, print it, and exit 1 when a part is broken."""
    cfg = common.load_cfg(args)
    daemon = _daemon(cfg)
    report = {
        "config": cfg.path,
        "daemon": daemon,
        "camera": _camera(cfg),
        "model": _model(cfg),
        "enrolments": _enrolments(cfg),
        "lockouts": _lockouts(cfg),
        "pam_services": pam_services(cfg),
        "keyring": sealed.sealed_users(cfg.daemon.state_dir) if os.geteuid() == 0 else None,
    }
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True, default=str))
    else:
        print(f"config:   {cfg.path}{'' if cfg.from_file else ' (no file: defaults)'}")
        _print(report)
    broken = (daemon.get("running") is False or not report["camera"].get("ok") or not report["model"].get("ok")
              or bool(report["enrolments"].get("unreadable")) or bool(report["enrolments"].get("unreadable_heads"))
              or bool(report["enrolments"].get("must_reenrol"))
              or bool(report["lockouts"].get("unreadable"))
              or bool((daemon.get("liveness") or {}).get("error")))
    return EXIT_FAILURE if broken else 0
