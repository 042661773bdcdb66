"""The generated files are current and every relative link in the README and docs/ leads to a file.

tools/generate.py writes config/config.yaml, docs/config.md, docs/protocol.md and the typed config sections
from their one source each; a change to the schema or the protocol docstring without a rerun fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_generated_files_are_current():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "generate.py"), "--check"], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_a_stale_generated_file_is_named(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import generate
    finally:
        sys.path.remove(str(REPO / "tools"))
    for name, render in generate.TARGETS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(render())
    assert generate.stale(tmp_path) == {}
    (tmp_path / "docs" / "config.md").write_text("edited by hand\n")
    assert list(generate.stale(tmp_path)) == ["docs/config.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == [], f"{doc.relative_to(REPO)} links to missing files: {missing}"


def test_readme_is_short_and_points_to_docs():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 300, len(readme.splitlines())
    for doc in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"
