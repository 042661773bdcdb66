"""ruff and mypy pass, as pyproject.toml configures them: bugs a linter or a type checker sees never reach review.

ruff checks the package, tests, bench and tools (pyflakes, pycodestyle, bugbear); mypy checks the package,
including the config's typed sections (config_sections.py), so ``cfg.auth.timeout`` is a float to it.
Both run in a second or two (mypy keeps its cache in .mypy_cache).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]', as ./install.sh --dev does)")
    return path


def test_ruff_finds_nothing():
    done = subprocess.run([str(_tool("ruff")), "check", "--no-cache", "pam_faceid", "tests", "bench", "tools"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    done = subprocess.run([str(_tool("mypy"))], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_sees_the_config_types(tmp_path):
    """A str used where cfg.auth.timeout (a float) goes is caught: the config's sections are typed to mypy."""
    probe = tmp_path / "probe.py"
    probe.write_text("from pam_faceid.common.config import load_config\n\n"
                     "def deadline() -> str:\n    return load_config().auth.timeout\n")
    done = subprocess.run([str(_tool("mypy")), "--config-file", str(REPO / "pyproject.toml"), str(probe)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and 'got "float", expected "str"' in done.stdout, done.stdout
