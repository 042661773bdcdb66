"""Snapshots are faces: faceidd's own and `faceid snapshot --out`'s copies are 0700/0600 from their creation whatever
the umask, and the copy refuses an output folder that is a symlink or another user's (issue 14, finding 6)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from cli_support import FACEID, require_root, write_config

from pam_faceid.daemon import snapshots


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything under it, by path relative to ``root`` ("." for root)."""
    found = {".": stat.S_IMODE(os.lstat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def private(found: dict[str, int], root: Path) -> bool:
    return all(mode == (0o700 if (root / name).is_dir() else 0o600) for name, mode in found.items())


def test_faceidd_writes_snapshots_private_whatever_the_umask(tmp_path):
    """snapshots.save (what faceidd calls after a session) under umask 000, the loosest there is."""
    require_root()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    old = os.umask(0)
    try:
        for user in ("alice", "bob", "carol"):
            snapshots.save(state, [b"\xff\xd8frame", b"\xff\xd8frame2"], {"user": user, "verdict": "no_match"}, 2)
    finally:
        os.umask(old)
    root = state / snapshots.SNAPSHOTS_DIR
    found = modes(root)
    assert private(found, root), found
    assert [p.name.split("-")[1] for p in snapshots.attempts(state)] == ["bob", "carol"]  # pruned to keep=2
    assert sorted(p.name for p in snapshots.attempts(state)[0].iterdir()) == ["attempt.json", "frame_000.jpg",
                                                                            "frame_001.jpg"]


@pytest.fixture
def kept(tmp_path: Path) -> Path:
    """A config whose state folder holds two attempts with their files 0644, as faceidd left them before this fix
    under umask 022 (an upgrade keeps them)."""
    require_root()
    tmp_path.chmod(0o700)
    config = write_config(tmp_path, tmp_path / "camera", snapshots={"enabled": True})
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    for user in ("alice", "bob"):
        attempt = snapshots.save(state, [b"\xff\xd8a", b"\xff\xd8b", b"\xff\xd8c"], {"user": user, "verdict": "x"}, 5)
        for path in attempt.iterdir():
            path.chmod(0o644)
    return config


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder like /tmp: root's, mode 1777, so any user may make entries in it."""
    folder = Path(tempfile.mkdtemp(prefix="fidsnap", dir="/tmp"))
    folder.chmod(0o1777)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def snapshot(config: Path, out: Path) -> subprocess.CompletedProcess:
    """`faceid snapshot --out OUT` as root under umask 022, as from a root shell."""
    return subprocess.run([FACEID, "--config", str(config), "snapshot", "--out", str(out)], capture_output=True,
                          text=True, timeout=60, umask=0o022, env={"PATH": "/usr/bin:/bin"})


def test_copies_are_private_from_creation_under_umask_022(kept, shared_tmp):
    """A new --out (missing parent included) and an existing folder of root's: every folder made is 0700, every
    file 0600 (before: copytree made 0755/0644 and tightened only folders at the end, keeping the files' 0644)."""
    new = shared_tmp / "new" / "faceid-snapshots"
    done = snapshot(kept, new)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("3 frame(s)") == 2 and "user alice, verdict x" in done.stdout
    found = modes(shared_tmp / "new")
    assert private(found, shared_tmp / "new") and len(found) == 2 + 2 * 5, found

    existing = shared_tmp / "root-folder"
    existing.mkdir(mode=0o755)
    for _ in range(2):  # a second run over the first replaces the files
        done = snapshot(kept, existing)
        assert done.returncode == 0, done.stderr
    found = modes(existing)
    assert found.pop(".") == 0o755  # an existing folder of root's keeps its mode (it may be /tmp itself)
    assert private(found, existing) and len(found) == 2 * 5, found


def test_another_users_folder_and_symlinks_are_refused(kept, shared_tmp):
    """--out pre-created by nobody in a shared folder, or a symlink to a folder of root's: exit 2, one line, and
    nothing written (before: both were written into, so nobody read the frames)."""
    planted = shared_tmp / "faceid-snapshots"
    subprocess.run(["runuser", "-u", "nobody", "--", "mkdir", "-m", "0777", str(planted)], check=True, timeout=30)
    done = snapshot(kept, planted)
    assert done.returncode == 2 and "owned by nobody" in done.stderr, (done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert list(planted.iterdir()) == []

    target = shared_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    link = shared_tmp / "link"
    link.symlink_to(target)
    done = snapshot(kept, link)
    assert done.returncode == 2 and "is a symlink" in done.stderr, (done.stdout, done.stderr)
    assert list(target.iterdir()) == []
