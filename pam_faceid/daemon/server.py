"""faceidd's serving half: the socket, its connections and signals; session.py decides what each one gets.

Serving is systemd integration (socket activation, sd_notify), one thread per
connection within the session slots, SIGHUP to reload and SIGTERM to stop,
and the admin requests (status, reload); a hello or a password_used report
is handed to session.Sessions.

Security model: any local user may connect (socket 0666); SO_PEERCRED tells
who is asking. Root may ask about any user, other uids only about their own
user name; admin requests (status, reload) and password_used reports are
root only (a user's own process could otherwise claim a password it never
typed and reset auth.require_password_after). Every session is
bounded in time, frames and message size, each frame's JPEG structure is
checked before it is decoded (protocol.frame_problem), and each non-root uid
may hold only a few connections, so a hostile local user cannot stall the
owner's login. The per-connection limits are enforced here, the per-user
and per-frame ones in session.py and engine.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
import time
from typing import Any, Callable

from pam_faceid.common import protocol
from pam_faceid.common.config import ConfigError
from pam_faceid.daemon import journal
from pam_faceid.daemon.engine import load_state
from pam_faceid.daemon.lockout import LockoutStore
from pam_faceid.daemon.session import Sessions, protocol_error, send

log = logging.getLogger("faceidd")

HELLO_TIMEOUT = 2.0
"""Seconds a new connection has to send its first whole message."""
QUEUE_WAIT = 3.0
"""Seconds an accepted connection waits for a free session slot before it is told "busy"."""
PER_UID_CONNECTIONS = 3
"""Connections (waiting or served) one non-root uid may hold at once."""
SHUTDOWN_GRACE = 1.0
"""Seconds SIGTERM waits for sessions in flight before the process exits."""


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
        self.slots = Slots(lambda: self.state.cfg.daemon.max_sessions)
        self.started = time.time()
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self.owned_socket: tuple[str, int, int] | None = None
        self.sessions = Sessions()

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
        max_bytes = state.cfg.daemon.max_message_bytes
        try:
            msg = protocol.recv_message(conn, deadline=time.monotonic() + HELLO_TIMEOUT, max_bytes=max_bytes,
                                        allowed_types=protocol.CLIENT_TYPES)
        except protocol.ConnectionClosed:
            log.debug("pid=%d uid=%d closed without a request", pid, uid)
            return
        except protocol.ProtocolError as exc:
            protocol_error(conn, pid, uid, exc)
            return
        if msg.type in protocol.ADMIN_TYPES:
            self._admin(conn, msg, pid, uid)
        elif msg.type == "password_used":
            self.sessions.password_used(conn, msg, pid, uid, state)
        elif msg.type == "hello":
            self.sessions.authenticate(conn, msg, pid, uid, state)
        else:
            protocol_error(conn, pid, uid, protocol.ProtocolError(
                f"{msg.type} before hello", "unexpected"))

    # -- admin

    def _admin(self, conn: socket.socket, msg: protocol.Message, pid: int, uid: int) -> None:
        if uid != 0:
            log.warning("refused %s from pid=%d uid=%d: admin requests are root only", msg.type, pid, uid)
            send(conn, "error", {"code": "refused", "message": f"{msg.type} is for root only"})
            return
        if msg.type == "status":
            send(conn, "status", self.status())
            log.info("status asked by pid=%d", pid)
            return
        ok, error = self.reload()
        state = self.state
        send(conn, "reload", {"ok": ok, "error": error, "users": sorted(state.users),
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
            "liveness": {"mode": state.cfg.liveness.mode, "loaded": state.liveness_model is not None,
                         "error": state.liveness_error},
            "sessions": {"active": self.slots.active, "served": self.sessions.sessions_served,
                         "max": state.cfg.daemon.max_sessions},
            "loaded": state.loaded,
            "lockouts": LockoutStore(state.state_dir).locked(),
        }


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
