"""One scanner of the ROOT/IDENTITY/IMAGE layout: evaluate, training and the negative bank see the same files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pam_faceid.model import negatives
from pam_faceid.model.dataset import DatasetError, scan_dataset
from pam_faceid.model.dataset import scan_labelled


@pytest.fixture
def crafted(tmp_path: Path) -> Path:
    """Two identities plus a symlinked image, a non-image, a nested folder, a FIFO and a symlink loop."""
    root = tmp_path / "set"
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"jpeg")
    for person, names in {"ann": ["2.jpg", "1.png"], "bob": ["1.jpg"]}.items():
        (root / person).mkdir(parents=True)
        for name in names:
            (root / person / name).write_bytes(b"x")
    os.symlink(outside, root / "bob" / "0.jpg")
    (root / "ann" / "notes.txt").write_text("not a face\n")
    (root / "ann" / "deeper").mkdir()
    (root / "ann" / "deeper" / "9.jpg").write_bytes(b"x")
    os.mkfifo(root / "bob" / "pipe.jpg")
    os.symlink("loop.jpg", root / "bob" / "loop.jpg")
    (root / "stray.jpg").write_bytes(b"x")
    return root


def test_every_caller_sees_the_same_sorted_images(crafted: Path) -> None:
    dataset = scan_dataset(crafted)
    expected = {"ann": [crafted / "ann" / "1.png", crafted / "ann" / "2.jpg"],
                "bob": [crafted / "bob" / "0.jpg", crafted / "bob" / "1.jpg"]}
    assert dataset.images() == expected
    assert dataset.skipped == {"nested folder": 1, "not a regular file": 1, "broken or looping symlink": 1,
                               "file outside an identity folder": 1}
    assert scan_labelled(crafted) == [(p, name) for name, paths in expected.items() for p in paths]
    assert negatives.identity_folders([crafted], 10) == list(expected.values())
    assert negatives.image_files(crafted, 3) == [expected["ann"][0], expected["bob"][0], expected["ann"][1]]


def test_a_tree_without_identities_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="no identity folders"):
        scan_labelled(tmp_path)
    with pytest.raises(negatives.NegativesError, match="no identity folders"):
        negatives.image_files(tmp_path, 5)
