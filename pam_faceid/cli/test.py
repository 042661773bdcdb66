"""faceid test: does the face path recognise USER right now, frame by frame?

Without --pam it is a thin client of faceidd, as fprintd-verify is of fprintd:
it streams frames over the protocol (hello, frame, end) and prints each
``progress`` and the ``verdict`` the daemon sends. So the scoring is the
login's own: the user's per-user head and its threshold, liveness, lockout,
the daemon's downscaling. There is no offline mode: scoring in this process
would be a second copy that can disagree with a login. The session counts as
a login attempt (lockout.*) and is audited with service ``faceid-test``.
With --pam SERVICE it runs the real PAM stack through python-pam, the way
sudo or a greeter would, and prints what PAM answered and said.

Exit codes: 0 recognised (or PAM said success); 1 not recognised / PAM
failure / faceidd not running; 2 bad arguments (unknown user, missing file,
no such PAM service).
"""

from __future__ import annotations

import argparse
import getpass
import itertools
import os
import sys
import time
from typing import Any, Iterator

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.common import protocol
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid test                      # you, in front of the camera
  sudo faceid test alice --from clip.mp4  # frames from files, scored by faceidd
  faceid test alice --pam sudo          # the real PAM stack of /etc/pam.d/sudo
  faceid test alice --pam login --password"""

DEFAULT_FRAMES = 20


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid test [USER] [--from PATH...] [--frames N] [--pam SERVICE [--password]]'."""
    parser = sub.add_parser(
        "test",
        help="show, frame by frame, whether USER's face is recognised",
        description="Send frames from the camera (or --from files) to faceidd as a login does, and print what "
                    "the daemon answers to each (matched, no match, why no face) and its verdict (with the best "
                    "score when run as root). The attempt counts toward lockout. With --pam SERVICE, authenticate "
                    "USER through the real PAM stack of /etc/pam.d/SERVICE instead and print what PAM answered.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", nargs="?", metavar="USER", help="who to test (default: you, or $SUDO_USER)")
    parser.add_argument("--from", dest="sources", nargs="+", metavar="PATH",
                        help="image files, image folders or video files instead of the camera")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, metavar="N",
                        help=f"frames to look at (default {DEFAULT_FRAMES})")
    parser.add_argument("--pam", metavar="SERVICE", help="authenticate through PAM service SERVICE (python-pam)")
    parser.add_argument("--password", action="store_true",
                        help="with --pam: ask for a password to give PAM if the face is not recognised")
    parser.set_defaults(run=run)
    return parser


def run_pam(user: str, service: str, password: str = "") -> tuple[bool, int, str, list[str], float]:
    """Authenticate through the real PAM stack: (ok, code, reason, messages PAM showed, seconds)."""
    import pam

    handle = pam.pam()
    started = time.monotonic()
    ok = handle.authenticate(user, password, service=service, resetcreds=False)
    return bool(ok), int(handle.code), str(handle.reason), list(handle.messages), time.monotonic() - started


def _pam(args: argparse.Namespace, user: str) -> int:
    if "/" in args.pam or not os.path.isfile(os.path.join("/etc/pam.d", args.pam)):
        raise CommandError(f"no PAM service {args.pam!r}: /etc/pam.d/{args.pam} does not exist", EXIT_USAGE)
    password = ""
    if args.password:
        if not sys.stdin.isatty():
            raise CommandError("--password needs a terminal to ask on", EXIT_USAGE)
        password = getpass.getpass(f"password for {user} (given to PAM only if asked): ")
    ok, code, reason, messages, seconds = run_pam(user, args.pam, password)
    for message in messages:
        print(f"PAM said: {message}")
    print(f"PAM answered: {'success' if ok else 'failure'} (code {code}: {reason}) in {seconds:.2f} s")
    return 0 if ok else EXIT_FAILURE


SERVICE = "faceid-test"
"""The PAM service name the session gives faceidd, so its audit line says the attempt was a test."""


def _jpeg_frames(args: argparse.Namespace, cfg: Any) -> Iterator[tuple[bytes, str]]:
    """(JPEG, where) of each frame: --from files encoded as the helper encodes a camera's, else the helper's source."""
    from pam_faceid.camera import CameraError, FrameSource, encode_jpeg

    if args.sources:
        for frame in common.frames_from(args.sources, args.frames):
            yield encode_jpeg(frame.image), frame.where
        return
    try:
        source = FrameSource.from_config(cfg.camera)
    except CameraError as exc:
        raise CommandError(f"camera: {exc}", EXIT_FAILURE) from None
    with source:
        for index, jpeg in enumerate(source.jpeg_frames(timeout=common.CAMERA_TIMEOUT), 1):
            yield jpeg, f"camera frame {index}"


def _frame_line(where: str, before: int, answer: protocol.Message, need: int) -> str:
    """What the daemon said about one frame, from its progress (or the verdict it decided on)."""
    matches = int(answer.get("matches") or 0)
    if matches > before:
        return f"{where}: MATCH ({matches} of {need} needed)"
    reason = answer.get("reason") if answer.type == "progress" else None
    if reason:
        return f"{where}: {reason} ({common.hint(reason)})"
    return f"{where}: {answer.get('result') if answer.type == 'verdict' else 'no match'}"


def _verdict_line(answer: protocol.Message, need: int, seconds: float) -> str:
    score = answer.get("score")
    best = "hidden (root only)" if score is None and os.geteuid() != 0 else "-" if score is None else f"{score:.3f}"
    text = (f"verdict: {answer.get('result')} (best score {best}; {answer.get('matches', 0)} of "
            f"{answer.get('frames', 0)} frame(s) matched, {need} needed (auth.min_matching_frames); "
            f"after {seconds:.2f} s)")
    return text + (f": {answer.get('reason')}" if answer.get("reason") else "")


def _session(client: protocol.Client, frames: Iterator[tuple[bytes, str]], need: int, timeout: float) -> \
        protocol.Message:
    """Send frames lock-step, printing each answer, until the verdict; the verdict."""
    matches = 0
    for jpeg, where in frames:
        client.send("frame", payload=jpeg, timeout=timeout)
        answer = client.recv(timeout=timeout)
        print(_frame_line(where, matches, answer, need), flush=True)
        if answer.type == "verdict":  # the daemon decided and closed the session: no more frames
            return answer
        if answer.type != "progress":
            raise protocol.DaemonError(f"faceidd answered a frame with {answer.type}")
        matches = int(answer.get("matches") or 0)
    client.send("end", timeout=timeout)
    return client.recv(timeout=timeout)


def run(args: argparse.Namespace) -> int:
    """Stream frames to faceidd and print its answers, or run PAM."""
    user = args.user or common.default_user()
    common.check_user(user)
    if args.pam:
        return _pam(args, user)
    if args.password:
        raise CommandError("--password goes with --pam", EXIT_USAGE)
    if args.frames < 1:
        raise CommandError("--frames must be at least 1", EXIT_USAGE)
    cfg = common.load_cfg(args)
    frames = _jpeg_frames(args, cfg)
    socket_path = cfg.daemon.socket
    started = time.monotonic()
    try:
        with protocol.Client(socket_path, 2.0) as client:
            answer = client.request("hello", protocol.hello_fields(user, SERVICE), timeout=10.0)
            if answer.type == "ready":
                need = int(answer.get("min_matching_frames") or cfg.auth.min_matching_frames)
                timeout = float(answer.get("timeout") or cfg.auth.timeout)
                print(f"testing {user} with faceidd ({socket_path}): {need} matching frame(s) needed "
                      f"(auth.min_matching_frames), {timeout:g} s (auth.timeout)", flush=True)
                answer = _session(client, itertools.islice(frames, args.frames), need, timeout + 5.0)
            else:
                need = cfg.auth.min_matching_frames
    except protocol.DaemonError as exc:
        hint = f" ({common.start_hint(cfg)})" if "not running" in str(exc) else ""
        raise CommandError(f"{exc}{hint}", EXIT_FAILURE) from None
    if answer.type != "verdict":
        raise CommandError(f"faceidd answered with {answer.type}, not a verdict", EXIT_FAILURE)
    print(_verdict_line(answer, need, time.monotonic() - started))
    return 0 if answer.get("result") == "match" else EXIT_FAILURE
