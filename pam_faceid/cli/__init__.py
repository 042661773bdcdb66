"""faceid, the admin CLI: one module per command, like Howdy's cli/.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Modules are imported only when listed here; each imports its heavy
dependencies (torch, sklearn) inside ``run`` so ``faceid --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Order is the order shown in --help.
COMMANDS = [
    "train_base",
    "evaluate",
    "liveness",
    "config",
    "enroll",
    "list",
    "remove",
    "clear",
    "test",
    "status",
    "pam",
    "demo",
    "dev_daemon",
    "calibrate",
    "snapshot",
    "unlock",
    "retrain",
    "keyring",
]

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and the answer is "no" / something failed
EXIT_USAGE = 2  # bad arguments or bad input (argparse uses 2 too)
EXIT_NOT_ROOT = 4  # the command needs root


class CommandError(Exception):
    """A user-facing error: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceid",
        description="Administer pam_faceid, face unlock for Linux.",
        epilog="Run 'faceid COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--config", help="config file (default: $FACEID_CONFIG or /etc/pam_faceid/config.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"pam_faceid.cli.{name}")
        module.add_parser(sub)
    return parser


EXIT_CLOSED_STDOUT = 141
"""128 + SIGPIPE: what a shell reports for a program whose reader went away (``faceid … | head -1``)."""


def main(argv: list[str] | None = None) -> int:
    """Every verb; a closed stdout ends it quietly (exit 141), as it ends any Unix filter."""
    try:
        return _main(argv)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        return EXIT_CLOSED_STDOUT


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="faceid: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.run(args) or 0)
    except CommandError as exc:
        print(f"faceid {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("faceid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
