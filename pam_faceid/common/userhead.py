"""Per-user heads (faceid retrain): a small linear map on top of the base embedding, loaded cheaply at run time.

Why a head and not a per-user copy of the network: the user's templates are
stored as BASE embeddings, so a head trains on them without any image, can
be replaced or reverted at any time without re-enrolling, and costs the
daemon one 128x128 matrix product per frame. The user's vector is
``normalise(W @ base + b)``, applied alike to the frame and to the templates.

Layout, root only (files 0600, folders 0700)::

    <state_dir>/models/<user>/head.npz       W [128,128], b [128], meta (JSON text)
    <state_dir>/models/<user>/head.json      the same meta, for people and `faceid status`
    <state_dir>/models/<user>/head.prev.npz  the head before the last change (`faceid retrain --revert`)

``head.npz`` is the only file the daemon reads; it carries the base model id
and the user's threshold inside it, so it is never out of step with a JSON
file written a moment apart. A head made for another base model is ignored
(logged): a new base model must never lock a user into a head that maps
its vectors to nonsense. This module imports numpy and the store only (no
torch), so the daemon can use it.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import math
import os
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pam_faceid.common import atomic
from pam_faceid.common.store import StoreError, atomic_write_bytes, check_secure, validate_user

log = logging.getLogger(__name__)

MODELS_DIR = "models"
HEAD_FILE = "head.npz"
HEAD_META = "head.json"
PREV_FILE = "head.prev.npz"
PREV_META = "head.prev.json"
FORMAT = "pam_faceid.userhead"
VERSION = 1
MAX_HEAD_BYTES = 4 * 1024 * 1024


class HeadError(Exception):
    """A head file is unreadable, malformed or unsafe (one line naming the file)."""


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass
class UserHead:
    """``normalise(W @ v + b)`` for one user, with the threshold chosen for it and where it came from."""

    weight: np.ndarray
    bias: np.ndarray
    threshold: float
    model_id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, dim: int = 128, threshold: float = float("nan"), model_id: str = "") -> "UserHead":
        """The head that changes nothing (where training starts, and what 'no head' means)."""
        return cls(np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32), threshold, model_id)

    @property
    def dim(self) -> int:
        return int(self.bias.size)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Base unit vectors ([D] or [N,D]) -> the user's unit vectors, same shape."""
        x = np.asarray(vectors, np.float32)
        return _normalise(x @ self.weight.T + self.bias)

    def to_bytes(self) -> bytes:
        meta = dict(self.meta, format=FORMAT, version=VERSION, base_model_id=self.model_id,
                    threshold=float(self.threshold))
        buf = io.BytesIO()
        np.savez(buf, weight=self.weight.astype("<f4"), bias=self.bias.astype("<f4"),
                 meta=np.array(json.dumps(meta, sort_keys=True)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "UserHead":
        """Parse and check a head file; HeadError (one line) for anything but a well-formed head."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                weight = np.asarray(npz["weight"], np.float32)
                bias = np.asarray(npz["bias"], np.float32)
                meta = json.loads(str(npz["meta"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise HeadError(f"{where}: corrupt head file ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})") \
                from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise HeadError(f"{where}: not a {FORMAT} file")
        if meta.get("version") != VERSION:
            raise HeadError(f"{where}: head version {meta.get('version')!r} is not supported (this reads {VERSION})")
        dim = bias.size
        if bias.ndim != 1 or weight.shape != (dim, dim) or dim == 0:
            raise HeadError(f"{where}: weight {weight.shape} and bias {bias.shape} do not form a square head")
        if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
            raise HeadError(f"{where}: head holds values that are not finite")
        threshold = meta.get("threshold")
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or abs(threshold) > 1.01:
            raise HeadError(f"{where}: threshold {threshold!r} is not a similarity between -1 and 1")
        return cls(weight, bias, float(threshold), str(meta.get("base_model_id") or ""), meta)


def head_dir(state_dir: str | os.PathLike[str], user: str) -> Path:
    return Path(state_dir) / MODELS_DIR / validate_user(user)


def _read(path: Path, check_permissions: bool) -> UserHead | None:
    """The head at ``path``, None when absent; HeadError when corrupt or replaceable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeadError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise HeadError(f"{path}: not a regular file; remove it")
        if check_permissions:
            try:
                check_secure(path.parent.parent, is_dir=True)
                check_secure(path.parent, is_dir=True)
                check_secure(path, is_dir=False, st=st)
            except StoreError as exc:
                raise HeadError(str(exc)) from None
        if st.st_size > MAX_HEAD_BYTES:
            raise HeadError(f"{path}: {st.st_size} bytes, more than {MAX_HEAD_BYTES}: not a head we wrote")
        data = fh.read(MAX_HEAD_BYTES + 1)
    return UserHead.from_bytes(data, str(path))


def read_head(state_dir: str | os.PathLike[str], user: str, *, previous: bool = False,
              check_permissions: bool = True) -> UserHead | None:
    """The stored head (or the previous one) whatever its base model; None when there is none."""
    return _read(head_dir(state_dir, user) / (PREV_FILE if previous else HEAD_FILE), check_permissions)


def load_head(state_dir: str | os.PathLike[str], user: str, model_id: str, *,
              check_permissions: bool = True) -> UserHead | None:
    """The user's head for base model ``model_id``, or None: what the daemon calls for each user.

    None when there is no head, and also (logged) when it was made for another
    base model or is corrupt or unsafe: the user is then scored with the base
    model and its threshold, as before any retraining, never locked out.
    """
    try:
        head = read_head(state_dir, user, check_permissions=check_permissions)
    except (HeadError, StoreError) as exc:
        log.warning("per-user head of %s ignored: %s", user, exc)
        return None
    if head is None:
        return None
    if not model_id or head.model_id != model_id:
        log.warning("per-user head of %s ignored: made for base model %r, the daemon runs %r (run faceid retrain %s)",
                    user, head.model_id, model_id, user)
        return None
    return head


def _ensure_dir(state_dir: str | os.PathLike[str], user: str) -> Path:
    folder = head_dir(state_dir, user)
    for path in (Path(state_dir), folder.parent, folder):
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise HeadError(f"{path}: cannot create: {exc.strerror}") from None
    for path in (folder.parent, folder):
        os.chmod(path, 0o700)
    return folder


def _write(folder: Path, name: str, meta_name: str, head: UserHead | None) -> None:
    """Write (or, for None, remove) one head file and its JSON copy; the .npz is written last-wins atomically."""
    if head is None:
        for stale in (name, meta_name):
            try:
                (folder / stale).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise HeadError(f"{folder / stale}: cannot remove: {exc.strerror}") from None
        atomic.fsync_dir(folder)
        return
    data = head.to_bytes()
    meta = UserHead.from_bytes(data, name).meta
    try:
        atomic_write_bytes(folder / name, data)
        atomic_write_bytes(folder / meta_name, json.dumps(meta, sort_keys=True, indent=1).encode() + b"\n")
    except StoreError as exc:
        raise HeadError(str(exc)) from None


def save_head(state_dir: str | os.PathLike[str], user: str, head: UserHead) -> Path:
    """Make ``head`` the user's head; the one it replaces becomes head.prev.npz (for --revert)."""
    folder = _ensure_dir(state_dir, user)
    current = read_head(state_dir, user)
    head.meta.setdefault("saved", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    _write(folder, PREV_FILE, PREV_META, current)
    _write(folder, HEAD_FILE, HEAD_META, head)
    return folder / HEAD_FILE


def revert_head(state_dir: str | os.PathLike[str], user: str) -> tuple[UserHead | None, UserHead | None]:
    """Swap the head and the previous one ("no head" counts as one), so a second revert undoes the first.

    Returns (now in use, now previous). Each file is replaced atomically; a
    crash between the two writes leaves the new head in place and the
    previous one equal to it, never a half-written file.
    """
    current = read_head(state_dir, user)
    previous = read_head(state_dir, user, previous=True)
    if current is None and previous is None:
        raise HeadError(f"{user} has no per-user head to revert")
    folder = _ensure_dir(state_dir, user)
    _write(folder, HEAD_FILE, HEAD_META, previous)
    _write(folder, PREV_FILE, PREV_META, current)
    return previous, current
