"""Enrolment storage: one checksummed JSON file per user, written so a crash never loses or half-writes one.

Layout: ``<state_dir>/users/<user>.json``, files 0600 and folders 0700, owned
by the user running the daemon (root). A file is::

    {"format": "pam_faceid.enrolment", "version": 1, "user": "alice",
     "model_id": "...", "templates": [{"id", "label", "created", "embedding"}],
     "sha256": "<hex sha256 of the canonical JSON of all other keys>"}

``embedding`` is base64 of little-endian float32 values (a unit vector).
The canonical JSON is ``json.dumps(obj, sort_keys=True, separators=(",", ":"))``.

Writes go to a temporary file in the same folder, are fsynced, renamed over
the old file and the folder is fsynced, so a reader sees the old file or the
new one, never a mix. ``atomic_write_json`` / ``read_checked_json`` are the
generic pieces, for other state files (lockout) that need the same care.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pam_faceid.common import atomic

FORMAT = "pam_faceid.enrolment"
VERSION = 1
USERS_DIR = "users"
SUFFIX = ".json"
MAX_FILE_BYTES = 16 * 1024 * 1024
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,255}$")


class StoreError(Exception):
    """A stored file is unreadable, corrupt, of an unknown version, or has unsafe ownership/mode (one line)."""


def validate_user(user: str) -> str:
    """Return ``user`` if it is a safe user name (no '/', no leading '.' or '-'), else raise StoreError."""
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        raise StoreError(f"invalid user name {user!r}: use letters, digits, '_', '.', '@', '-' "
                         f"(not first) and at most 256 characters")
    return user


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def checksum(obj: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``obj`` without its own "sha256" key."""
    return hashlib.sha256(canonical_json({k: v for k, v in obj.items() if k != "sha256"})).hexdigest()


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (atomic.write_bytes), or raise StoreError.

    On any failure (disk full, read-only folder) the old file is untouched,
    the temporary file is removed, and StoreError says what happened.
    """
    try:
        atomic.write_bytes(path, data, mode)
    except OSError as exc:
        what = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
        raise StoreError(f"{path}: cannot write: {what}; the previous version is unchanged") from None


def atomic_write_json(path: Path, obj: dict[str, Any], mode: int = 0o600) -> None:
    """Write ``obj`` plus its "sha256" checksum atomically (see atomic_write_bytes)."""
    body = {k: v for k, v in obj.items() if k != "sha256"}
    body["sha256"] = checksum(body)
    atomic_write_bytes(path, json.dumps(body, sort_keys=True, indent=1).encode() + b"\n", mode)


def check_secure(path: Path, *, is_dir: bool, st: os.stat_result | None = None) -> None:
    """Refuse a file or folder not owned by us or writable (folders) / readable (files) by others.

    Like sshd's StrictModes: biometric templates must not be readable or
    replaceable by other users. The message says how to fix it.
    """
    st = st or os.lstat(path)
    kind = "folder" if is_dir else "file"
    if is_dir and not stat.S_ISDIR(st.st_mode) or not is_dir and not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: not a regular {kind} (a link or special file); remove it")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise StoreError(f"{path}: owned by uid {st.st_uid}, not {euid}; fix: chown {euid} {path}")
    bad = 0o022 if is_dir else 0o077
    if st.st_mode & bad:
        want = "0700" if is_dir else "0600"
        raise StoreError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users in; fix: chmod {want} {path}")


def read_checked_json(path: Path, fmt: str, version: int, *, check_permissions: bool = True) -> dict[str, Any]:
    """Read a file written by atomic_write_json and verify format, version and checksum.

    Raises FileNotFoundError when absent and StoreError (one line naming the
    file and the problem) for anything else.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path}: is a symbolic link; remove it") from None
        raise StoreError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if check_permissions:
            check_secure(path, is_dir=False, st=st)
        if st.st_size > MAX_FILE_BYTES:
            raise StoreError(f"{path}: {st.st_size} bytes, more than {MAX_FILE_BYTES}: not a file we wrote")
        raw = fh.read(MAX_FILE_BYTES + 1)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"{path}: corrupt: not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: corrupt: not a JSON object")
    if obj.get("format") != fmt:
        raise StoreError(f"{path}: not a {fmt} file (format {obj.get('format')!r})")
    if obj.get("version") != version:
        raise StoreError(f"{path}: format version {obj.get('version')!r} is not supported (this version reads "
                         f"{version}); upgrade pam_faceid or re-enrol")
    if obj.get("sha256") != checksum(obj):
        raise StoreError(f"{path}: corrupt: sha256 checksum does not match the content")
    return obj


@dataclasses.dataclass
class Template:
    """One enrolled face embedding (a unit vector) with a human label and its creation time."""

    embedding: np.ndarray
    label: str = ""
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def to_json(self) -> dict[str, Any]:
        vec = np.ascontiguousarray(self.embedding, dtype="<f4").ravel()
        return {"id": self.id, "label": self.label, "created": self.created,
                "embedding": base64.b64encode(vec.tobytes()).decode("ascii")}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> "Template":
        if not isinstance(obj, dict):
            raise StoreError(f"{where}: corrupt: a template is not an object")
        try:
            raw = base64.b64decode(obj["embedding"], validate=True)
            vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            tid, label, created = str(obj["id"]), str(obj.get("label", "")), str(obj.get("created", ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where}: corrupt template: {exc}") from None
        if vec.size == 0 or len(raw) % 4 or not np.all(np.isfinite(vec)):
            raise StoreError(f"{where}: corrupt template {tid}: embedding is empty or not finite")
        return cls(embedding=vec, label=label, id=tid, created=created)


@dataclasses.dataclass
class Enrolment:
    """All templates of one user, and the id of the model that computed them (others' vectors don't compare)."""

    user: str
    model_id: str = ""
    templates: list[Template] = dataclasses.field(default_factory=list)
    operating_point: dict[str, Any] | None = None
    """The user's threshold and its provenance (vision.operating.OperatingPoint.to_json), None = global threshold."""

    def matrix(self) -> np.ndarray:
        """[N, D] float32 of the templates' embeddings, for one matrix product per frame."""
        if not self.templates:
            return np.zeros((0, 0), np.float32)
        return np.stack([np.asarray(t.embedding, np.float32) for t in self.templates])

    def add(self, embedding: np.ndarray, label: str = "") -> Template:
        template = Template(embedding=np.asarray(embedding, np.float32).ravel(), label=label)
        self.templates.append(template)
        return template

    def stale_for(self, model_id: str) -> str | None:
        """Why model ``model_id`` cannot score these templates (None when it can): two models' vectors do not compare."""
        if self.templates and self.model_id and model_id and self.model_id != model_id:
            return (f"re-enrol: templates from model {self.model_id}, the current model is {model_id} "
                    f"(sudo faceid clear {self.user} && sudo faceid enroll {self.user})")
        return None

    def to_json(self) -> dict[str, Any]:
        out = {"format": FORMAT, "version": VERSION, "user": self.user, "model_id": self.model_id,
               "templates": [t.to_json() for t in self.templates]}
        if self.operating_point is not None:
            out["operating_point"] = self.operating_point
        return out


class UserFiles:
    """One checksummed JSON file per user under ``<state_dir>/<subdir>``: enrolments (Store) and
    lockout state (lockout.LockoutStore) alike.

    Readers need no lock (renames are atomic); read-modify-write sequences
    hold :meth:`write_lock`, an flock on ``<subdir>/.lock``, so two writers
    (the daemon's threads, admin commands) cannot lose each other's change.
    """

    def __init__(self, state_dir: str | os.PathLike[str], subdir: str, *, check_permissions: bool = True):
        self.state_dir = Path(state_dir)
        self.folder = self.state_dir / subdir
        self.check_permissions = check_permissions

    def path(self, user: str) -> Path:
        return self.folder / f"{validate_user(user)}{SUFFIX}"

    def _ensure_dirs(self) -> None:
        for folder in (self.state_dir, self.folder):
            try:
                folder.mkdir(mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{folder}: cannot create: {exc.strerror}") from None
            if self.check_permissions:
                check_secure(folder, is_dir=True)

    def _folder_exists(self) -> bool:
        """False when nothing was ever written; StoreError when the folders are unreadable or unsafe."""
        try:
            os.lstat(self.folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"{self.folder}: cannot read: {exc.strerror}") from None
        if self.check_permissions:
            check_secure(self.state_dir, is_dir=True)
            check_secure(self.folder, is_dir=True)
        return True

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the write lock for one read-modify-write (an flock: threads and processes alike)."""
        self._ensure_dirs()
        lock = self.folder / ".lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # a read-only or full state folder: one line, not a traceback
            raise StoreError(f"{lock}: cannot open the write lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def users(self) -> list[str]:
        """Names of users with a file (valid or not), sorted."""
        if not self._folder_exists():
            return []
        names = []
        for entry in self.folder.iterdir():
            name = entry.name
            if name.endswith(SUFFIX) and not name.startswith("."):
                user = name[: -len(SUFFIX)]
                if _USER_RE.fullmatch(user):
                    names.append(user)
        return sorted(names)


class Store(UserFiles):
    """The enrolments under ``<state_dir>/users``; safe for the daemon and the CLI to use at once."""

    def __init__(self, state_dir: str | os.PathLike[str], *, check_permissions: bool = True):
        super().__init__(state_dir, USERS_DIR, check_permissions=check_permissions)

    def load(self, user: str) -> Enrolment | None:
        """The user's enrolment, None when not enrolled; StoreError when the file is bad."""
        path = self.path(user)
        if not self._folder_exists():
            return None
        try:
            obj = read_checked_json(path, FORMAT, VERSION, check_permissions=self.check_permissions)
        except FileNotFoundError:
            return None
        if obj.get("user") != user:
            raise StoreError(f"{path}: holds user {obj.get('user')!r}, not {user!r}")
        templates = obj.get("templates")
        if not isinstance(templates, list):
            raise StoreError(f"{path}: corrupt: 'templates' is not a list")
        point = obj.get("operating_point")
        enrolment = Enrolment(user=user, model_id=str(obj.get("model_id") or ""),
                              templates=[Template.from_json(t, str(path)) for t in templates],
                              operating_point=point if isinstance(point, dict) else None)
        dims = {t.embedding.size for t in enrolment.templates}
        if len(dims) > 1:
            raise StoreError(f"{path}: corrupt: templates have different sizes {sorted(dims)}")
        return enrolment

    def save(self, enrolment: Enrolment) -> Path:
        """Write the user's enrolment atomically (0600); an enrolment with no templates removes the file."""
        path = self.path(enrolment.user)
        self._ensure_dirs()
        if not enrolment.templates:
            self.clear(enrolment.user)
            return path
        atomic_write_json(path, enrolment.to_json())
        return path

    def load_all(self) -> tuple[dict[str, Enrolment], dict[str, str]]:
        """Every loadable enrolment, and for each bad one the one-line reason it was skipped."""
        good: dict[str, Enrolment] = {}
        bad: dict[str, str] = {}
        for user in self.users():
            try:
                enrolment = self.load(user)
            except StoreError as exc:
                bad[user] = str(exc)
                continue
            if enrolment is not None and enrolment.templates:
                good[user] = enrolment
        return good, bad

    def add_templates(self, user: str, embeddings: np.ndarray, label: str = "", model_id: str = "",
                      operating: Callable[[np.ndarray], dict[str, Any]] | None = None) -> Enrolment:
        """Append embeddings to the user's enrolment (created if absent) under the write lock.

        A different ``model_id`` than the stored one is refused: vectors from two
        models do not compare. Use clear() first to re-enrol with a new model.
        ``operating`` maps the whole new template matrix to the user's operating
        point, stored in the same atomic write, so templates and threshold never
        disagree on disk.
        """
        with self.write_lock():
            enrolment = self.load(user) or Enrolment(user=user, model_id=model_id)
            stale = enrolment.stale_for(model_id)
            if stale:
                raise StoreError(f"{self.path(user)}: {stale}")
            enrolment.model_id = enrolment.model_id or model_id
            for vec in np.atleast_2d(np.asarray(embeddings, np.float32)):
                enrolment.add(vec, label)
            if operating is not None:
                enrolment.operating_point = operating(enrolment.matrix())
            self.save(enrolment)
            return enrolment

    def set_operating_point(self, user: str, operating: Callable[[np.ndarray], dict[str, Any]]) -> Enrolment | None:
        """Refit the user's operating point from the stored templates (faceid calibrate); None when not enrolled."""
        with self.write_lock():
            enrolment = self.load(user)
            if enrolment is None or not enrolment.templates:
                return None
            enrolment.operating_point = operating(enrolment.matrix())
            self.save(enrolment)
            return enrolment

    def remove_template(self, user: str, label_or_id: str) -> int:
        """Remove the templates whose id or label equals ``label_or_id``; returns how many went."""
        with self.write_lock():
            enrolment = self.load(user)
            if enrolment is None:
                return 0
            keep = [t for t in enrolment.templates if label_or_id not in (t.id, t.label)]
            removed = len(enrolment.templates) - len(keep)
            if removed:
                enrolment.templates = keep
                self.save(enrolment)
            return removed

    def clear(self, user: str) -> bool:
        """Delete the user's enrolment; True when there was one."""
        path = self.path(user)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"{path}: cannot remove: {exc.strerror}") from None
        atomic.fsync_dir(self.folder)
        return True
