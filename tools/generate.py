"""Write (or check) every file generated from the code, so none is a hand-kept copy.

    .venv/bin/python tools/generate.py          # rewrite what is stale, say which
    .venv/bin/python tools/generate.py --check  # exit 1 naming what is stale (tests/test_docs.py runs this)

What it generates, each from its one source:
  config/config.yaml                        the shipped config, every key at its default (config.SCHEMA)
  docs/config.md                            the configuration reference table (config.SCHEMA)
  pam_faceid/common/config_sections.py      one typed NamedTuple per config section, for mypy and readers
  docs/protocol.md                          faceidd's wire protocol (protocol.py's module docstring)

A developer tool, not part of the package: nothing here is imported at a login.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pam_faceid.common import config as C
from pam_faceid.common import protocol

REPO = Path(__file__).resolve().parents[1]
TOOL = "tools/generate.py"

TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


def render_markdown() -> str:
    """docs/config.md: the configuration reference, one table row per key."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "# Configuration reference",
        "",
        f"<!-- generated from SCHEMA in pam_faceid/common/config.py by {TOOL}: do not edit -->",
        "",
        f"The configuration file is `{C.DEFAULT_PATH}` (`--config FILE` or `${C.ENV_VAR}` choose another).",
        "A missing default file means every key takes its default. Unknown keys, wrong types and",
        "out-of-range values are refused with one line naming the file, key, value and what is allowed.",
        "The file and its folder must be owned by root and not writable by group or others.",
        "Change a key with `sudo faceid config KEY VALUE` (validated, written atomically, daemon reloaded).",
        "",
        "| Key | Type | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in C.SCHEMA:
        default = C.format_value(key.default)
        lines.append(f"| `{key.name}` | {key.type_name} | `{cell(default)}` | {cell(key.allowed())} "
                     f"| {cell(key.doc)} |")
    return "\n".join(lines) + "\n"


def render_sections() -> str:
    """pam_faceid/common/config_sections.py: the sections as NamedTuples with typed fields."""
    lines = [
        '"""The config\'s sections as typed NamedTuples: ``cfg.auth.timeout`` is a float to mypy and to a reader.',
        "",
        f"Generated from SCHEMA (pam_faceid/common/config.py) by {TOOL}: do not edit; tests/test_docs.py",
        "fails when it is stale. config.py adds the read-only behaviour and ``as_dict`` at run time.",
        '"""',
        "",
        "from typing import Any, NamedTuple",
    ]
    for section, doc in C.SECTIONS.items():
        lines += ["", "", f"class {section.title()}Section(NamedTuple):", f'    """{section}: {doc}"""', ""]
        for key in (k for k in C.SCHEMA if k.section == section):
            kind = TYPE_NAMES.get(key.value_type) or ("float | str" if key.type == C.FLOAT_OR_AUTO else
                                                      "tuple[str, ...]")
            lines.append(f"    {key.field}: {kind}")
        lines += ["", "    def as_dict(self) -> dict[str, Any]:", "        return self._asdict()"]
    lines += ["", "", "class Sections:",
              '    """Config\'s attributes, one per section (annotations only: Config fills them)."""', ""]
    lines += [f"    {section}: {section.title()}Section" for section in C.SECTIONS]
    return "\n".join(lines) + "\n"


def render_protocol() -> str:
    """docs/protocol.md: the wire protocol as protocol.py's docstring states it."""
    doc = (protocol.__doc__ or "").strip("\n")
    return (f"# Wire protocol (faceidd's socket)\n\n<!-- generated from pam_faceid/common/protocol.py's docstring by "
            f"{TOOL}: do not edit -->\n\n```text\n{doc}\n```\n")


TARGETS: dict[str, Callable[[], str]] = {
    "config/config.yaml": C.render_yaml,
    "docs/config.md": render_markdown,
    "pam_faceid/common/config_sections.py": render_sections,
    "docs/protocol.md": render_protocol,
}


def stale(root: Path = REPO) -> dict[str, str]:
    """The generated files whose content differs from what their source gives now: {path: new text}."""
    changed = {}
    for name, render in TARGETS.items():
        path = root / name
        new = render()
        if not path.exists() or path.read_text(encoding="utf-8") != new:
            changed[name] = new
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=TOOL, description="Write or check the files generated from the code.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming the stale files")
    args = parser.parse_args(argv)
    changed = stale()
    if args.check:
        for name in changed:
            print(f"{name} is stale: run .venv/bin/python {TOOL}", file=sys.stderr)
        return 1 if changed else 0
    for name, text in changed.items():
        path = REPO / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
