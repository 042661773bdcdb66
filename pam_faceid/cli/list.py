"""faceid list: who is enrolled, and each template's id, label and date (what 'faceid remove' takes).

Exit codes: 0 listed (also when nobody is enrolled); 1 the named user is not
enrolled or a file is unreadable; 2 bad user name; 4 not root.
"""

from __future__ import annotations

import argparse

from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid list
  sudo faceid list alice"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid list [USER]'."""
    parser = sub.add_parser(
        "list",
        help="list enrolled users, or one user's templates",
        description="Without USER: every enrolled user with the number of templates (and any enrolment file "
                    "that cannot be read, with why). With USER: that user's templates (id, label, date) and operating point (threshold and how it was fit).",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("user", nargs="?", metavar="USER", help="show this user's templates")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the users, or one user's templates."""
    from pam_faceid.common.store import StoreError, validate_user
    from pam_faceid.vision.operating import OperatingPoint

    common.require_root("reading enrolments")
    cfg = common.load_cfg(args)
    store = common.open_store(cfg)
    if args.user is None:
        try:
            good, bad = store.load_all()
        except StoreError as exc:
            raise common.store_error(exc) from None
        if not good and not bad:
            print(f"nobody is enrolled (in {store.folder})")
            return 0
        current = common.current_model_id(cfg)
        for user in sorted(set(good) | set(bad)):
            if user in good:
                count = len(good[user].templates)
                stale = good[user].stale_for(current or "")
                point = OperatingPoint.from_json(good[user].operating_point)
                own = f" (threshold {point.threshold:.4f})" if point is not None else " (global threshold)"
                print(f"{user}: {count} template{'s' if count != 1 else ''}" + (f": {stale}" if stale else own))
            else:
                print(f"{user}: UNREADABLE: {bad[user]}")
        return EXIT_FAILURE if bad else 0
    try:
        validate_user(args.user)
        enrolment = store.load(args.user)
    except StoreError as exc:
        raise common.store_error(exc) from None
    if enrolment is None or not enrolment.templates:
        raise CommandError(f"{args.user} is not enrolled (run: sudo faceid enroll {args.user})", EXIT_FAILURE)
    print(f"{'ID':<14}{'LABEL':<28}CREATED")
    for template in enrolment.templates:
        print(f"{template.id:<14}{template.label or '-':<28}{template.created}")
    model = enrolment.model_id or "unnamed model"
    print(f"{len(enrolment.templates)} template(s) for {args.user}, made with {model}")
    point = OperatingPoint.from_json(enrolment.operating_point)
    print(f"operating point: {point.line()}" if point is not None else
          f"operating point: none stored, the global threshold applies (sudo faceid calibrate {args.user} --apply)")
    stale = enrolment.stale_for(common.current_model_id(cfg) or "")
    if stale:
        print(stale)
    return 0
