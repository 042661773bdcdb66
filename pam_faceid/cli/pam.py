"""faceid pam: turn face auth on or off for PAM services, never leaving the password path broken.

The work is in pam_faceid.pamstack.pamconf: pam-auth-update's profile when it is
installed and no service is named, otherwise an edit of the named (or the
usual: sudo, login, greeters, lockers) /etc/pam.d files with a backup. Each
change is first made in a private copy of /etc/pam.d and proven there (a
throwaway user's password accepted, a wrong one refused, with the real helper
and with stand-ins for it); only a proven change is written.

Exit codes: 0 every change made and proven (or nothing to change); 1 a
change failed or was rolled back (the others are kept, each line says);
2 bad arguments (no such service); 4 not root.
"""

from __future__ import annotations

import argparse
import os

from pam_faceid.cli import EXIT_FAILURE, EXIT_USAGE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """examples:
  sudo faceid pam enable                    # pam-auth-update profile, or the usual services
  sudo faceid pam enable --service sudo gdm-password
  sudo faceid pam enable --service sudo su --start enter   # face only after Enter on an empty prompt
  sudo faceid pam disable
  faceid pam status"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid pam enable|disable|status [--service S...]'."""
    parser = sub.add_parser(
        "pam",
        help="turn face auth on or off in PAM (sudo, login, greeters, lockers)",
        description="enable: put the face helper before the password in PAM; disable: take it out; status: show "
                    "where it is on. Without --service, pam-auth-update's 'faceid' profile is used when installed "
                    "(it covers every service that includes common-auth), else the usual services present in "
                    "/etc/pam.d are edited. A face match stands in for the password module only. Every change is "
                    "first proven in a private copy of /etc/pam.d (a throwaway user's password accepted and a wrong "
                    "one refused, whatever faceidd answers); nothing is written if the proof fails.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("action", choices=("enable", "disable", "status"))
    parser.add_argument("--service", nargs="+", metavar="S", help="PAM service names (files in /etc/pam.d)")
    parser.add_argument("--helper", metavar="PATH",
                        help="helper program for the PAM line (default: this installation's faceid-helper)")
    parser.add_argument("--start", choices=("race", "enter", "exec"),
                        help="race: the face check runs while the password can be typed (pam_python; the default "
                             "when libpam-python is installed, except through the pam-auth-update profile); enter: "
                             "the face check starts only after Enter on an empty prompt; exec: the pam_exec line "
                             "(face first, then the password prompt)")
    parser.set_defaults(run=run)
    return parser


def _status() -> int:
    from pam_faceid.pamstack import pamconf

    services = pamconf.services_with_face_auth()
    print(f"face auth on for: {', '.join(services) if services else 'no service'}")
    if pamconf.pam_auth_update_available():
        state = "enabled" if "common-auth" in services else "installed, not enabled"
        print(f"pam-auth-update profile {pamconf.PROFILE}: {state}")
    return 0


def _seat_problem(service: str, services: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(why the face line must not go into ``service``, a warning to print) for `faceid pam enable`."""
    from pam_faceid.common.config import NETWORK_SERVICES, service_allowed

    if service in NETWORK_SERVICES:
        return (f"{service} is a network service: the face is never used there (it proves only who sits at this "
                "machine's camera); left as it was"), None
    if not service_allowed(service, services):
        return None, (f"{service} is not in auth.services, so the helper skips the face there until it is added: "
                      f"faceid config auth.services \"{' '.join(services)} {service}\"")
    return None, None


def _face_start(args: argparse.Namespace) -> "pamconf.FaceStart":
    """--start race/enter need libpam-python; without --start, race where it is installed, else pam_exec."""
    from pam_faceid.pamstack import pamconf

    start = args.start or ("race" if pamconf.pam_python_available() else "exec")
    if start != "exec" and not pamconf.pam_python_available():
        raise CommandError(f"--start {start} needs libpam-python (apt-get install libpam-python)", EXIT_USAGE)
    config = getattr(args, "config", None)
    return pamconf.FaceStart(start, os.path.abspath(config) if config else None)


def run(args: argparse.Namespace) -> int:
    """Apply the change service by service; report each; exit 1 if any failed."""
    from pam_faceid.pamstack import pamconf

    if args.action == "status":
        return _status()
    common.require_root(f"faceid pam {args.action}")
    enable = args.action == "enable"
    helper = args.helper or pamconf.helper_path()
    if enable and not (os.path.isfile(helper) and os.access(helper, os.X_OK)):
        raise CommandError(f"{helper}: not an executable helper (install first, or give --helper)", EXIT_USAGE)
    for service in args.service or []:
        if "/" in service or not (pamconf.PAM_DIR / service).is_file():
            raise CommandError(f"no PAM service {service!r}: {pamconf.PAM_DIR / service} does not exist", EXIT_USAGE)
    changes: list[tuple[str, object]] = []
    how = _face_start(args) if enable else None
    if args.service:
        services = list(args.service)
    elif enable and pamconf.pam_auth_update_available() and not args.start:
        changes.append(("common-auth", lambda: pamconf.toggle_profile(True)))
        services = []
    elif enable:
        services = [s for s in pamconf.DEFAULT_SERVICES if (pamconf.PAM_DIR / s).is_file()]
        if not services:
            raise CommandError(f"none of the usual services exists in {pamconf.PAM_DIR}: name them with --service",
                               EXIT_USAGE)
    else:
        services = pamconf.services_with_face_auth()
        if "common-auth" in services and pamconf.pam_auth_update_available():
            services.remove("common-auth")
            changes.append(("common-auth", lambda: pamconf.toggle_profile(False)))
        if not services and not changes:
            print("face auth is not on in any PAM service: nothing to do")
            return 0
    allowed = common.load_cfg(args).auth.services if enable else ()
    for service in services:
        changes.append((service, lambda s=service: pamconf.edit_service(s, enable, helper, how=how or pamconf.FaceStart())))
    failed = 0
    for name, apply in changes:
        refusal, warning = _seat_problem(name, allowed) if enable and name != "common-auth" else (None, None)
        if refusal:
            failed += 1
            print(f"{name}: FAILED: {refusal}")
            continue
        if warning:
            print(f"{name}: warning: {warning}")
        print(f"{name}: proving the change in a private copy of {pamconf.PAM_DIR}…", flush=True)
        try:
            change = apply()  # type: ignore[operator]
        except pamconf.PamConfError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}")
            continue
        backup = f" (backup {change.backup})" if change.backup else ""
        print(f"{name}: {change.action}: {change.detail}{backup}")
    if failed:
        raise CommandError(f"{failed} of {len(changes)} change(s) failed; the password path is as it was there",
                           EXIT_FAILURE)
    return 0
