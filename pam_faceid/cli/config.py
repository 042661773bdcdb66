"""faceid config: read the effective settings, or set one key safely.

Setting goes through config.set_value, so a bad value never reaches the file
and the daemon is asked to reload only after a complete, valid write.
"""

from __future__ import annotations

import argparse
import os
import sys

from pam_faceid.cli import EXIT_NOT_ROOT, EXIT_USAGE, CommandError
from pam_faceid.common.config import KEYS, SCHEMA, SECTIONS, ConfigError, format_value, load_config, parse_value, \
    resolve_path, set_value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid config [KEY [VALUE]]'."""
    parser = sub.add_parser(
        "config",
        help="show the settings, or set one key (validated; the daemon reloads)",
        description="Without arguments print every key with its effective value; with KEY print one value "
                    "(or a whole section); with KEY VALUE check the value, write it atomically into the config "
                    "file and ask the daemon to reload.",
        epilog="examples:\n  faceid config\n  faceid config auth.timeout\n  sudo faceid config auth.timeout 3\n"
               "  sudo faceid config auth.threshold auto",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("key", nargs="?", metavar="KEY", help="section.key, for example auth.timeout")
    parser.add_argument("value", nargs="?", metavar="VALUE", help="new value, for example 3.5, true, auto")
    parser.set_defaults(run=run)
    return parser


def _needs_root(path: str) -> bool:
    """Writing a root-owned config (or into a root folder) needs root; say so before trying."""
    if os.geteuid() == 0:
        return False
    target = os.path.realpath(path)
    if os.path.exists(target):
        return os.stat(target).st_uid == 0 or not os.access(target, os.W_OK)
    folder = os.path.dirname(target)
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    return not os.access(folder, os.W_OK)


def _ask_reload(socket_path: str) -> None:
    """Tell faceidd to re-read the config; a daemon that is down reads it when it starts."""
    try:
        from pam_faceid.common.protocol import request_reload
    except (ImportError, AttributeError):
        print("faceid config: note: the daemon reads the new value when it (re)starts", file=sys.stderr)
        return
    try:
        request_reload(socket_path)
    except Exception as exc:  # any failure here is only a note: the file is already written
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"faceid config: note: daemon not reloaded ({reason}); it reads the new value when it starts",
              file=sys.stderr)
    else:
        print("daemon reloaded")


def _display(value: object) -> str:
    """A value as a script wants it: text unquoted, booleans as true/false."""
    if isinstance(value, str):
        return value if value else '""'
    return format_value(value)


def _show(path: str | None, key: str | None) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if key is None:
        origin = "" if cfg.from_file else " (no file: all defaults)"
        print(f"# {cfg.path}{origin}")
        for entry in SCHEMA:
            print(f"{entry.name} = {_display(cfg.get(entry.name))}")
        return 0
    if key in SECTIONS:
        for entry in (k for k in SCHEMA if k.section == key):
            print(f"{entry.name} = {_display(cfg.get(entry.name))}")
        return 0
    if key not in KEYS:
        raise CommandError(_unknown(key), EXIT_USAGE)
    print(_display(cfg.get(key)))
    return 0


def _unknown(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(KEYS), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"{key}: unknown key{hint} (run 'faceid config' to list all keys)"


def _set(path_arg: str | None, key: str, value: str) -> int:
    path, _ = resolve_path(path_arg)
    if key not in KEYS:
        raise CommandError(_unknown(key), EXIT_USAGE)
    try:
        parse_value(key, value, path)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    if _needs_root(path):
        raise CommandError(f"changing {path} needs root: run sudo faceid config {key} {value}", EXIT_NOT_ROOT)
    try:
        old = load_config(path).get(key) if os.path.lexists(path) else KEYS[key].default
        cfg = set_value(path, key, value)
    except ConfigError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    new = cfg.get(key)
    change = f"(was {_display(old)})" if old != new else "(unchanged)"
    print(f"{key} = {_display(new)} {change} in {path}")
    _ask_reload(cfg.daemon.socket)
    return 0


def run(args: argparse.Namespace) -> int:
    """Show all keys, one key, or set one key."""
    path = getattr(args, "config", None)
    if args.value is None:
        return _show(path, args.key)
    return _set(path, args.key, args.value)
