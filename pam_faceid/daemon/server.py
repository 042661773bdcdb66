"""faceidd: the root daemon that holds the model and the enrolments and answers "is this the user?".

Why a daemon: loading the model and every enrolment once keeps each PAM call
under a second, and keeps biometric templates readable by root only while a
screen locker running as the user can still ask. The PAM helper streams
frames over the Unix socket (protocol.py); the daemon decides.

Security model: any local user may connect (socket 0666); SO_PEERCRED tells
who is asking. Root may ask about any user, other uids only about their own
user name; admin requests (status, reload) and password_used reports are
root only (a user's own process could otherwise claim a password it never
typed and reset auth.require_password_after). Every session is
bounded in time, frames and message size, each frame's JPEG structure is
checked before it is decoded (protocol.frame_problem), and each non-root uid
may hold only a few connections, so a hostile local user cannot stall the
owner's login.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import pwd
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pam_faceid.daemon import journal
from pam_faceid.common import protocol
from pam_faceid.daemon import snapshots
from pam_faceid.common.config import Config, ConfigError, load_config
from pam_faceid.daemon.lockout import COUNTED_RESULTS, LockoutStore
from pam_faceid.common.store import Enrolment, Store, StoreError, validate_user
from pam_faceid.vision.userhead import UserHead, load_head

log = logging.getLogger("faceidd")
audit = logging.getLogger(journal.AUDIT_LOGGER)

SESSION_MARGIN = 3.0
"""Seconds a session may run past auth.timeout (camera start, the last frames) before it is cut."""
HELLO_TIMEOUT = 2.0
"""Seconds a new connection has to send its first whole message."""
MESSAGE_TIMEOUT = 2.0
"""Longest silence between two messages of a session."""
QUEUE_WAIT = 3.0
"""Seconds an accepted connection waits for a free session slot before it is told "busy"."""
PER_UID_CONNECTIONS = 3
"""Connections (waiting or served) one non-root uid may hold at once."""
SHUTDOWN_GRACE = 1.0
"""Seconds SIGTERM waits for sessions in flight before the process exits."""
FACE_MATCH_GRACE = 10.0
"""A password_used report this soon after a face match for the same user is that match, not a password."""


# ---------------------------------------------------------------- decision (pure)

@dataclasses.dataclass(frozen=True)
class Verdict:
    """The one answer of a session (see protocol.RESULTS)."""

    result: str
    score: float | None = None
    frames: int = 0
    reason: str | None = None
    liveness: str | None = dataclasses.field(default=None, compare=False)
    """For the audit log only, never sent: "live", "off", "not_live:<reason>", or None (no liveness check)."""
    matches: int = 0
    """Frames whose score reached the threshold, so a client can say how many of min_matching_frames it saw."""

    def fields(self) -> dict[str, Any]:
        score = None if self.score is None else round(float(self.score), 4)
        return {"result": self.result, "score": score, "frames": self.frames, "matches": self.matches,
                "reason": self.reason}


class Decision:
    """Turns per-frame scores into a session verdict; pure (the caller passes the clock).

    A frame matches when its best similarity to the user's templates is at
    least ``threshold``. The session is a match once ``min_matching_frames``
    frames have matched within ``timeout`` seconds of ``started``. It ends
    without a match when the time is up, ``max_frames`` frames were seen or
    the client has no more frames: ``no_face`` when no frame had a face,
    ``no_match`` when faces were seen, ``timeout`` when no frame came at all.
    The clock starts at ``started``, or at the first frame when None (the
    camera's start-up does not eat the user's time).

    With ``liveness`` (a liveness.mode: off, basic, strict) a match also needs
    the liveness check to call the face live; the check sees only the frames
    whose face matched (with their frame and Face), so a live stranger moving
    before a photo of the user is shown lends the photo no motion. A session
    whose face matched but was never found live ends ``not_live``, with the
    liveness reason. Without ``liveness`` (None) there is no such check.
    """

    def __init__(self, threshold: float, min_matching_frames: int, timeout: float, max_frames: int,
                 started: float | None = None, liveness: str | None = None):
        self.threshold = float(threshold)
        self.min_matching_frames = int(min_matching_frames)
        self.timeout = float(timeout)
        self.max_frames = int(max_frames)
        self.started = started
        self.frames = 0
        self.faces = 0
        self.matches = 0
        self.best: float | None = None
        self.last_reason: str | None = None
        self.verdict: Verdict | None = None
        if liveness is not None:
            from pam_faceid.vision.liveness import MODES

            if liveness not in MODES:
                raise ValueError(f"liveness mode {liveness!r}: choose one of {', '.join(MODES)}")
        self.liveness_mode = liveness
        self.liveness: Any = None  # a liveness.LivenessCheck from the first matching frame on

    def expired(self, now: float) -> bool:
        return self.started is not None and now - self.started > self.timeout

    def live(self) -> Any:
        """The liveness.LivenessResult so far, or None when this decision has no liveness check."""
        if self.liveness_mode is None:
            return None
        if self.liveness is None:
            from pam_faceid.vision.liveness import LivenessCheck

            return LivenessCheck(self.liveness_mode).verdict()
        return self.liveness.verdict()

    def liveness_word(self) -> str | None:
        """The liveness result as the audit log shows it."""
        result = self.live()
        if result is None:
            return None
        if result.live:
            return "off" if result.reason == "off" else "live"
        return f"not_live:{result.reason}"

    def _see_live(self, frame: Any, face: Any) -> None:
        if self.liveness_mode is None or frame is None or face is None:
            return
        if self.liveness is None:
            from pam_faceid.vision.liveness import LivenessCheck, looks_infrared

            self.liveness = LivenessCheck(self.liveness_mode, ir=looks_infrared(frame))
        self.liveness.add(frame, face)

    def observe(self, score: float | None, reason: str | None, now: float, frame: Any = None,
                face: Any = None) -> Verdict | None:
        """Count one frame (score None = no usable face, with ``reason``); the verdict once decided.

        ``frame`` (BGR array) and ``face`` (faces.Face) feed the liveness check; without them a
        frame gives liveness no evidence.
        """
        if self.verdict is not None:
            return self.verdict
        if self.started is None:
            self.started = now
        if self.expired(now):
            return self.finish(now, "time is up")
        self.frames += 1
        self.last_reason = reason
        if score is not None:
            self.faces += 1
            self.best = score if self.best is None else max(self.best, score)
            if score >= self.threshold:
                self.matches += 1
                self._see_live(frame, face)
        live = self.live() if self.matches >= self.min_matching_frames else None
        if self.matches >= self.min_matching_frames and (live is None or live.live):
            self.verdict = Verdict("match", self.best, self.frames, None, self.liveness_word(), self.matches)
        elif self.frames >= self.max_frames:
            return self.finish(now, f"{self.max_frames} frames seen")
        elif self.expired(now):
            return self.finish(now, "time is up")
        return self.verdict

    def finish(self, now: float, why: str | None = None) -> Verdict:
        """End the session without further frames; the verdict from what was seen."""
        if self.verdict is not None:
            return self.verdict
        if self.frames == 0:
            result = "timeout"
        elif self.faces == 0:
            result = "no_face"
            why = self.last_reason or why
        elif self.matches >= self.min_matching_frames:  # only liveness can have held the match back
            result = "not_live"
            live = self.live()
            why = f"liveness {live.reason}: {live.message}"
        else:
            result = "no_match"
        self.verdict = Verdict(result, self.best, self.frames, why, self.liveness_word(), self.matches)
        return self.verdict

    def progress(self) -> dict[str, Any]:
        return {"frames": self.frames, "faces": self.faces, "matches": self.matches, "reason": self.last_reason}


def verdict_fields(verdict: Verdict, uid: int) -> dict[str, Any]:
    """The verdict as sent to a peer of ``uid``: no similarity score for a non-root one.

    A process running as the user could otherwise climb the score with a
    printed face, frame by frame, against that user's own templates; the
    root helper and the admin CLI keep it (the audit log always has it).
    """
    fields = verdict.fields()
    if uid != 0:
        fields["score"] = None
    return fields


# ---------------------------------------------------------------- model and state

DETECT_MAX_SIDE = 640
"""Frames are scaled down to this long side before detection: the helper sends no more (camera.MAX_SEND_SIDE),
and a client sending bigger frames must not buy more of the one serialised detector (three connections
streaming 2048 px frames held an owner's login for 7 s)."""


class FrameRefused(Exception):
    """A frame no camera sends (progressive, arithmetic-coded, marker soup...): the session ends ``refused``."""


class Engine:
    """Frame bytes -> best similarity to a user's templates, through FacePipeline and Embedder.

    One lock serialises the detector (OpenCV's FaceDetectorYN keeps per-call
    state); on two cores nothing is lost by it.
    """

    def __init__(self, model_path: str, backend: str, pipeline: Any = None, lock: threading.Lock | None = None):
        from pam_faceid.vision.embedder import Embedder, model_id_of
        from pam_faceid.vision.faces import FacePipeline

        self.key = (model_path, backend, _model_stamp(model_path))
        self.embedder = Embedder(model_path or None, backend)
        self.pipeline = pipeline if pipeline is not None else FacePipeline(spec=self.embedder.input)
        self.model_id = model_id_of(self.embedder)
        self.threshold = float(self.embedder.threshold)
        self.lock = lock or threading.Lock()
        # One embedding at load: warms the runtime up and tells the vector size enrolments must have.
        size = self.embedder.input.size
        self.dim = int(self.embedder.embed_one(np.zeros((size, size, 3), np.uint8)).size)

    def examine(self, jpeg: bytes, templates: np.ndarray, head: UserHead | None = None,
                dark_threshold: float = 0.0) -> tuple[float | None, str | None, Any, Any]:
        """(best cosine similarity, None) or (None, why there is no usable face), plus the decoded frame and
        the faces.Face scored (None when there is none).

        With a per-user ``head`` (faceid retrain) the frame's vector is mapped
        by it, as the templates were when they were loaded. A frame darker
        than ``dark_threshold`` percent is ``too_dark`` (the helper sends an
        image folder's JPEG files unchecked). Raises FrameRefused, before any
        decoding, for a frame no camera sends (protocol.frame_problem).
        """
        import cv2

        from pam_faceid.common.images import brightness_percent
        from pam_faceid.vision.faces import FaceRefused, align

        problem = protocol.frame_problem(jpeg)
        if problem is not None:
            raise FrameRefused(problem)
        size = protocol.jpeg_size(jpeg) or (0, 0)  # never None here: frame_problem read its SOF
        reduced = cv2.IMREAD_REDUCED_COLOR_2 if max(size) >= 2 * DETECT_MAX_SIDE else cv2.IMREAD_COLOR
        frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), reduced)
        if frame is None:
            return None, "undecodable", None, None
        scale = DETECT_MAX_SIDE / max(frame.shape[:2])
        if scale < 1:
            frame = cv2.resize(frame, (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                               interpolation=cv2.INTER_AREA)
        if dark_threshold > 0 and brightness_percent(frame) < dark_threshold:
            return None, "too_dark", frame, None
        with self.lock:
            try:
                face = self.pipeline.find(frame)
                crop = align(frame, face, self.embedder.input)
            except FaceRefused as refused:
                return None, refused.reason or "no_face", frame, None
            vector = self.embedder.embed_one(crop)
        if head is not None:
            vector = head.apply(vector)
        return float(np.max(templates @ vector)), None, frame, face


def _model_stamp(model_path: str) -> tuple[float, ...]:
    """Modification times of the model files, so a reload notices a replaced model."""
    from pam_faceid.vision.embedder import META_FILE, ONNX_FILE, default_model_dir

    folder = Path(model_path) if model_path else default_model_dir()
    stamps = []
    for name in (ONNX_FILE, META_FILE):
        try:
            stamps.append(os.stat(folder / name).st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)


@dataclasses.dataclass
class UserEntry:
    """One enrolled user as sessions need it: templates (mapped by the head, if any), engine, threshold, head."""

    templates: np.ndarray
    engine: Engine | None
    threshold: float | None
    head: UserHead | None = None


@dataclasses.dataclass
class State:
    """Everything one session needs, swapped whole on reload so sessions in flight keep theirs."""

    cfg: Config
    socket_path: str
    state_dir: str
    engine: Engine | None
    engine_error: str | None
    threshold: float | None
    users: dict[str, UserEntry]
    skipped: dict[str, str]
    loaded: float

    def engines(self) -> list[Engine]:
        return [self.engine] if self.engine is not None else []

    def summary(self) -> str:
        model = self.engine.model_id if self.engine else f"none ({self.engine_error})"
        own = sum(entry.head is not None for entry in self.users.values())
        return (f"config={self.cfg.path} state_dir={self.state_dir} users={len(self.users)} "
                f"(own head: {own}) skipped={len(self.skipped)} model={model or 'unnamed'} "
                f"threshold={self.threshold}")


def load_state(config_path: str | None, overrides: dict[str, str], previous: State | None = None) -> State:
    """Read config, model and enrolments. ConfigError propagates; a bad model or user file is recorded, not fatal."""
    cfg = load_config(config_path)
    socket_path = overrides.get("socket") or cfg.daemon.socket
    state_dir = overrides.get("state_dir") or cfg.daemon.state_dir
    cache = {e.key: e for e in previous.engines()} if previous is not None else {}
    backend = cfg.model.backend
    engine: Engine | None = None
    engine_error: str | None = None
    try:
        engine = cache.get((cfg.model.path, backend, _model_stamp(cfg.model.path)))
        if engine is None:
            engine = Engine(cfg.model.path, backend)
    except Exception as exc:  # a missing/corrupt model must not stop the daemon: sessions answer "error"
        engine_error = _one_line(exc)
        log.error("model not loaded: %s", engine_error)

    def threshold_of(model: Engine | None) -> float | None:
        if cfg.auth.threshold != "auto":
            return float(cfg.auth.threshold)
        return model.threshold if model else None

    users: dict[str, UserEntry] = {}
    skipped: dict[str, str] = {}
    try:
        good, bad = Store(state_dir).load_all()
    except StoreError as exc:
        good, bad = {}, {"*": str(exc)}
        log.error("enrolments not loaded: %s", exc)
    for user, reason in bad.items():
        log.error("skipping user %s: %s", user, reason)
        skipped[user] = reason
    for user, enrolment in good.items():
        problem = _enrolment_problem(enrolment, engine)
        if problem:
            log.error("skipping user %s: %s", user, problem)
            skipped[user] = problem
            continue
        templates, threshold = enrolment.matrix(), threshold_of(engine)
        head = load_head(state_dir, user, engine.model_id) if engine is not None else None
        if head is not None and head.dim == templates.shape[1]:
            templates = head.apply(templates)
            if cfg.auth.threshold == "auto":
                threshold = head.threshold
        else:
            head = None
        users[user] = UserEntry(templates, engine, threshold, head)
    return State(cfg, socket_path, state_dir, engine, engine_error, threshold_of(engine), users, skipped,
                 time.time())


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _enrolment_problem(enrolment: Enrolment, engine: Engine | None) -> str | None:
    if engine is None:
        return None
    stale = enrolment.stale_for(engine.model_id)
    if stale:
        return stale
    dim = enrolment.matrix().shape[1]
    if dim != engine.dim:
        return (f"re-enrol: templates have {dim} values, model {engine.model_id} gives {engine.dim} "
                f"(sudo faceid clear {enrolment.user} && sudo faceid enroll {enrolment.user})")
    return None


# ---------------------------------------------------------------- systemd integration

SD_NOTIFY_TIMEOUT = 0.5
"""Seconds one notification may wait for room in the manager's queue; a full queue must not hang reload or stop."""


def sd_notify(state: str) -> bool:
    """Send ``state`` (e.g. "READY=1") to $NOTIFY_SOCKET; False when not run under a notify-aware manager."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SD_NOTIFY_TIMEOUT)
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False


def socket_from_systemd() -> socket.socket | None:
    """The listening socket systemd passed (LISTEN_FDS/LISTEN_PID, fd 3), or None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError(f"systemd passed a socket of family {sock.family!r} type {sock.type!r}; want AF_UNIX stream")
    os.set_inheritable(3, False)
    return sock


def bind_socket(path: str) -> socket.socket:
    """Listen on ``path`` (mode 0666; folder created 0755), replacing a stale socket but never a live daemon."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        os.makedirs(folder, mode=0o755, exist_ok=True)
        os.chmod(folder, 0o755)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket; remove it or set daemon.socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
        else:
            raise OSError(f"another faceidd is already listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(64)
    return sock


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# ---------------------------------------------------------------- the daemon

class Slots:
    """Counts connections: a global cap on sessions served at once and a per-uid cap for non-root peers."""

    def __init__(self, limit: Callable[[], int]):
        self.limit = limit
        self.cond = threading.Condition()
        self.active = 0
        self.held: dict[int, int] = {}

    def admit(self, uid: int) -> bool:
        """Register a new connection of ``uid``; False when that uid already holds too many."""
        with self.cond:
            count = self.held.get(uid, 0)
            if uid != 0 and count >= PER_UID_CONNECTIONS:
                return False
            if sum(self.held.values()) >= 4 * max(1, self.limit()):
                return False
            self.held[uid] = count + 1
            return True

    def leave(self, uid: int) -> None:
        with self.cond:
            self.held[uid] -= 1
            if not self.held[uid]:
                del self.held[uid]

    def acquire(self, uid: int, timeout: float) -> bool:
        """Wait up to ``timeout`` for a session slot; non-root peers leave the last one to root."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                limit = max(1, self.limit())
                cap = limit if uid == 0 or limit == 1 else limit - 1
                if self.active < cap:
                    self.active += 1
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)

    def release(self) -> None:
        with self.cond:
            self.active -= 1
            self.cond.notify_all()


class Daemon:
    """Serves the socket: accept loop in the main thread, one thread per connection."""

    def __init__(self, config_path: str | None, overrides: dict[str, str]):
        self.config_path = config_path
        self.overrides = overrides
        self.state = load_state(config_path, overrides)
        self.reload_lock = threading.Lock()
        self.slots = Slots(lambda: int(self.state.cfg.daemon.max_sessions))
        self.started = time.time()
        self.sessions_served = 0
        self.counter_lock = threading.Lock()
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.owned_socket: tuple[str, int, int] | None = None
        self.face_matches: dict[str, float] = {}
        """user -> time.monotonic() of the last face match granted (for password_used)."""

    # -- lifecycle

    def open_listener(self) -> None:
        activated = socket_from_systemd()
        if activated is not None:
            self.listener = activated
            log.info("listening on the socket passed by systemd (%s)", activated.getsockname() or "unnamed")
            return
        path = self.state.socket_path
        self.listener = bind_socket(path)
        st = os.stat(path)
        self.owned_socket = (path, st.st_dev, st.st_ino)
        log.info("listening on %s", path)

    def remove_socket(self) -> None:
        """Unlink the socket file we created, unless someone replaced it since."""
        if self.owned_socket is None:
            return
        path, dev, ino = self.owned_socket
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
        except OSError:
            pass
        self.owned_socket = None

    def reload(self) -> tuple[bool, str | None]:
        """Re-read config, model (if changed) and enrolments; keep the old state when the config is bad."""
        with self.reload_lock:
            sd_notify("RELOADING=1")
            try:
                new = load_state(self.config_path, self.overrides, self.state)
            except ConfigError as exc:
                log.error("reload failed, keeping the previous config: %s", exc)
                sd_notify("READY=1\nSTATUS=reload failed: config error")
                return False, str(exc)
            if new.socket_path != self.state.socket_path and self.owned_socket is not None:
                log.warning("daemon.socket changed to %s: takes effect at restart", new.socket_path)
            _set_log_level(new.cfg.logging.level)
            self.state = new
            log.info("reloaded: %s", new.summary())
            sd_notify(f"READY=1\nSTATUS=serving {len(new.users)} users")
            return True, None

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status."""
        assert self.listener is not None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        pending: list[int] = []

        def on_signal(signum: int, _frame: Any) -> None:
            pending.append(signum)

        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.listener.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "accept")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        sd_notify(f"READY=1\nSTATUS=serving {len(self.state.users)} users\nMAINPID={os.getpid()}")
        log.info("ready: %s", self.state.summary())
        try:
            while not self.stopping.is_set():
                for key, _ in selector.select(timeout=5.0):
                    if key.data == "wake":
                        try:
                            while wake_r.recv(64):
                                pass
                        except BlockingIOError:
                            pass
                    else:
                        self._accept()
                while pending:
                    signum = pending.pop(0)
                    if signum == signal.SIGHUP:
                        log.info("SIGHUP: reloading")
                        threading.Thread(target=self.reload, name="reload", daemon=True).start()
                    else:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        self.stopping.set()
        finally:
            sd_notify("STOPPING=1")
            selector.close()
            self.listener.close()
            self.remove_socket()
            signal.set_wakeup_fd(-1)
            wake_r.close()
            wake_w.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while self.slots.held and time.monotonic() < deadline:
            time.sleep(0.05)
        log.info("stopped")
        return 0

    # -- connections

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("accept failed: %s", exc)
            time.sleep(0.05)
            return
        try:
            pid, uid, _gid = peer_credentials(conn)
        except OSError as exc:
            log.error("no peer credentials: %s", exc)
            conn.close()
            return
        if not self.slots.admit(uid):
            log.warning("refused connection from pid=%d uid=%d: too many connections", pid, uid)
            self._reject(conn, "busy", "too many connections from this user; try again")
            return
        thread = threading.Thread(target=self._connection, args=(conn, pid, uid), name=f"conn-{pid}", daemon=True)
        thread.start()

    @staticmethod
    def _reject(conn: socket.socket, code: str, message: str) -> None:
        """Best-effort error reply that never blocks, then close."""
        try:
            conn.setblocking(False)
            conn.send(protocol.encode("error", {"code": code, "message": message}))
        except OSError:
            pass
        conn.close()

    def _send(self, conn: socket.socket, msg_type: str, fields: dict[str, Any]) -> bool:
        try:
            protocol.send_message(conn, msg_type, fields, deadline=time.monotonic() + MESSAGE_TIMEOUT)
            return True
        except protocol.ProtocolError:
            return False

    def _connection(self, conn: socket.socket, pid: int, uid: int) -> None:
        try:
            if not self.slots.acquire(uid, QUEUE_WAIT):
                log.warning("busy: dropped connection from pid=%d uid=%d after %.0f s in the queue",
                            pid, uid, QUEUE_WAIT)
                self._reject(conn, "busy", "all sessions are in use; try again")
                return
            try:
                self._dispatch(conn, pid, uid)
            finally:
                self.slots.release()
        except Exception:
            log.exception("internal error serving pid=%d uid=%d", pid, uid)
            self._reject(conn, "internal", "internal error")
        finally:
            conn.close()
            self.slots.leave(uid)

    def _dispatch(self, conn: socket.socket, pid: int, uid: int) -> None:
        state = self.state
        max_bytes = int(state.cfg.daemon.max_message_bytes)
        try:
            msg = protocol.recv_message(conn, deadline=time.monotonic() + HELLO_TIMEOUT, max_bytes=max_bytes,
                                        allowed_types=protocol.CLIENT_TYPES)
        except protocol.ConnectionClosed:
            log.debug("pid=%d uid=%d closed without a request", pid, uid)
            return
        except protocol.ProtocolError as exc:
            self._protocol_error(conn, pid, uid, exc)
            return
        if msg.type in protocol.ADMIN_TYPES:
            self._admin(conn, msg, pid, uid)
        elif msg.type == "password_used":
            self._password_used(conn, msg, pid, uid, state)
        elif msg.type == "hello":
            self._session(conn, msg, pid, uid, state)
        else:
            self._protocol_error(conn, pid, uid, protocol.ProtocolError(
                f"{msg.type} before hello", "unexpected"))

    def _protocol_error(self, conn: socket.socket, pid: int, uid: int, exc: protocol.ProtocolError) -> None:
        log.warning("protocol error from pid=%d uid=%d: %s: %s", pid, uid, exc.code, exc)
        self._send(conn, "error", {"code": exc.code, "message": str(exc)[:200]})

    # -- admin

    def _admin(self, conn: socket.socket, msg: protocol.Message, pid: int, uid: int) -> None:
        if uid != 0:
            log.warning("refused %s from pid=%d uid=%d: admin requests are root only", msg.type, pid, uid)
            self._send(conn, "error", {"code": "refused", "message": f"{msg.type} is for root only"})
            return
        if msg.type == "status":
            self._send(conn, "status", self.status())
            log.info("status asked by pid=%d", pid)
            return
        ok, error = self.reload()
        state = self.state
        self._send(conn, "reload", {"ok": ok, "error": error, "users": sorted(state.users),
                                    "skipped": state.skipped})
        log.info("reload asked by pid=%d: %s", pid, "ok" if ok else "failed")

    def status(self) -> dict[str, Any]:
        """What `faceid status` shows: who is enrolled, who was skipped and why, the model, the load."""
        state = self.state
        engine = state.engine
        return {
            "pid": os.getpid(),
            "version": _package_version(),
            "uptime": round(time.time() - self.started, 1),
            "config": state.cfg.path,
            "socket": state.socket_path,
            "state_dir": state.state_dir,
            "users": sorted(state.users),
            "user_models": sorted(user for user, entry in state.users.items() if entry.head is not None),
            "skipped": state.skipped,
            "model": {"loaded": engine is not None, "id": engine.model_id if engine else None,
                      "error": state.engine_error, "threshold": state.threshold},
            "sessions": {"active": self.slots.active, "served": self.sessions_served,
                         "max": int(state.cfg.daemon.max_sessions)},
            "loaded": state.loaded,
            "lockouts": LockoutStore(state.state_dir).locked(),
        }

    # -- authentication sessions

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
        found = LockoutStore(state.state_dir).refusal(user, time.time(), float(state.cfg.auth.require_password_after))
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
                store.record_success(user)
            elif verdict.result in COUNTED_RESULTS:
                lock = state.cfg.lockout
                until = store.record_failure(user, time.time(), int(lock.max_failures), float(lock.window),
                                             float(lock.duration))
                if until is not None:
                    audit.warning("lockout user=%s: %d failed face attempts within %d s: face auth refused until %s",
                                  user, lock.max_failures, lock.window,
                                  time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(until)))
        except StoreError as exc:
            log.error("lockout state of user=%s not updated: %s", user, exc)

    def password_use(self, user: str, state: State) -> tuple[bool, str | None]:
        """Record that the password authenticated ``user`` now, unless a face match was granted just before."""
        with self.counter_lock:
            matched = self.face_matches.get(user)
        if matched is not None and time.monotonic() - matched < FACE_MATCH_GRACE:
            return False, f"a face match was granted {time.monotonic() - matched:.1f} s ago: not a password use"
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
        self._protocol_error(conn, pid, uid, protocol.ProtocolError(problem))
        return False

    def _password_used(self, conn: socket.socket, msg: protocol.Message, pid: int, uid: int, state: State) -> None:
        user, service = msg.get("user"), msg.get("service", "")
        if not self._valid_fields(conn, pid, uid, msg.type, user, {"service": service}):
            return
        if uid != 0:
            audit.warning("refused password_used for user=%r from pid=%d uid=%d (%s): password use is reported by "
                          "root only", user, pid, uid, user_name(uid) or "no passwd entry")
            self._send(conn, "error", {"code": "refused", "message": "password_used is accepted from root only"})
            return
        recorded, reason = self.password_use(user, state)
        audit.info("password_used user=%s service=%s pid=%d uid=%d recorded=%s%s", user, service or "-", pid, uid,
                   "yes" if recorded else "no", f" reason={reason!r}" if reason else "")
        self._send(conn, "password_used", {"recorded": recorded, "reason": reason})

    def _session(self, conn: socket.socket, hello: protocol.Message, pid: int, uid: int, state: State) -> None:
        t0 = time.monotonic()
        user, service = hello.get("user"), hello.get("service", "")
        tty, rhost = hello.get("tty", ""), hello.get("rhost", "")
        if not self._valid_fields(conn, pid, uid, hello.type, user, {"service": service, "tty": tty, "rhost": rhost}):
            return
        kept: collections.deque[bytes] = collections.deque(maxlen=snapshots.SNAPSHOT_FRAMES)
        verdict, frames_taken = self._run_session(conn, user, pid, uid, state, t0,
                                                  kept if state.cfg.snapshots.enabled else None)
        if frames_taken:
            self.after_session(user, verdict, state)
        with self.counter_lock:
            self.sessions_served += 1
        ms = (time.monotonic() - t0) * 1000
        audit.info("auth user=%s service=%s tty=%s rhost=%s pid=%d uid=%d verdict=%s score=%s frames=%d ms=%.0f "
                   "liveness=%s%s", user, service or "-", tty or "-", rhost or "-", pid, uid, verdict.result,
                   "-" if verdict.score is None else f"{verdict.score:.3f}", verdict.frames, ms,
                   verdict.liveness or "-", f" reason={verdict.reason!r}" if verdict.reason else "")
        self._send(conn, "verdict", verdict_fields(verdict, uid))
        if frames_taken and kept:
            info = {"user": user, "service": service, "tty": tty, "rhost": rhost, "pid": pid, "uid": uid,
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ms": round(ms), **verdict.fields(),
                    "verdict": verdict.result, "liveness": verdict.liveness}
            try:
                snapshots.save(Path(state.state_dir), list(kept), info, int(state.cfg.snapshots.keep))
            except (OSError, snapshots.SnapshotError) as exc:
                log.error("snapshot for user=%s not saved: %s", user, exc)

    def _run_session(self, conn: socket.socket, user: str, pid: int, uid: int, state: State,
                     t0: float, kept: collections.deque[bytes] | None = None) -> tuple[Verdict, bool]:
        """The verdict of one session and whether frames were taken; ``kept`` collects the frames for a snapshot."""
        refusal = self._authorise(user, pid, uid) or self.before_session(user, state)
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
        engine = entry.engine
        cfg = state.cfg
        timeout = float(cfg.auth.timeout)
        max_frames = int(cfg.daemon.max_frames_per_session)
        dark_threshold = float(cfg.camera.dark_threshold)
        decision = Decision(entry.threshold, cfg.auth.min_matching_frames, timeout, max_frames,
                            liveness=cfg.liveness.mode)
        if not self._send(conn, "ready", {"timeout": timeout, "max_frames": max_frames,
                                         "min_matching_frames": int(cfg.auth.min_matching_frames)}):
            return decision.finish(time.monotonic(), "client went away"), False
        session_deadline = t0 + timeout + SESSION_MARGIN
        max_bytes = int(cfg.daemon.max_message_bytes)
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
                self._protocol_error(conn, pid, uid, exc)
                return decision.finish(time.monotonic(), f"protocol error: {exc.code}"), decision.frames > 0
            if msg.type == "end":
                return decision.finish(time.monotonic(), "client ended"), decision.frames > 0
            if msg.type != "frame":
                self._protocol_error(conn, pid, uid, protocol.ProtocolError(
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
            if not self._send(conn, "progress", decision.progress()):
                return decision.finish(time.monotonic(), "client went away"), True


def _package_version() -> str:
    from pam_faceid import __version__

    return __version__


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, str(level).upper(), logging.INFO))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceidd",
        description="The pam_faceid daemon: holds the face model and enrolments, answers the PAM helper.",
        epilog="Normally started by systemd (faceidd.socket / faceidd.service). SIGHUP reloads config and "
               "enrolments; SIGTERM stops.",
    )
    parser.add_argument("--config", help="config file (default: $FACEID_CONFIG or /etc/pam_faceid/config.yaml)")
    parser.add_argument("--socket", help="listen on this socket path instead of daemon.socket")
    parser.add_argument("--state-dir", help="read enrolments from this folder instead of daemon.state_dir")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Before cv2 is first imported: OpenCV never decodes an image larger than a frame may be.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(protocol.MAX_FRAME_SIDE ** 2))
    journal.setup("faceidd")
    overrides = {k: v for k, v in (("socket", args.socket), ("state_dir", args.state_dir)) if v}
    try:
        daemon = Daemon(args.config, overrides)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    _set_log_level(daemon.state.cfg.logging.level)
    try:
        daemon.open_listener()
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    return daemon.serve()


if __name__ == "__main__":
    sys.exit(main())
