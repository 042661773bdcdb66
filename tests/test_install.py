"""install.sh: the system install into a staging root (``--root``), its idempotence and uninstall.

The script runs for real (venv from /usr/bin/python3, pip, files, permissions)
but under a temporary root, so the machine's /opt, /etc and /var stay untouched.
The source it installs from is a copy of this checkout with systemd units, so the
test does not depend on what systemd/ holds today.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "install.sh"

PAM_PROFILE = """Name: Face unlock (pam_faceid)
Default: no
Priority: 260
Auth-Type: Primary
Auth:
\t[success=end default=ignore]\tpam_exec.so quiet stdout seteuid {prefix}/bin/faceid-helper
"""

PAM_PASSWORD_PROFILE = """Name: Face unlock: note password logins (pam_faceid)
Default: no
Priority: 0
Auth-Type: Additional
Auth:
\t[default=ignore]\tpam_exec.so quiet seteuid {prefix}/bin/faceid-helper --password-used
Account-Type: Additional
Account:
\t[default=ignore]\tpam_exec.so quiet seteuid {prefix}/bin/faceid-helper --password-used
"""

MINIMAL_UNITS = {
    "faceidd.socket": "[Unit]\nDescription=test socket\n\n[Socket]\nListenStream=/run/pam_faceid/faceidd.sock\n\n"
                      "[Install]\nWantedBy=sockets.target\n",
    "faceidd.service": "[Unit]\nDescription=test daemon\n\n[Service]\nType=notify\n"
                       "ExecStart=/opt/pam_faceid/bin/faceidd\n",
}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the install tests check root ownership: run as root")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _run(*args: str, src: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(src / "install.sh"), *args], capture_output=True, text=True,
                            timeout=600, cwd="/")
    if check:
        assert result.returncode == 0, f"install.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout holding what install.sh reads, plus systemd units."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "pam_faceid", src / "pam_faceid", ignore=ignore)
    for name in ("install.sh", "setup.cfg", "pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    if (REPO / "config").is_dir():
        shutil.copytree(REPO / "config", src / "config")
    (src / "systemd").mkdir()
    real_units = [p for p in (REPO / "systemd").glob("*") if p.suffix in (".service", ".socket")]
    for unit in real_units:
        shutil.copy2(unit, src / "systemd" / unit.name)
    if not real_units:
        for name, text in MINIMAL_UNITS.items():
            (src / "systemd" / name).write_text(text)
    return src


@pytest.fixture
def root():
    """An empty staging root that other users can enter (so `nobody` can run the installed helper)."""
    path = Path(tempfile.mkdtemp(prefix="faceid-root-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_system_install_layout_idempotence_and_uninstall(source: Path, root: Path):
    out = _run("--root", str(root), src=source).stdout
    prefix = root / "opt" / "pam_faceid"
    assert "creating venv" in out and "pip install pam_faceid" in out

    cfg = (prefix / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg, "the venv must come from the system Python so every user can run it"
    site = subprocess.run([str(prefix / "bin" / "python"), "-I", "-c",
                           "import importlib.util as u, pam_faceid, sys; "
                           "print(pam_faceid.__file__); sys.exit(u.find_spec('torch') is not None)"],
                          capture_output=True, text=True, cwd="/")
    assert site.returncode == 0, "torch must not be installed in the runtime venv"
    assert site.stdout.startswith(str(prefix)), "the package must be installed into the venv, not editable"
    for script in ("faceid", "faceidd", "faceid-helper"):
        assert os.access(prefix / "bin" / script, os.X_OK)

    nobody = subprocess.run([str(prefix / "bin" / "python"), "-I", "-c", "import pam_faceid.vision.camera"],
                            capture_output=True, text=True, user="nobody", group="nogroup", cwd="/")
    assert nobody.returncode == 0, f"nobody cannot run the installed package: {nobody.stderr}"

    etc = root / "etc" / "pam_faceid"
    if (source / "config" / "config.yaml").exists():
        assert (etc / "config.yaml").read_bytes() == (source / "config" / "config.yaml").read_bytes()
        assert _mode(etc / "config.yaml") == 0o644 and (etc / "config.yaml").stat().st_uid == 0
    state = root / "var" / "lib" / "pam_faceid"
    assert _mode(state) == 0o700 and state.stat().st_uid == 0

    profile = root / "usr" / "share" / "pam-configs" / "faceid"
    assert profile.read_text() == PAM_PROFILE.format(prefix=prefix)
    assert _mode(profile) == 0o644
    password_profile = profile.with_name("faceid-password")
    assert password_profile.read_text() == PAM_PASSWORD_PROFILE.format(prefix=prefix)
    assert _mode(password_profile) == 0o644
    links = {root / "usr/local/bin/faceid": "faceid", root / "usr/local/bin/faceidd": "faceidd",
             root / "usr/local/sbin/faceid-helper": "faceid-helper"}
    for link, name in links.items():
        assert link.is_symlink() and os.readlink(link) == str(prefix / "bin" / name)
    units = sorted(p.name for p in (source / "systemd").iterdir())
    for name in units:
        assert (root / "etc/systemd/system" / name).read_bytes() == (source / "systemd" / name).read_bytes()

    again = _run("--root", str(root), src=source).stdout
    assert "pip install" not in again and "creating venv" not in again
    assert "already installed" in again and "reusing venv" in again

    (state / "users").mkdir()
    (state / "users" / "alice.json").write_text("{}")
    backups = root / "var/backups/pam_faceid"  # what 'faceid pam enable' leaves (pamconf.BACKUP_DIR)
    backups.mkdir(parents=True)
    (backups / "sudo.20261204-120000-000000").write_text("#%PAM-1.0\n")
    out = _run("--root", str(root), "--uninstall", src=source).stdout
    assert not prefix.exists() and not profile.exists() and not password_profile.exists()
    assert not any(link.is_symlink() for link in links)
    assert not any((root / "etc/systemd/system" / name).exists() for name in units)
    assert not (etc / "config.yaml").exists(), "an unedited config the script installed is removed"
    assert (state / "users" / "alice.json").exists(), "enrolments are kept without --purge"
    assert "keeping" in out
    assert f"keeping {backups} (copies of PAM files" in out and backups.exists()

    out = _run("--root", str(root), "--uninstall", "--purge", src=source).stdout
    assert not state.exists() and not etc.exists()
    assert not backups.exists() and f"purging {backups}" in out


@pytest.mark.slow
def test_existing_or_edited_config_is_kept(source: Path, root: Path):
    etc = root / "etc" / "pam_faceid"
    etc.mkdir(parents=True)
    mine = "# the admin's own config\nauth:\n  timeout: 3.0\n"
    (etc / "config.yaml").write_text(mine)
    out = _run("--root", str(root), src=source).stdout
    assert "keeping existing" in out
    assert (etc / "config.yaml").read_text() == mine
    _run("--root", str(root), "--uninstall", src=source)
    assert (etc / "config.yaml").read_text() == mine, "a config the script did not install is not removed"
    assert not (root / "opt" / "pam_faceid").exists()


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown option"),
    (["--purge"], "--purge goes with --uninstall"),
    (["--dev", "--root", "/tmp"], "--root is for the system install"),
])
def test_bad_options_are_refused_with_one_line(source: Path, args: list[str], message: str):
    result = _run(*args, src=source, check=False)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_dev_refuses_a_venv_built_from_another_python(source: Path, tmp_path: Path):
    """A venv from a Python under /root would not run for other users: --dev must say so, not reuse it."""
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.base_prefix)"],
                            capture_output=True, text=True).stdout.strip()
    other = next((p for p in (shutil.which("python3"), sys.executable, *map(str, Path.home().glob(
        ".pyenv/versions/3.*/bin/python3"))) if p and subprocess.run(
        [p, "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True).stdout.strip() != system),
        None)
    if other is None:
        pytest.skip("no Python other than the system one on this machine")
    tree = tmp_path / "tree"
    shutil.copytree(source, tree)
    subprocess.run([other, "-m", "venv", "--without-pip", str(tree / ".venv")], check=True)
    result = _run("--dev", "--no-apt", src=tree, check=False)
    assert result.returncode != 0
    assert "was not built from /usr/bin/python3" in result.stderr


@pytest.mark.slow
def test_dev_on_a_fresh_venv_gives_a_plain_reason(source: Path, tmp_path: Path):
    """A fresh venv has neither pam_faceid nor 'packaging': --dev says the first, not that the second is missing.

    torch and torchvision are stood in for by their metadata (so the 2 GB download is skipped) and pip is kept
    offline, so the run stops at the pip install it announces.
    """
    pins = re.search(r"TORCH_PINS=\(torch==(\S+) torchvision==(\S+)\)", SCRIPT.read_text())
    assert pins, "TORCH_PINS not found in install.sh"
    tree = tmp_path / "tree"
    shutil.copytree(source, tree)
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(tree / ".venv")], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([str(tree / ".venv/bin/python"), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    for name, version in zip(("torch", "torchvision"), pins.groups()):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    no_wheels = tmp_path / "no-wheels"
    no_wheels.mkdir()
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(no_wheels)}
    result = subprocess.run(["bash", str(tree / "install.sh"), "--dev", "--no-apt"], capture_output=True, text=True,
                            timeout=600, cwd="/", env=env)
    assert "torch and torchvision present" in result.stdout, result.stdout + result.stderr
    assert "==> pip install -e '.[train,test,bench]' (pam_faceid is not installed)" in result.stdout, result.stdout
    assert "'packaging' module" not in result.stdout + result.stderr


def test_ci_runs_exactly_the_readme_commands():
    """.ci/run is the README's two development commands, verbatim, and nothing else."""
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set ", "cd "))]
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Development and tests")[1].split("```sh")[1].split("```")[0]
    commands = [line.split("  #")[0].strip() for line in block.strip().splitlines()]
    assert ci == commands
