"""One authentication session, and the other per-user request (password_used), as faceidd runs them.

server.py accepts the connection, checks who is at the other end and
dispatches; this module decides what that peer gets: whether it may ask
about the user (root about anyone, others about themselves), whether the
user is locked out or due for the password, the frames scored against the
user's templates until decision.py has a verdict, the audit line, the
lockout accounting and the snapshot. It answers through send() and
protocol_error(), never through the Daemon.
"""

from __future__ import annotations

import collections
import logging
import pwd
import socket
import threading
import time
from pathlib import Path
from typing import Any

from pam_faceid.common import protocol
from pam_faceid.common.procfs import stat_fields
from pam_faceid.common.store import StoreError, validate_user
from pam_faceid.daemon import journal, snapshots
from pam_faceid.daemon.decision import Decision, Verdict, verdict_fields
from pam_faceid.daemon.engine import FrameRefused, State
from pam_faceid.daemon.lockout import COUNTED_RESULTS, LockoutStore

log = logging.getLogger("faceidd")
audit = logging.getLogger(journal.AUDIT_LOGGER)

SESSION_MARGIN = 3.0
"""Seconds a session may run past auth.timeout (camera start, the last frames) before it is cut."""
MESSAGE_TIMEOUT = 2.0
"""Longest silence between two messages of a session."""
FACE_MATCH_GRACE = 10.0
"""A password_used report this soon after a face match for the same user is that match, not a password."""
PASSWORD_CONFIRM_WINDOW = 120.0
"""Seconds between the auth stack's password_used report and the account stack's that confirms it."""
STAGES = ("auth", "account")


def pam_application(pid: int) -> tuple[int, int] | None:
    """(pid, start time) of the parent of ``pid``: the PAM application that ran the helper (sudo, su, a greeter).

    Both reports of one login come from helpers of the same application
    process; its start time tells it from a later process with the same pid.
    """
    try:
        ppid = int(stat_fields(pid)[1])
        started = int(stat_fields(ppid)[19])
    except (ValueError, IndexError):
        return None
    return ppid, started


def send(conn: socket.socket, msg_type: str, fields: dict[str, Any]) -> bool:
    try:
        protocol.send_message(conn, msg_type, fields, deadline=time.monotonic() + MESSAGE_TIMEOUT)
        return True
    except protocol.ProtocolError:
        return False


def protocol_error(conn: socket.socket, pid: int, uid: int, exc: protocol.ProtocolError) -> None:
    log.warning("protocol error from pid=%d uid=%d: %s: %s", pid, uid, exc.code, exc)
    send(conn, "error", {"code": exc.code, "message": str(exc)[:200]})


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def seat_problem(rhost: str) -> str | None:
    """Why a face must not answer this hello (a network peer), or None.

    The helper checks this and auth.services before it asks; this is the
    daemon's own guard for the part a hello states plainly.
    """
    if rhost:
        return f"rhost={rhost}: a network peer, not the person at the camera"
    return None


class Sessions:
    """Runs sessions and password reports; owns what they share across connections (face matches, the count)."""

    def __init__(self) -> None:
        self.sessions_served = 0
        self.counter_lock = threading.Lock()
        self.face_matches: dict[str, float] = {}
        """user -> time.monotonic() of the last face match granted (for password_used)."""
        self.typed: dict[tuple[str, tuple[int, int]], float] = {}
        """(user, PAM application) -> time.monotonic() of its auth-stack password report, awaiting the account's."""

    def _authorise(self, user: Any, pid: int, uid: int) -> Verdict | None:
        """None when ``uid`` may ask about ``user``; otherwise the refusal."""
        if uid == 0:
            return None
        own = user_name(uid)
        if own is not None and own == user:
            return None
        audit.warning("refused hello for user=%r from pid=%d uid=%d (%s): may only ask about itself",
                      user, pid, uid, own or "no passwd entry")
        return Verdict("refused", reason="a non-root client may only ask about its own user")

    def before_session(self, user: str, state: State) -> Verdict | None:
        """Refuse an enrolled user's session before frames are taken: locked out, or the password is due.

        The lockout file is read at every hello (no cache), so `faceid unlock`
        and a restart both see the same state. Users not enrolled get their
        not_enrolled answer unchanged.
        """
        if user not in state.users:
            return None
        found = LockoutStore(state.state_dir).refusal(user, time.time(), state.cfg.auth.require_password_after)
        if found is None:
            return None
        return Verdict(found[0], reason=found[1])

    def after_session(self, user: str, verdict: Verdict, state: State) -> None:
        """Count a failed attempt (lockout.COUNTED_RESULTS) or clear the count on a match; never fails the session."""
        store = LockoutStore(state.state_dir)
        try:
            if verdict.result == "match":
                with self.counter_lock:
                    self.face_matches[user] = time.monotonic()
                    for key in [key for key in self.typed if key[0] == user]:  # an earlier try's wrong password
                        del self.typed[key]
                store.record_success(user)
            elif verdict.result in COUNTED_RESULTS:
                lock = state.cfg.lockout
                until = store.record_failure(user, time.time(), lock.max_failures, lock.window,
                                             lock.duration)
                if until is not None:
                    audit.warning("lockout user=%s: %d failed face attempts within %d s: face auth refused until %s",
                                  user, lock.max_failures, lock.window,
                                  time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(until)))
        except StoreError as exc:
            log.error("lockout state of user=%s not updated: %s", user, exc)

    def password_use(self, user: str, stage: str, app: tuple[int, int] | None,
                      state: State) -> tuple[bool, str | None]:
        """Record that the password authenticated ``user``: once the account stack confirms what the auth stack said.

        The auth stack's line after the password module also runs after a
        wrong password (a substack or a ``required`` rule goes on to the end),
        so it only notes that ``app`` may have taken a password. The account
        stack runs only once authentication succeeded; its report from the
        same application records the use. A face match in between (or just
        before) cancels the note: that login was the face's.
        """
        now = time.monotonic()
        if app is None:
            return False, "cannot tell which PAM application reports"
        with self.counter_lock:
            matched = self.face_matches.get(user)
            for key in [key for key, when in self.typed.items() if now - when > PASSWORD_CONFIRM_WINDOW]:
                del self.typed[key]
            if matched is not None and now - matched < FACE_MATCH_GRACE:
                self.typed.pop((user, app), None)
                return False, f"a face match was granted {now - matched:.1f} s ago: not a password use"
            if stage == "auth":
                self.typed[(user, app)] = now
                return False, "noted: recorded when the account stack confirms the login"
            if self.typed.pop((user, app), None) is None:
                return False, "no password was taken by this PAM application (cached credentials, or a face)"
        try:
            LockoutStore(state.state_dir).record_password(user, time.time())
        except StoreError as exc:
            log.error("password use of user=%s not recorded: %s", user, exc)
            return False, "state not writable: see the daemon log"
        return True, None

    def _valid_fields(self, conn: socket.socket, pid: int, uid: int, kind: str, user: Any,
                      texts: dict[str, Any]) -> bool:
        """Check a request's user name and text fields; answer a protocol error and return False when bad.

        The text fields go into the audit line: a newline there would let any
        local user forge audit lines, so they must be short printable text.
        """
        names = "/".join(texts)
        if not isinstance(user, str) or not all(isinstance(v, str) for v in texts.values()):
            problem = f"{kind} needs string user/{names}"
        elif not all(v.isprintable() and len(v) <= 256 for v in texts.values()):
            problem = f"{kind} {names} must be printable text of at most 256 characters"
        else:
            try:
                validate_user(user)
                return True
            except StoreError as exc:
                problem = str(exc)
        protocol_error(conn, pid, uid, protocol.ProtocolError(problem))
        return False

    def password_used(self, conn: socket.socket, msg: protocol.Message, pid: int, uid: int, state: State) -> None:
        user, service, stage = msg.get("user"), msg.get("service", ""), msg.get("stage", "auth")
        if not self._valid_fields(conn, pid, uid, msg.type, user, {"service": service}):
            return
        if stage not in STAGES:
            protocol_error(conn, pid, uid, protocol.ProtocolError(f"password_used stage must be one of {STAGES}"))
            return
        if uid != 0:
            audit.warning("refused password_used for user=%r from pid=%d uid=%d (%s): password use is reported by "
                          "root only", user, pid, uid, user_name(uid) or "no passwd entry")
            send(conn, "error", {"code": "refused", "message": "password_used is accepted from root only"})
            return
        recorded, reason = self.password_use(user, stage, pam_application(pid), state)
        audit.info("password_used user=%s service=%s stage=%s pid=%d uid=%d recorded=%s%s", user, service or "-",
                   stage, pid, uid, "yes" if recorded else "no", f" reason={reason!r}" if reason else "")
        send(conn, "password_used", {"recorded": recorded, "reason": reason})

    def authenticate(self, conn: socket.socket, hello: protocol.Message, pid: int, uid: int, state: State) -> None:
        t0 = time.monotonic()
        user, service = hello.get("user"), hello.get("service", "")
        tty, rhost = hello.get("tty", ""), hello.get("rhost", "")
        if not self._valid_fields(conn, pid, uid, hello.type, user, {"service": service, "tty": tty, "rhost": rhost}):
            return
        kept: collections.deque[bytes] = collections.deque(maxlen=snapshots.SNAPSHOT_FRAMES)
        verdict, frames_taken = self._run_session(conn, user, pid, uid, state, t0,
                                                  kept if state.cfg.snapshots.enabled else None,
                                                  seat_problem(rhost))
        if frames_taken:
            self.after_session(user, verdict, state)
        with self.counter_lock:
            self.sessions_served += 1
        ms = (time.monotonic() - t0) * 1000
        audit.info("auth user=%s service=%s tty=%s rhost=%s pid=%d uid=%d verdict=%s score=%s frames=%d ms=%.0f "
                   "liveness=%s%s", user, service or "-", tty or "-", rhost or "-", pid, uid, verdict.result,
                   "-" if verdict.score is None else f"{verdict.score:.3f}", verdict.frames, ms,
                   verdict.liveness or "-", f" reason={verdict.reason!r}" if verdict.reason else "")
        send(conn, "verdict", verdict_fields(verdict, uid))
        if frames_taken and kept:
            info = {"user": user, "service": service, "tty": tty, "rhost": rhost, "pid": pid, "uid": uid,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ms": round(ms), **verdict.fields(),
                    "verdict": verdict.result, "liveness": verdict.liveness}
            try:
                snapshots.save(Path(state.state_dir), list(kept), info, state.cfg.snapshots.keep)
            except (OSError, snapshots.SnapshotError) as exc:
                log.error("snapshot for user=%s not saved: %s", user, exc)

    def _run_session(self, conn: socket.socket, user: str, pid: int, uid: int, state: State,
                     t0: float, kept: collections.deque[bytes] | None = None,
                     seat: str | None = None) -> tuple[Verdict, bool]:
        """The verdict of one session and whether frames were taken; ``kept`` collects the frames for a snapshot."""
        refusal = (Verdict("refused", reason=seat) if seat else None) or self._authorise(user, pid, uid) \
            or self.before_session(user, state)
        if refusal is not None:
            return refusal, False
        entry = state.users.get(user)
        if entry is None:
            if user in state.skipped:
                why = state.skipped[user]
                return Verdict("error", reason=why if why.startswith("re-enrol") else
                               "enrolment unreadable: see the daemon log"), False
            return Verdict("not_enrolled"), False
        if entry.engine is None or entry.threshold is None:
            return Verdict("error", reason="model not loaded"), False
        if state.cfg.liveness.mode != "off" and state.liveness_model is None:
            return Verdict("error", reason="anti-spoofing model not loaded: see the daemon log"), False
        engine = entry.engine
        cfg = state.cfg
        timeout = cfg.auth.timeout
        max_frames = cfg.daemon.max_frames_per_session
        dark_threshold = cfg.camera.dark_threshold
        decision = Decision(entry.threshold, cfg.auth.min_matching_frames, timeout, max_frames,
                            liveness=cfg.liveness.mode, liveness_model=state.liveness_model)
        if not send(conn, "ready", {"timeout": timeout, "max_frames": max_frames,
                                    "min_matching_frames": cfg.auth.min_matching_frames}):
            return decision.finish(time.monotonic(), "client went away"), False
        session_deadline = t0 + timeout + SESSION_MARGIN
        max_bytes = cfg.daemon.max_message_bytes
        while True:
            now = time.monotonic()
            try:
                msg = protocol.recv_message(conn, deadline=min(session_deadline, now + MESSAGE_TIMEOUT),
                                            max_bytes=max_bytes, allowed_types=protocol.CLIENT_TYPES)
            except protocol.ProtocolTimeout:
                return decision.finish(time.monotonic(), "client stopped sending"), decision.frames > 0
            except protocol.ConnectionClosed:
                return decision.finish(time.monotonic(), "client went away"), decision.frames > 0
            except protocol.ProtocolError as exc:
                protocol_error(conn, pid, uid, exc)
                return decision.finish(time.monotonic(), f"protocol error: {exc.code}"), decision.frames > 0
            if msg.type == "end":
                return decision.finish(time.monotonic(), "client ended"), decision.frames > 0
            if msg.type != "frame":
                protocol_error(conn, pid, uid, protocol.ProtocolError(
                    f"{msg.type} during a session", "unexpected"))
                return decision.finish(time.monotonic(), "protocol error"), decision.frames > 0
            if kept is not None:
                kept.append(msg.payload)
            try:
                score, reason, frame, face = engine.examine(msg.payload, entry.templates, entry.head, dark_threshold)
                verdict = decision.observe(score, reason, time.monotonic(), frame, face)
            except FrameRefused as refused:
                return Verdict("refused", decision.best, decision.frames, f"frame refused: {refused}",
                               matches=decision.matches), True
            except Exception as exc:  # a model or liveness failure ends this session with "error", never the daemon
                log.exception("scoring a frame for user=%s failed", user)
                return Verdict("error", decision.best, decision.frames, f"internal error: {type(exc).__name__}",
                               matches=decision.matches), True
            if verdict is not None:
                return verdict, True
            if not send(conn, "progress", decision.progress()):
                return decision.finish(time.monotonic(), "client went away"), True
