"""Identities of ``../shared/faces/train`` that nothing is ever fit on: the same-camera measuring set.

``train/yaleb`` is the one same-camera collection in ``../shared/faces`` (one
camera, one backdrop, 38 people under 64 lights). Half of its people are held
out from now on: training (model.dataset.scan_labelled), the negative bank
(model.negatives.identity_folders) and any rule fitted for the per-user
operating point skip them, so `faceid evaluate --same-camera` measures people
the project has never fit anything on. The list is fixed (the second half of
the sorted identity names) so every run and every engineer holds out the same
people.

No other same-source groups could be found: ``train/celeba`` folders are
CelebA identity numbers with CelebA image numbers as file names and
``dev/lfw`` files are ``NAME_NNNN.jpg``; neither carries an event, a date or a
photographer, so which people shared a room cannot be read from the data's
own metadata (docs/same-camera.md).
"""

from __future__ import annotations

from pathlib import Path

HELD_OUT: dict[str, frozenset[str]] = {
    "train/yaleb": frozenset(f"yaleB{n}" for n in range(21, 40)),
}
"""Source (the last two folders of a root) -> identities held out. yaleB21..yaleB39: 19 of the 38 people."""

FIT_ON: dict[str, frozenset[str]] = {
    "train/yaleb": frozenset(f"yaleB{n:02d}" for n in range(1, 21) if n != 14),
}
"""The other half (yaleB01..yaleB20; there is no yaleB14): what a same-camera rule may be fit on."""


def source_of(root: Path | str) -> str:
    """"train/yaleb" for ``.../faces/train/yaleb``: the last two folders of the resolved root."""
    parts = Path(root).resolve().parts
    return "/".join(parts[-2:])


def held_out(root: Path | str) -> frozenset[str]:
    """The identity folders of ``root`` that training, the bank and fitted rules must skip (often none)."""
    return HELD_OUT.get(source_of(root), frozenset())
