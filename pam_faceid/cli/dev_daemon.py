"""faceid dev-daemon: run faceidd from this venv on a private socket and state folder.

For development and trying things out without the system install: it writes
(or updates) DIR/config.yaml with daemon.socket and daemon.state_dir inside
DIR, prints the --config option the other commands need to reach it, and
then becomes faceidd in the foreground. The system daemon, its socket and
/var/lib/pam_faceid are never touched. Ctrl-C stops it; DIR keeps the config
and the enrolments for the next run.

Exit codes: faceidd's own (0 stopped by Ctrl-C or SIGTERM, 1 cannot listen,
2 bad config); before it starts, 2 an unusable DIR or --config given, 4 not root.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from pam_faceid.cli import EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo .venv/bin/faceid dev-daemon --dir /tmp/faceid-dev --camera pam_faceid/data/samples/sample_person
  sudo .venv/bin/faceid --config /tmp/faceid-dev/config.yaml status     # in another shell"""

SYSTEMD_ENV = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET")
"""Removed before faceidd starts, so a dev daemon never takes over a socket or a readiness channel of systemd's."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid dev-daemon [--dir DIR] [--camera DEVICE]'."""
    parser = sub.add_parser(
        "dev-daemon",
        help="run faceidd in the foreground on a private socket and state folder (development)",
        description="Write DIR/config.yaml with daemon.socket and daemon.state_dir inside DIR (other keys as you "
                    "set them with 'faceid --config DIR/config.yaml config KEY VALUE'), print the command line "
                    "that reaches this daemon, and run faceidd in the foreground until Ctrl-C. The system "
                    "daemon and /var/lib/pam_faceid are not touched; DIR keeps the enrolments.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("--dir", metavar="DIR",
                        help="folder for the config, socket and state (default: a new /tmp/faceid-dev-* folder)")
    parser.add_argument("--camera", metavar="DEVICE",
                        help="camera.device to use: /dev/videoN, a video file or a folder of images")
    parser.set_defaults(run=run)
    return parser


def camera_problem(device: str) -> str | None:
    """Why faceidd could not read camera.device at all (relative, missing, unreadable), else None."""
    if not os.path.isabs(device):
        return "not an absolute path (faceidd does not run in this folder)"
    if not os.path.exists(device):
        return "no such device, file or folder"
    wanted = os.R_OK | (os.X_OK if os.path.isdir(device) else 0)
    if not os.access(device, wanted):
        return "not readable"
    return None


def run(args: argparse.Namespace) -> int:
    """Prepare DIR/config.yaml, say how to reach the daemon, then exec faceidd on it."""
    from pam_faceid.common.config import ConfigError, load_config, set_value

    common.require_root("running faceidd")
    if args.config:
        raise CommandError("dev-daemon writes its own config in --dir DIR; leave out --config", EXIT_USAGE)
    if args.dir:
        folder = Path(os.path.abspath(args.dir))
        try:
            folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise CommandError(f"{folder}: cannot create folder: {exc.strerror}", EXIT_USAGE) from None
    else:
        folder = Path(tempfile.mkdtemp(prefix="faceid-dev-"))
        folder.chmod(0o755)  # as /run/pam_faceid: a helper running as the user must reach the socket
    config = folder / "config.yaml"
    settings = [("daemon.socket", str(folder / "faceidd.sock")), ("daemon.state_dir", str(folder / "state"))]
    if args.camera:
        camera = os.path.abspath(args.camera)
        problem = camera_problem(camera)
        if problem:
            raise CommandError(f"--camera {args.camera}: {problem}", EXIT_USAGE)
        settings.append(("camera.device", camera))
    try:
        for key, value in settings:
            set_value(str(config), key, value)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    try:
        device = load_config(str(config)).camera.device
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    problem = camera_problem(device)
    faceid = common.faceid_command()
    print(f"faceidd for development: config {config}, socket {folder / 'faceidd.sock'}, state {folder / 'state'}")
    print(f"camera: {device}: " + (f"WARNING: {problem}; set one: {faceid} --config {shlex.quote(str(config))} "
                                   "config camera.device PATH" if problem else "exists and is readable"))
    if common.dev_checkout() is not None:
        common.record_dev_daemon(config)
    print(f"reach it from another shell, as root: {faceid} --config {shlex.quote(str(config))} status")
    print(f"Ctrl-C stops it; {folder} keeps the config and enrolments (rm -r {shlex.quote(str(folder))} removes them)")
    sys.stdout.flush()
    env = {key: value for key, value in os.environ.items() if key not in SYSTEMD_ENV}
    # -I: root must not import a pam_faceid/ that happens to sit in the current folder.
    os.execve(sys.executable, [sys.executable, "-I", "-m", "pam_faceid.daemon.server", "--config", str(config)], env)
