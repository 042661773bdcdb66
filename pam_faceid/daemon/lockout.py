"""Lockout and password policy state: failed face attempts, lockouts and the last password use, per user.

Why files and not memory: a lockout that a daemon restart lifts is no
lockout. Why one file per user: a corrupt file then costs only that user's
face auth (refused, so the password is asked), never everyone's.

Layout, root only (files 0600, folders 0700)::

    <state_dir>/lockout/<user>.json
    {"format": "pam_faceid.lockout", "version": 1, "user": "alice",
     "failures": [epoch, ...], "locked_until": epoch | null,
     "password_used": epoch | null, "sha256": "<see store.checksum>"}

Written with store.atomic_write_json (temp file, fsync, rename, fsync of the
folder) under an flock on ``lockout/.lock`` (the daemon and `faceid unlock`
both write); read with store.read_checked_json (format, version, checksum,
owner and mode). The daemon reads the file at every hello, so `faceid unlock`
takes effect at once, without a reload.

What counts as a failure (COUNTED_RESULTS): a session that compared a face
with the user's templates and did not accept it, ``no_match`` however the
session ended (a client that stops after one frame must not get free
guesses), a face refused by the liveness check, and a session ended
``refused`` for a frame no camera sends (protocol.frame_problem: only a
hostile client or the user's own tool sends one, and only root or the user
may ask about the user, so it can lock no one else out). ``no_face``, ``timeout``
and ``error`` do not count: no face was tried against the templates, so they
give an attacker nothing, and counting them would lock out the owner who
runs sudo while looking away, in the dark, or with a broken camera.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from pam_faceid.common.store import StoreError, UserFiles, atomic_write_json, check_secure, read_checked_json

FORMAT = "pam_faceid.lockout"
VERSION = 1
LOCKOUT_DIR = "lockout"
PASSWORD_RESOLUTION = 60.0
"""Seconds within which a second password use is not written again (a local user repeating its own report
costs no disk writes; the rule counts in hours)."""
COUNTED_RESULTS = frozenset({"no_match", "not_live", "refused"})
"""Session results that count as a failed attempt ("not_live": the face matched but liveness refused it;
"refused" after frames were taken: a frame no camera sends; a refusal at hello takes no frames and is not counted)."""


@dataclasses.dataclass
class UserState:
    """One user's failures within the window, lockout end and last password use (epoch seconds)."""

    user: str
    failures: list[float] = dataclasses.field(default_factory=list)
    locked_until: float | None = None
    password_used: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "user": self.user, "failures": self.failures,
                "locked_until": self.locked_until, "password_used": self.password_used}

    def locked(self, now: float) -> bool:
        return self.locked_until is not None and now < self.locked_until


def _epoch(value: Any, where: str, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e11:  # 1e11: year 5138
        raise StoreError(f"{where}: corrupt: {name} {value!r} is not a time")
    return float(value)


def describe(until: float) -> str:
    """A lockout end for people: local time and how long from now."""
    left = max(0, round(until - time.time()))
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(until))} (in {left // 60} min {left % 60} s)"


class LockoutStore(UserFiles):
    """The lockout files under ``<state_dir>/lockout``; safe for the daemon's threads and the CLI at once."""

    def __init__(self, state_dir: str | os.PathLike[str], *, check_permissions: bool = True):
        super().__init__(state_dir, LOCKOUT_DIR, check_permissions=check_permissions)

    # -- reading

    def read(self, user: str) -> UserState:
        """The user's state (empty when nothing is recorded); StoreError when the file is bad or unsafe."""
        path = self.path(user)
        if not self._folder_exists():
            return UserState(user)
        try:
            obj = read_checked_json(path, FORMAT, VERSION, check_permissions=self.check_permissions)
        except FileNotFoundError:
            return UserState(user)
        where = str(path)
        if obj.get("user") != user:
            raise StoreError(f"{where}: holds user {obj.get('user')!r}, not {user!r}")
        failures = obj.get("failures")
        if not isinstance(failures, list):
            raise StoreError(f"{where}: corrupt: 'failures' is not a list")
        return UserState(user, [_epoch(t, where, "a failure") for t in failures],  # type: ignore[misc]
                         _epoch(obj.get("locked_until"), where, "locked_until"),
                         _epoch(obj.get("password_used"), where, "password_used"))

    def entries(self) -> tuple[dict[str, UserState], dict[str, str]]:
        """Every readable user state, and for each bad file the one-line reason (what `faceid status` shows)."""
        good: dict[str, UserState] = {}
        bad: dict[str, str] = {}
        try:
            users = self.users()
        except StoreError as exc:
            return good, {"*": str(exc)}
        for user in users:
            try:
                good[user] = self.read(user)
            except StoreError as exc:
                bad[user] = str(exc)
        return good, bad

    def locked(self, now: float | None = None) -> dict[str, float]:
        """{user: locked until (epoch)} for every user locked out now; unreadable files are left out."""
        now = time.time() if now is None else now
        good, _ = self.entries()
        return {user: state.locked_until for user, state in good.items()
                if state.locked(now) and state.locked_until is not None}

    def refusal(self, user: str, now: float, require_password_after: float = 0.0) -> tuple[str, str] | None:
        """(result, reason) when face auth must be refused for ``user`` now, else None.

        ``require_password_after`` is in hours, 0 = off. An unreadable state
        refuses too: the file may hold a lockout, and the password still works.
        """
        try:
            state = self.read(user)
        except StoreError as exc:
            return "error", f"lockout state unreadable ({exc}); `faceid unlock {user}` rewrites it"
        if state.locked(now):
            assert state.locked_until is not None
            return "locked_out", (f"too many failed face attempts: locked until "
                                  f"{time.strftime('%Y-%m-%dT%H:%M:%S%z', time.localtime(state.locked_until))}")
        if require_password_after > 0:
            used = state.password_used
            if used is None:
                return "password_required", "the password has not been used yet (auth.require_password_after)"
            if now - used > require_password_after * 3600:
                return "password_required", (f"the password was last used {(now - used) / 3600:.1f} h ago, "
                                             f"more than auth.require_password_after ({require_password_after:g} h)")
        return None

    # -- writing

    def _write(self, state: UserState) -> None:
        atomic_write_json(self.path(state.user), state.to_json())

    def _read_for_update(self, user: str) -> UserState:
        """The state to change: a corrupt or unknown-version file starts afresh, an unsafe one is refused."""
        path = self.path(user)
        try:
            return self.read(user)
        except StoreError:
            if self.check_permissions and os.path.lexists(path):
                check_secure(path, is_dir=False)
            return UserState(user)

    def record_failure(self, user: str, now: float, max_failures: int, window: float,
                       duration: float) -> float | None:
        """Count one failed attempt; when it is the ``max_failures``-th within ``window`` s, lock for ``duration`` s.

        Returns the lockout's end when this failure started one, else None.
        A corrupt or unknown-version file is replaced: the failure is what matters now. A failure
        later than ``now`` is kept: concurrent sessions take their clock before waiting for the lock.
        """
        with self.write_lock():
            state = self._read_for_update(user)
            state.failures = [t for t in state.failures if now - window < t] + [now]
            until = None
            if len(state.failures) >= max_failures:
                until = now + duration
                state.locked_until = until
                state.failures = []
            self._write(state)
            return until

    def record_success(self, user: str) -> None:
        """A face match: forget the failures counted so far (written only when there were some)."""
        if not self.read(user).failures:
            return
        with self.write_lock():
            state = self.read(user)
            if state.failures:
                state.failures = []
                self._write(state)

    def record_password(self, user: str, now: float) -> None:
        """The password (not a face) authenticated ``user`` at ``now`` (not rewritten within PASSWORD_RESOLUTION)."""
        with self.write_lock():
            state = self._read_for_update(user)
            if state.password_used is not None and 0 <= now - state.password_used < PASSWORD_RESOLUTION:
                return
            state.password_used = now
            self._write(state)

    def clear(self, user: str) -> bool:
        """Lift the user's lockout and forget its failures; True when there was anything to clear.

        An unreadable (corrupt, unknown version) file is replaced by a clean
        one, which counts as cleared; one with unsafe owner or mode is refused
        by the folder check with the fix in the message.
        """
        path = self.path(user)
        with self.write_lock():
            try:
                state = self.read(user)
            except StoreError:
                if not os.path.lexists(path):
                    raise
                self._read_for_update(user)
                self._write(UserState(user))
                return True
            if not state.failures and state.locked_until is None:
                return False
            self._write(UserState(user, password_used=state.password_used))
            return True
