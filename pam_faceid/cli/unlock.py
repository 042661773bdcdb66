"""faceid unlock: lift a user's face-auth lockout after too many failed attempts.

The lockout state belongs to the trust work (pam_faceid.lockout, see
/work/notes/requests.md): this command clears the user's entry there and asks
the daemon to reload. Until that module exists it says so and changes nothing.

Exit codes: 0 unlocked (or the user was not locked out); 1 lockout support
missing or its state unreadable; 2 bad user name; 4 not root.
"""

from __future__ import annotations

import argparse
import importlib

from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """example:
  sudo faceid unlock alice"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid unlock USER'."""
    parser = sub.add_parser(
        "unlock",
        help="clear a user's face-auth lockout",
        description="Clear USER's lockout (set after lockout.max_failures failed face attempts) so face auth is "
                    "tried again at once, and reload the daemon. The password works during a lockout anyway.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Clear the user's lockout entry through pam_faceid.lockout."""
    common.require_root("unlocking a user")
    common.check_user(args.user)
    cfg = common.load_cfg(args)
    try:
        lockout = importlib.import_module("pam_faceid.lockout")
        store = lockout.LockoutStore(cfg.daemon.state_dir)
    except (ImportError, AttributeError):
        raise CommandError("lockout is not available in this version of pam_faceid: nothing to unlock",
                           EXIT_FAILURE) from None
    try:
        cleared = store.clear(args.user)
    except Exception as exc:  # the lockout store's own one-line errors (corrupt file, permissions)
        raise CommandError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_FAILURE) from None
    if not cleared:
        print(f"{args.user} is not locked out")
        return 0
    print(f"{args.user} unlocked: face auth is tried again")
    common.reload_daemon(cfg, "unlock")
    return 0
