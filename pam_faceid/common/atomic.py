"""Replacing a file atomically and durably: the one writer for state, config and PAM files.

A temporary file in the same folder (created exclusively, never through a
symlink, with its final mode and owner from the start) is written, fsynced,
renamed over the target, and the folder is fsynced: a reader or a crash sees
the old file or the new one, never half of one. Only the standard library is
imported, since config.py (and so the PAM helper) uses it.
"""

from __future__ import annotations

import os
import uuid


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o600,
                owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data``; the file gets ``mode`` and, when given, ``owner`` (uid, gid).

    On any failure the old file is untouched, the temporary file is removed
    and the OSError (or interrupt) propagates for the caller to word.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder or ".")
