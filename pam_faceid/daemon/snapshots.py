"""Snapshots: the frames of recent authentication attempts, kept by faceidd and copied out by `faceid snapshot`.

They are faces, so no other user may read one at any moment: every folder is
made 0700 and every file 0600 when it is created (O_EXCL with the mode, then
fchmod, so no umask widens or narrows it), and everything below a folder is
reached through that folder's descriptor, opened without following symlinks.
Layout: ``<state_dir>/snapshots/<time>-<user>-<id>/frame_NNN.jpg`` and
``attempt.json``; `faceid snapshot --out DIR` writes the same folders in DIR.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import time
from pathlib import Path
from typing import Any

SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_FRAMES = 10
"""The last frames of an attempt kept when snapshots.enabled (they show why a login failed)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SnapshotError(Exception):
    """The output folder is not safe to write faces into; the message says why and what to do."""


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def private_dir(name: str, dir_fd: int | None = None) -> int:
    """Create folder ``name`` 0700, or take an existing one of ours, and return it opened without following a
    symlink; OSError when ``name`` is a symlink or not a folder, SnapshotError when someone else owns it."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        pass
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        os.close(fd)
        raise SnapshotError(f"{name}: owned by {_owner(owner)}, who could read the faces written there")
    os.fchmod(fd, 0o700)
    return fd


def write_private(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` as a new 0600 file ``name`` of the folder (one left by an earlier run is replaced, not opened)."""
    try:
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_attempt(dir_fd: int, frames: list[bytes], info: dict[str, Any]) -> None:
    for i, data in enumerate(frames):
        write_private(dir_fd, f"frame_{i:03d}.jpg", data)
    write_private(dir_fd, "attempt.json", (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())


def save(state_dir: Path, frames: list[bytes], info: dict[str, Any], keep: int) -> Path:
    """Keep one attempt as <state_dir>/snapshots/<time>-<user>-<id>/; prune to the last ``keep`` attempts.

    The folder is written under a dot-name and renamed into place, so a
    reader never sees half an attempt.
    """
    root_fd = private_dir(str(state_dir / SNAPSHOTS_DIR))
    try:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
        name = f"{stamp}-{info.get('user', 'unknown')}-{os.urandom(3).hex()}"
        tmp_fd = private_dir(f".{name}", root_fd)
        try:
            _write_attempt(tmp_fd, frames, info)
        finally:
            os.close(tmp_fd)
        os.rename(f".{name}", name, src_dir_fd=root_fd, dst_dir_fd=root_fd)
        attempts = _attempt_names(root_fd)
        for old in attempts[: max(0, len(attempts) - keep)]:
            shutil.rmtree(old, dir_fd=root_fd, ignore_errors=True)
    finally:
        os.close(root_fd)
    return state_dir / SNAPSHOTS_DIR / name


def _attempt_names(root: int | str | os.PathLike[str]) -> list[str]:
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))


def attempts(state_dir: str | os.PathLike[str]) -> list[Path]:
    """The kept attempts' folders, oldest first (none when the snapshots folder does not exist)."""
    root = Path(state_dir) / SNAPSHOTS_DIR
    try:
        return [root / name for name in _attempt_names(root)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _open_out(out: str) -> int:
    """``out`` as a folder of root's, created 0700 when missing; SnapshotError for a symlink or another's folder."""
    try:
        before = os.lstat(out)
    except FileNotFoundError:
        before = None
    if before is not None and stat.S_ISLNK(before.st_mode):
        raise SnapshotError(f"{out}: is a symlink; give the real folder (symlinks are never followed)")
    if before is not None and not stat.S_ISDIR(before.st_mode):
        raise SnapshotError(f"{out}: exists and is not a folder")
    if before is not None and before.st_uid != os.geteuid():
        raise SnapshotError(f"{out}: owned by {_owner(before.st_uid)}, who could read the faces written there; "
                            f"give a new path or a folder of root's")
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    if before is None:
        os.mkdir(out, 0o700)
    try:
        fd = os.open(out, _DIR_FLAGS)
    except OSError as exc:
        raise SnapshotError(f"{out}: changed while it was opened ({exc.strerror}); try again") from None
    now = os.fstat(fd)
    moved = before is not None and (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
    if moved or now.st_uid != os.geteuid():
        os.close(fd)
        raise SnapshotError(f"{out}: changed while it was opened; try again")
    return fd


def export(sources: list[Path], out: str) -> list[tuple[Path, int]]:
    """Copy the attempt folders ``sources`` into ``out``; (written folder, frames) per attempt.

    ``out`` may be new (made 0700, missing parents too) or a folder of root's
    (its own mode is left alone: it may be /tmp); each attempt folder in it
    is 0700 and each file 0600 from its creation. A symlink anywhere in
    ``out`` is never followed.
    """
    umask = os.umask(0o077)
    try:
        out_fd = _open_out(out)
        written = []
        try:
            for source in sources:
                try:
                    sub = private_dir(source.name, out_fd)
                except SnapshotError as exc:
                    raise SnapshotError(f"{out}/{exc}") from None
                except OSError as exc:
                    raise SnapshotError(f"{out}/{source.name}: cannot be written ({exc.strerror})") from None
                try:
                    frames = 0
                    with os.scandir(source) as entries:
                        for entry in sorted(entries, key=lambda e: e.name):
                            if entry.is_file(follow_symlinks=False):
                                write_private(sub, entry.name, Path(entry.path).read_bytes())
                                frames += entry.name.endswith(".jpg")
                finally:
                    os.close(sub)
                written.append((Path(out) / source.name, frames))
        finally:
            os.close(out_fd)
        return written
    finally:
        os.umask(umask)
