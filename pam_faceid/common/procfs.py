"""Reading /proc, for the helper (who is asking, from where) and faceidd (which PAM application reported).

Standard library only: the helper imports it on the login path.
"""

from __future__ import annotations


def read_proc(pid: int, name: str, limit: int = 1 << 16) -> bytes | None:
    """/proc/PID/NAME's first ``limit`` bytes, or None when the process is gone or the file unreadable."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read(limit)
    except OSError:
        return None


def stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat's fields after the command name ([0] state, [1] ppid, [2] pgrp, [3] session, [4] tty_nr,
    [19] start time); [] if unreadable. The name is skipped by its last ")", as it may hold spaces and ")"."""
    raw = read_proc(pid, "stat") or b""
    return raw.rpartition(b")")[2].split()
