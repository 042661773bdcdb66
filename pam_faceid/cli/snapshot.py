"""faceid snapshot: write the frames of the last authentication attempts as image files.

When ``snapshots.enabled`` is on, the daemon keeps the frames of the last
``snapshots.keep`` attempts under ``<state_dir>/snapshots/<attempt>/`` (layout
agreed in /work/notes/requests.md): this copies them, with each attempt's
verdict, to a folder an admin can look at. Useful to see why a login failed
(too dark, face cut off, someone else). The copies are root's (folders 0700,
files 0600 from their creation); an --out that is a symlink or belongs to
another user is refused, since that user could read the faces.

Exit codes: 0 written; 1 snapshots off or none recorded; 2 bad output folder;
4 not root.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pam_faceid.daemon import snapshots
from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid config snapshots.enabled true     # once; then fail a login
  sudo faceid snapshot --out /tmp/faceid-snapshots"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid snapshot [--out DIR]'."""
    parser = sub.add_parser(
        "snapshot",
        help="write the frames of the last attempts as images",
        description="Copy the frames the daemon kept of the last authentication attempts (snapshots.enabled) "
                    "into DIR, one folder per attempt with its verdict.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("--out", metavar="DIR", default="faceid-snapshots",
                        help="folder to write into (default ./faceid-snapshots); made 0700 when new, refused when it "
                             "is a symlink or another user's")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Copy each kept attempt's frames and print one line per attempt."""
    common.require_root("reading snapshots (they are root's)")
    cfg = common.load_cfg(args)
    attempts = snapshots.attempts(cfg.daemon.state_dir)
    if not attempts:
        why = "snapshots.enabled is off: turn it on with 'sudo faceid config snapshots.enabled true'" \
            if not cfg.snapshots.enabled else f"no attempt recorded yet in {Path(cfg.daemon.state_dir) / 'snapshots'}"
        raise CommandError(why, EXIT_FAILURE)
    try:
        written = snapshots.export(attempts, args.out)
    except snapshots.SnapshotError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CommandError(f"{args.out}: cannot be written ({exc.strerror or exc})", EXIT_USAGE) from None
    for (target, frames), attempt in zip(written, attempts):
        try:
            info = json.loads((attempt / "attempt.json").read_text())
        except (OSError, ValueError):
            info = {}
        print(f"{target}: {frames} frame(s), user {info.get('user', '?')}, verdict {info.get('verdict', '?')}")
    return 0
