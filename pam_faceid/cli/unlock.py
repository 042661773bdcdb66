"""faceid unlock: lift a user's face-auth lockout after too many failed attempts.

Clears the user's entry in the lockout state (pam_faceid.daemon.lockout): the
lockout and the failures counted so far. A corrupt or unknown-version
lockout file is replaced by a clean one. faceidd reads that state at every
attempt, so the change takes effect at once, without a reload.

Exit codes: 0 unlocked (or the user was not locked out); 1 the lockout state
could not be read or written; 2 bad user name; 4 not root.
"""

from __future__ import annotations

import argparse

from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """example:
  sudo faceid unlock alice"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid unlock USER'."""
    parser = sub.add_parser(
        "unlock",
        help="clear a user's face-auth lockout",
        description="Clear USER's lockout (set after lockout.max_failures failed face attempts within lockout.window "
                    "seconds) and the failures counted so far, so face auth is tried again at once. The password "
                    "works during a lockout anyway.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Clear the user's lockout entry; the daemon sees it at the next attempt."""
    from pam_faceid.daemon.lockout import LockoutStore
    from pam_faceid.common.store import StoreError

    common.require_root("unlocking a user")
    common.check_user(args.user)
    cfg = common.load_cfg(args)
    try:
        cleared = LockoutStore(cfg.daemon.state_dir).clear(args.user)
    except StoreError as exc:
        raise CommandError(str(exc).splitlines()[0], EXIT_FAILURE) from None
    if not cleared:
        print(f"{args.user} is not locked out")
        return 0
    print(f"{args.user} unlocked: face auth is tried again")
    return 0
