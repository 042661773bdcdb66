"""Enrolment storage on real files: round trip, modes, atomicity, corruption and unsafe files refused in one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import numpy as np
import pytest

from pam_faceid.common import store
from pam_faceid.common.store import Enrolment, Store, StoreError


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def st(tmp_path):
    return Store(tmp_path / "state")


def test_round_trip_keeps_vectors_bit_exact(st):
    vecs = np.stack([unit(1), unit(2)])
    st.add_templates("alice", vecs, label="desk", model_id="m1")
    loaded = st.load("alice")
    assert loaded.user == "alice" and loaded.model_id == "m1"
    assert [t.label for t in loaded.templates] == ["desk", "desk"]
    assert np.array_equal(loaded.matrix(), vecs)
    assert len({t.id for t in loaded.templates}) == 2
    assert all(t.created.endswith("+00:00") for t in loaded.templates)
    assert st.users() == ["alice"]
    assert st.load("bob") is None


def test_modes_are_private(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(3))]))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(st.folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(st.state_dir).st_mode) == 0o700


def test_no_temporary_files_are_left_and_content_is_checksummed(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(4))]))
    assert sorted(p.name for p in st.folder.iterdir()) == ["alice.json"]
    obj = json.loads(path.read_text())
    assert obj["format"] == "pam_faceid.enrolment" and obj["version"] == 1
    assert obj["sha256"] == store.checksum(obj)


def test_flipped_byte_is_reported_as_corrupt_naming_the_file(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(5))]))
    text = path.read_text()
    i = text.index('"label"')
    path.write_text(text[:i] + text[i:].replace('""', '"x"', 1))
    with pytest.raises(StoreError) as err:
        st.load("alice")
    message = str(err.value)
    assert str(path) in message and "checksum" in message and "\n" not in message


@pytest.mark.parametrize("content, words", [
    (b"", "not JSON"),
    (b"{\"format\": \"pam_faceid.enrolment\", ", "not JSON"),
    (b"\x00\x01\x02binary", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"{\"format\": \"something.else\", \"version\": 1}", "not a pam_faceid.enrolment file"),
])
def test_garbage_files_raise_one_line(st, content, words):
    st.save(Enrolment("alice", "m", [store.Template(unit(6))]))
    path = st.path("alice")
    path.write_bytes(content)
    with pytest.raises(StoreError, match=words) as err:
        st.load("alice")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_version_is_refused_even_with_a_valid_checksum(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(7))]))
    obj = json.loads(path.read_text())
    obj["version"] = 99
    store.atomic_write_json(path, obj)
    with pytest.raises(StoreError, match="version 99 is not supported"):
        st.load("alice")


def test_load_all_skips_bad_users_and_keeps_good_ones(st):
    st.add_templates("alice", unit(8))
    st.add_templates("bob", unit(9))
    st.path("bob").write_text("{broken")
    good, bad = st.load_all()
    assert list(good) == ["alice"]
    assert list(bad) == ["bob"] and "bob.json" in bad["bob"]


@pytest.mark.parametrize("name", ["../etc/shadow", "a/b", ".hidden", "-rf", "", "x" * 300, "tab\tname", "..",
                                  "nul\0"])
def test_path_tricks_in_user_names_are_refused(st, name):
    with pytest.raises(StoreError, match="invalid user name"):
        st.path(name)
    with pytest.raises(StoreError):
        st.add_templates(name, unit(1))


def test_group_readable_file_is_refused_with_the_fix(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(10))]))
    os.chmod(path, 0o644)
    with pytest.raises(StoreError, match=r"chmod 0600"):
        st.load("alice")
    os.chmod(path, 0o600)
    os.chmod(st.folder, 0o777)
    with pytest.raises(StoreError, match=r"chmod 0700"):
        st.load("alice")


def test_symlinked_enrolment_is_refused(st, tmp_path):
    st.save(Enrolment("alice", "m", [store.Template(unit(11))]))
    target = tmp_path / "elsewhere.json"
    os.replace(st.path("alice"), target)
    os.symlink(target, st.path("alice"))
    with pytest.raises(StoreError, match="symbolic link"):
        st.load("alice")


def test_file_of_another_user_is_refused(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(12))]))
    os.chown(path, 65534, 65534)
    with pytest.raises(StoreError, match="owned by uid 65534"):
        st.load("alice")


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs, so a write can really run out of space."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_leaves_the_old_enrolment_intact(tiny_disk):
    st = Store(tiny_disk / "state")
    st.add_templates("alice", unit(13), label="first")
    before = st.path("alice").read_bytes()
    with pytest.raises(StoreError, match="disk full") as err:
        st.add_templates("alice", np.stack([unit(i) for i in range(200)]), label="many")
    assert str(st.path("alice")) in str(err.value) and "previous version is unchanged" in str(err.value)
    assert st.path("alice").read_bytes() == before
    assert sorted(p.name for p in st.folder.iterdir()) == [".lock", "alice.json"]
    assert [t.label for t in st.load("alice").templates] == ["first"]


def test_different_model_is_refused_on_append(st):
    st.add_templates("alice", unit(14), model_id="m1")
    with pytest.raises(StoreError, match="re-enrol: templates from model m1, the current model is m2"):
        st.add_templates("alice", unit(15), model_id="m2")
    assert len(st.load("alice").templates) == 1


def test_remove_template_by_label_or_id_and_clear(st):
    st.add_templates("alice", np.stack([unit(16), unit(17)]), label="a")
    enrolment = st.add_templates("alice", unit(18), label="b")
    first_id = enrolment.templates[0].id
    assert st.remove_template("alice", "b") == 1
    assert st.remove_template("alice", first_id) == 1
    assert [t.label for t in st.load("alice").templates] == ["a"]
    assert st.remove_template("alice", "nothing") == 0
    assert st.remove_template("alice", "a") == 1
    assert st.load("alice") is None and st.users() == []
    st.add_templates("alice", unit(19))
    assert st.clear("alice") is True
    assert st.clear("alice") is False


def test_non_finite_embeddings_are_corrupt(st):
    path = st.save(Enrolment("alice", "m", [store.Template(unit(20))]))
    obj = json.loads(path.read_text())
    bad = np.full(128, np.nan, np.float32)
    obj["templates"][0]["embedding"] = store.Template(bad).to_json()["embedding"]
    store.atomic_write_json(path, obj)
    with pytest.raises(StoreError, match="not finite"):
        st.load("alice")
