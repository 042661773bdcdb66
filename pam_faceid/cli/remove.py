"""faceid remove: delete the templates with one label (an enrol run) or one id from a user's enrolment.

Exit codes: 0 removed; 1 no such template / user not enrolled / store
problem; 2 bad user name; 4 not root.
"""

from __future__ import annotations

import argparse

from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid remove alice glasses        # every template labelled 'glasses'
  sudo faceid remove alice 3f2a9c01b7d4   # one template, by id (see: faceid list alice)"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid remove USER LABEL|ID'."""
    parser = sub.add_parser(
        "remove",
        help="remove a user's templates by label or id",
        description="Remove from USER's enrolment every template whose label or id is LABEL|ID "
                    "('faceid list USER' shows both), then reload the daemon. Removing the last template "
                    "removes the enrolment.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER")
    parser.add_argument("which", metavar="LABEL|ID", help="a template label or id")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Remove the matching templates atomically and reload."""
    from pam_faceid.common.store import StoreError

    common.require_root("removing templates")
    cfg = common.load_cfg(args)
    store = common.open_store(cfg)
    try:
        enrolment = store.load(args.user)
        if enrolment is None:
            raise CommandError(f"{args.user} is not enrolled", EXIT_FAILURE)
        removed = store.remove_template(args.user, args.which)
    except StoreError as exc:
        raise common.store_error(exc) from None
    if not removed:
        raise CommandError(f"{args.user} has no template with label or id {args.which!r} "
                           f"(see: faceid list {args.user})", EXIT_FAILURE)
    left = len(enrolment.templates) - removed
    print(f"removed {removed} template(s) from {args.user}; {left} left"
          + ("" if left else f" ({args.user} is no longer enrolled)"))
    common.reload_daemon(cfg, "remove")
    return 0
