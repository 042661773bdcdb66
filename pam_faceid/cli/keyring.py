"""faceid keyring: seal a user's login password to this machine's TPM, so a face login unlocks their keyring.

After a face login at the greeter no password was typed, so the GNOME login
keyring stays locked. ``enroll`` asks for the login password once, checks it
through PAM (a wrong one is never stored), and seals it to the TPM with
tpm2-tools (pam_faceid.common.sealed); after a live face match at a greeter
the PAM module hands it to pam_gnome_keyring as PAM_AUTHTOK. No TPM: nothing
is sealed, and there is no fallback to a file.

Exit codes: 0 done; 1 no TPM, wrong password, nothing to remove, a TPM
error; 2 bad user; 4 not root.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common
from pam_faceid.common import sealed

EXAMPLE = """examples:
  sudo faceid keyring enroll alice     # asks for alice's login password once
  sudo faceid keyring status
  sudo faceid keyring remove alice"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid keyring enroll|status|remove [USER]'."""
    parser = sub.add_parser(
        "keyring",
        help="seal a login password to the TPM so a face login unlocks the keyring",
        description="enroll USER: ask for USER's login password, check it through PAM and seal it to this "
                    f"machine's TPM; after a face match whose liveness check passed, at a greeter only "
                    f"({', '.join(sorted(sealed.SERVICES))}), it unlocks the GNOME login keyring. status: who has "
                    "a sealed password. remove USER: drop it. A password change drops it at the next use. "
                    "See docs/keyring.md.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.add_argument("action", choices=("enroll", "status", "remove"))
    parser.add_argument("user", metavar="USER", nargs="?")
    parser.add_argument("--tcti", default=sealed.DEFAULT_TCTI,
                        help=f"how tpm2-tools reach the TPM (default {sealed.DEFAULT_TCTI}; kept in the record)")
    parser.set_defaults(run=run)
    return parser


def _read_password(user: str) -> str:
    """From the terminal without echo, or one line of stdin (scripts)."""
    if sys.stdin.isatty():
        return getpass.getpass(f"{user}'s login password: ")
    return sys.stdin.readline().rstrip("\n")


def _enroll(state_dir: str, user: str, tcti: str) -> int:
    from pam_faceid.pamstack.pamproof import check_password

    account = common.check_user(user)
    if sealed.shadow_digest(user) is None:
        raise CommandError(f"{user}'s password is not in {sealed.SHADOW} (a network account?): a password change "
                           "could not be noticed, so nothing is sealed", EXIT_FAILURE)
    why = sealed.tpm_problem(tcti)
    if why:
        raise CommandError(f"{why}; nothing sealed (a face login will not unlock {user}'s keyring)", EXIT_FAILURE)
    password = _read_password(user)
    if not password:
        raise CommandError("no password given; nothing sealed", EXIT_FAILURE)
    ok, reason = check_password(user, account.pw_uid, password)
    if not ok:
        raise CommandError(f"PAM refused that password for {user} ({reason}); nothing sealed", EXIT_FAILURE)
    secret = bytearray(password.encode("utf-8", "surrogateescape"))
    try:
        record = sealed.seal(secret, tcti, user, sealed.work_folder(state_dir))
    except sealed.SealError as exc:
        raise CommandError(f"sealing failed: {exc}; nothing stored", EXIT_FAILURE) from None
    finally:
        sealed.wipe(secret)
    path = sealed.store(state_dir, user, record)
    print(f"sealed {user}'s login password to the TPM ({tcti}): {path}")
    if not _reseals_on_change():
        print(f"note: {COMMON_PASSWORD} has no pam_python line for faceid, so a password change drops this at the "
              f"next face login instead of resealing it; to reseal, end that file with:\n  {reseal_line()}")
    return 0


COMMON_PASSWORD = "/etc/pam.d/common-password"


def reseal_line() -> str:
    """The ``password`` line after which a change reseals (pam_prompt's chauthtok runs the helper)."""
    from pam_faceid.pamstack import pamconf

    return f"password optional pam_python.so {pamconf.PROMPT_MODULE} helper={pamconf.helper_path()}"


def _reseals_on_change() -> bool:
    from pam_faceid.pamstack import pamconf

    try:
        with open(COMMON_PASSWORD, encoding="utf-8", errors="replace") as fh:
            rules = pamconf.parse_rules(fh.read().splitlines())
    except OSError:
        return False
    return any(rule.type.lstrip("-") == "password" and rule.module_name == "pam_python.so" and rule.args
               and rule.args[0].endswith(pamconf.PROMPT_MODULE.name) for rule in rules)


def _status(state_dir: str) -> int:
    users = sealed.sealed_users(state_dir)
    if not users:
        print("keyring: no sealed login password")
        return 0
    for user in users:
        try:
            record = sealed.load(state_dir, user)
        except sealed.SealError as exc:
            print(f"{user}: UNUSABLE: {exc}")
            continue
        if record is None:
            continue
        if sealed.stale(record, user):
            state = "STALE: the password changed, dropped at the next face login"
        else:
            state = _unseals(record, state_dir)
        print(f"{user}: sealed {record.get('sealed_at')} to {record.get('tcti')} (PCR {record.get('pcrs')}): {state}")
    return 0


def _unseals(record: dict, state_dir: str) -> str:
    """Whether the TPM still unseals the record (a firmware or Secure Boot change moves PCR 7); the secret is
    wiped at once, never shown."""
    try:
        sealed.wipe(sealed.unseal(record, sealed.work_folder(state_dir)))
    except sealed.SealError as exc:
        return f"DOES NOT UNSEAL: {exc} (faceid keyring enroll again)"
    return "ok, the TPM unseals it"


def run(args: argparse.Namespace) -> int:
    """Enroll, list or remove; the state folder is root's."""
    common.require_root("the sealed keyring passwords")
    cfg = common.load_cfg(args)
    state_dir = cfg.daemon.state_dir
    if args.action == "status":
        return _status(state_dir)
    if not args.user:
        raise CommandError(f"faceid keyring {args.action} needs a USER", 2)
    if args.action == "enroll":
        return _enroll(state_dir, args.user, args.tcti)
    try:
        removed = sealed.remove(state_dir, args.user)
    except sealed.SealError as exc:
        raise CommandError(str(exc), 2) from None
    if not removed:
        raise CommandError(f"{args.user} has no sealed login password", EXIT_FAILURE)
    print(f"removed {args.user}'s sealed login password")
    return 0
