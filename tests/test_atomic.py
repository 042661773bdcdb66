"""The one atomic writer, as store, config and pamconf use it: mode, owner, no symlink followed, no leftovers."""

from __future__ import annotations

import os
import stat
import uuid
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


def test_pam_file_write_follows_no_planted_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link planted at the very temp name the writer picks is refused, never written through to its target.

    The name is made predictable here (uuid4 fixed) so the link sits where the write goes: only the
    exclusive, no-follow open stands between the write and the victim.
    """
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    service = tmp_path / "sudo"
    service.write_text("auth include common-auth\n")
    os.chmod(service, 0o644)
    fixed = uuid.UUID(int=0xABCDEF)
    monkeypatch.setattr(atomic.uuid, "uuid4", lambda: fixed)
    planted = tmp_path / f".sudo.{fixed.hex[:12]}.tmp"
    os.symlink(victim, planted)
    with pytest.raises(FileExistsError):
        pamconf._write_like(service, "auth sufficient pam_exec.so x\n")
    assert victim.read_text() == "keep\n" and service.read_text() == "auth include common-auth\n"
    assert planted.is_symlink()  # the attacker's link is left alone, not unlinked and raced
    monkeypatch.undo()
    pamconf._write_like(service, "auth sufficient pam_exec.so x\n")  # a fresh name: written
    assert service.read_text() == "auth sufficient pam_exec.so x\n" and stat.S_IMODE(service.stat().st_mode) == 0o644
    assert victim.read_text() == "keep\n"
