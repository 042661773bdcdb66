"""The one atomic writer, as store, config and pamconf use it: mode, owner, no symlink followed, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pam_faceid.common import atomic
from pam_faceid.pamstack import pamconf


def test_replaces_with_mode_and_owner_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old\n")
    atomic.write_bytes(target, b"new\n", 0o2640, (os.geteuid(), 12345 if os.geteuid() == 0 else os.getegid()))
    st = target.stat()
    assert target.read_bytes() == b"new\n" and stat.S_IMODE(st.st_mode) == 0o2640
    assert os.listdir(tmp_path) == ["state.json"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old\n")
    with pytest.raises(OverflowError):
        atomic.write_bytes(target, b"new\n", owner=(os.geteuid(), -5))  # fchown refuses it after the temp exists
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["state.json"]


def test_pam_file_write_follows_no_planted_link(tmp_path: Path) -> None:
    """pamconf used a fixed temp name: a link planted there was written through (here: to a victim file)."""
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    service = tmp_path / "sudo"
    service.write_text("auth include common-auth\n")
    os.chmod(service, 0o644)
    os.symlink(victim, tmp_path / ".sudo.faceid-tmp")
    pamconf._write_like(service, "auth sufficient pam_exec.so x\n")
    assert victim.read_text() == "keep\n"
    assert service.read_text() == "auth sufficient pam_exec.so x\n" and stat.S_IMODE(service.stat().st_mode) == 0o644
