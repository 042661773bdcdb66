"""install.sh --dev and apt: it names each missing Debian package and why before apt-get runs, and skips on request.

dpkg-query and apt-get are small scripts on the PATH that report every package missing and record their
calls; the copied install.sh stops right after the apt step (its .venv is a plain file, which it refuses),
so no venv or pip runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh only calls apt-get as root")

FAKE_DPKG = "#!/bin/sh\nexit 1\n"
FAKE_APT = '#!/bin/sh\necho "$*" >> "$APT_LOG"\necho "apt-get ran: $*"\n'


def _install(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(REPO / "install.sh", src / "install.sh")
    (src / ".venv").write_text("not a venv: install.sh stops here\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("dpkg-query", FAKE_DPKG), ("apt-get", FAKE_APT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "apt.log"
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "APT_LOG": str(log), **env}
    done = subprocess.run(["bash", str(src / "install.sh"), "--dev", *args], capture_output=True, text=True,
                          env=environ, timeout=60)
    return done, log.read_text().splitlines() if log.exists() else []


def test_dev_install_says_what_it_installs_and_why_before_apt_get(tmp_path):
    done, calls = _install(tmp_path)
    out = done.stdout
    assert "system packages missing: python3-venv" in out, out
    assert "    xvfb: tests: a virtual X screen for the screen-locker test" in out, out
    assert "    libpam-python: pam_python, which loads the face-or-password prompt module" in out, out
    assert "to skip: ./install.sh --no-apt, or FACEID_NO_APT=1" in out, out
    assert out.index("xdotool: tests:") < out.index("apt-get ran: update"), out
    assert calls[0] == "update" and calls[1].startswith("install -y --no-install-recommends python3-venv"), calls


@pytest.mark.parametrize("skip", [("--no-apt",), ("FACEID_NO_APT",)], ids=["--no-apt", "FACEID_NO_APT=1"])
def test_dev_install_skips_apt_on_request_and_goes_on(tmp_path, skip):
    args, env = ((), {"FACEID_NO_APT": "1"}) if skip == ("FACEID_NO_APT",) else (skip, {})
    done, calls = _install(tmp_path, *args, **env)
    assert calls == [], calls
    assert "    i3lock: tests: a real screen locker that authenticates through PAM" in done.stdout, done.stdout
    assert "not installing them" in done.stdout and "tests that need them skip, saying why" in done.stdout
    assert "was not built from" in done.stderr, done.stderr  # it went on to the venv step
