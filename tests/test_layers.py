"""The import direction of the roles, as setup.cfg's import-linter contracts state it.

The layers contract keeps each role to the roles below it (cli; model and
pamstack; daemon and helper; vision; common); the forbidden contract keeps
the PAM helper to the shared contracts and the camera, so a login never pays
for the model code, onnxruntime or torch; inside faceidd, the daemon contract
keeps serving above sessions, sessions above the loaded state, and the state
above the pure decision. A copy of the package with one
planted import shows each contract would catch a break.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[test]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / "setup.cfg")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def planted(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the package's sources and setup.cfg with ``line`` appended to ``module`` (a path under pam_faceid)."""
    shutil.copytree(REPO / "pam_faceid", tmp_path / "pam_faceid", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / "pam_faceid" / module, "a") as out:
        out.write(f"\n{line}\n")
    return tmp_path


def test_every_role_keeps_its_import_direction():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # A shared contract reaching up into vision breaks the layers (and, through protocol, the helper).
    ("common/protocol.py", "from pam_faceid.vision import embedder", "pam_faceid.common.protocol -> pam_faceid.vision"),
    # The daemon and the helper are siblings: neither imports the other.
    ("daemon/server.py", "from pam_faceid.helper import caller", "pam_faceid.daemon.server -> pam_faceid.helper"),
    # The camera reaching up into the face pipeline breaks the layers (and would load it at every login).
    ("camera.py", "from pam_faceid.vision import faces", "pam_faceid.camera -> pam_faceid.vision"),
    # The helper loading any of vision is refused by its own contract.
    ("helper/main.py", "from pam_faceid.vision import embedder", "pam_faceid.helper.main -> pam_faceid.vision"),
    # ... and so is torch anywhere on its path.
    ("helper/caller.py", "import torch", "pam_faceid.helper.caller -> torch"),
    # The pure decision reaching back up to a session's sockets breaks the daemon's layers.
    ("daemon/decision.py", "from pam_faceid.daemon import session",
     "pam_faceid.daemon.decision -> pam_faceid.daemon.session"),
])
def test_a_planted_import_breaks_a_contract(tmp_path, module, line, broken):
    result = lint(planted(tmp_path, module, line))
    assert result.returncode == 1, result.stdout[-3000:]
    assert broken in result.stdout, result.stdout[-3000:]
