"""faceid clear: delete a user's whole enrolment (templates, kept images, per-user model).

Asks first, because it cannot be undone, unless -y is given.

Exit codes: 0 cleared (or the user had nothing); 1 not confirmed or store
problem; 2 bad user name, or no terminal to ask and no -y; 4 not root.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid clear alice
  sudo faceid clear alice -y"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid clear USER [-y]'."""
    parser = sub.add_parser(
        "clear",
        help="delete all of a user's face data",
        description="Delete USER's enrolment, any raw images kept at enrolment and any per-user model made by "
                    "'faceid retrain', then reload the daemon. Asks for confirmation unless -y.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", metavar="USER")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(run=run)
    return parser


def user_extras(cfg: object, user: str) -> list[Path]:
    """Other per-user data beside the enrolment: kept raw images and per-user models."""
    state = Path(cfg.daemon.state_dir)  # type: ignore[attr-defined]
    return [p for p in (state / "images" / user, state / "models" / user) if p.exists()]


def _confirm(question: str) -> bool:
    if not sys.stdin or not sys.stdin.isatty():
        raise CommandError("no terminal to ask for confirmation: add -y", EXIT_USAGE)
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    """Confirm, then remove everything stored for the user."""
    from pam_faceid.common.store import StoreError

    common.require_root("clearing an enrolment")
    cfg = common.load_cfg(args)
    store = common.open_store(cfg)
    try:
        path = store.path(args.user)
        try:
            enrolment = store.load(args.user)
            count = len(enrolment.templates) if enrolment else 0
        except StoreError:
            count = -1
    except StoreError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    extras = user_extras(cfg, args.user)
    if count == 0 and not path.exists() and not extras:
        print(f"{args.user} is not enrolled: nothing to clear")
        return 0
    what = "an unreadable enrolment" if count < 0 else f"{count} template(s)"
    if not args.yes and not _confirm(f"Delete {what} of {args.user}{' and kept images/models' if extras else ''}?"):
        raise CommandError("not confirmed: nothing deleted", EXIT_FAILURE)
    try:
        with store.write_lock():
            store.clear(args.user)
    except StoreError as exc:
        raise common.store_error(exc) from None
    for extra in extras:
        shutil.rmtree(extra, ignore_errors=True)
    print(f"cleared {args.user}: {what} deleted" + (f", and {', '.join(map(str, extras))}" if extras else ""))
    common.reload_daemon(cfg, "clear")
    return 0
