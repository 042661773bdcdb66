"""The faceidd wire protocol: the one contract between the PAM helper, the admin CLI and the daemon.

Standard library only, so the helper stays light and a client in another
language can be written from this docstring alone.

Wire format
===========

The daemon listens on a Unix stream socket (``daemon.socket``, default
``/run/pam_faceid/faceidd.sock``, mode 0666: any local user may connect;
the daemon decides what each peer may ask by its ``SO_PEERCRED`` uid).
Both directions carry the same framing::

    message  = length header_length header payload
    length        4 bytes, unsigned big-endian: byte count of everything after
                  these 4 bytes (header_length + header + payload), at least 4
    header_length 4 bytes, unsigned big-endian: byte count of header
    header        UTF-8 JSON object, at most 65536 bytes, with at least
                  "v": 1 (protocol version, an integer) and
                  "type": one of the message types below (a string)
    payload       the remaining length - 4 - header_length bytes; empty except
                  for "frame" (a JPEG-encoded image)

``length`` is checked against the receiver's limit (the daemon's
``daemon.max_message_bytes``, default 2 MiB; 1 MiB for clients) *before* any of
the body is read; a larger message is answered with an error and the
connection is closed. A peer that stops in the middle of a message, or says
nothing, is dropped when its deadline passes.

Messages (client -> daemon)
---------------------------
``hello``   {"user", "service", "tty", "rhost"}: start an authentication session
            for ``user`` (strings; tty and rhost may be ""). Root may ask about
            any user; any other uid only about its own user name.
``frame``   {} + payload: one camera frame, JPEG-encoded (at most 2048x2048; the helper sends at most 640 px).
``end``     {}: the client has no more frames (camera ended, its time is up);
            the daemon answers with the verdict at once.
``password_used`` {"user", "service"}: the PAM stack of ``service`` has just
            authenticated ``user`` by something other than the face (the
            password). The helper sends it from an ``auth optional pam_exec.so
            ... faceid-helper --password-used`` line placed after the password
            module, so ``auth.require_password_after`` knows when the password
            was last used. Root may send it for any user, any other uid only for
            its own user name. The daemon ignores it when it granted that user
            a face match in the last few seconds (a stack where face success
            also reaches that line). Answer: ``password_used``.
``status``  {}: root only. Answer: ``status``.
``reload``  {}: root only: re-read the config and the enrolments. Answer: ``reload``.

Messages (daemon -> client)
---------------------------
``ready``    {"timeout", "max_frames"}: answer to hello; send frames now.
``progress`` {"frames", "faces", "matches", "reason"}: answer to a frame that
             did not decide the session; ``reason`` is why the frame had no
             usable face ("no_face", "face_too_small", ...) or null.
``verdict``  {"result", "score", "frames", "reason"}: the session's single
             answer, after which the daemon closes the connection. ``result`` is
             one of RESULTS: match | no_match | no_face | timeout | not_live |
             locked_out | password_required | not_enrolled | refused | error.
             ``not_live``: the face matched but the liveness check
             (liveness.mode) did not find a live face: a photo or screen, or
             a person who held perfectly still; ``reason`` names the cue.
             ``locked_out``: too many failed attempts (lockout.*);
             ``password_required``: the password was not used within
             auth.require_password_after hours. ``score`` is the
             best similarity seen (null if no face, and always null for a
             non-root client: only root sees scores), ``frames`` the number of
             frames processed, ``reason`` a short text or null.
``password_used`` {"recorded", "reason"}: whether the password use was
             recorded (a bool) and, when not, why.
``status``   {"pid", "uptime", "users", "skipped", "sessions", "model", "lockouts", ...}.
``reload``   {"ok", "users", "skipped", "error"}.
``error``    {"code", "message"}: the request was not understood or not
             allowed; ``code`` is one of bad_message, too_large, bad_version,
            unknown_type, unexpected, refused, busy, timeout, internal. The
            daemon closes the connection.

An authentication session is: hello -> ready (or a verdict such as
not_enrolled/refused/locked_out/password_required) -> frame -> progress ... -> verdict. Frames
are sent lock-step: one frame, then wait for its answer; so the daemon always
works on a fresh frame and a slow daemon slows the camera rather than
piling up stale frames. Admin requests (status, reload) and password_used are one request and
one answer per connection.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any, NamedTuple

VERSION = 1
MAX_HEADER_BYTES = 65536
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
CLIENT_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_FRAME_SIDE = 2048
_LEN = struct.Struct(">I")

CLIENT_TYPES = frozenset({"hello", "frame", "end", "status", "reload", "password_used"})
SERVER_TYPES = frozenset({"ready", "progress", "verdict", "status", "reload", "password_used", "error"})
ADMIN_TYPES = frozenset({"status", "reload"})
RESULTS = ("match", "no_match", "no_face", "timeout", "not_live", "locked_out", "password_required", "not_enrolled",
           "refused", "error")
ERROR_CODES = ("bad_message", "too_large", "bad_version", "unknown_type", "unexpected", "refused", "busy",
               "timeout", "internal")


class ProtocolError(Exception):
    """The peer sent something that is not a valid message; ``code`` is one of ERROR_CODES."""

    def __init__(self, message: str, code: str = "bad_message"):
        super().__init__(message)
        self.code = code


class ProtocolTimeout(ProtocolError):
    """The peer did not send (or accept) a whole message before the deadline."""

    def __init__(self, message: str = "deadline passed"):
        super().__init__(message, "timeout")


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (cleanly between messages, or mid-message)."""

    def __init__(self, message: str = "connection closed"):
        super().__init__(message, "bad_message")


class DaemonError(Exception):
    """A client-side failure to talk to the daemon: not running, not answering, or it said error."""


class Message(NamedTuple):
    """One protocol message: its type, its header fields (without v/type) and the binary payload."""

    type: str
    fields: dict[str, Any]
    payload: bytes = b""

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def encode(msg_type: str, fields: dict[str, Any] | None = None, payload: bytes = b"") -> bytes:
    """Serialise one message to its wire bytes (see the module docstring)."""
    header = {"v": VERSION, "type": msg_type}
    if fields:
        header.update({k: v for k, v in fields.items() if k not in ("v", "type")})
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(f"{msg_type} header is {len(head)} bytes, more than {MAX_HEADER_BYTES}")
    return _LEN.pack(4 + len(head) + len(payload)) + _LEN.pack(len(head)) + head + payload


def decode_body(body: bytes, allowed_types: frozenset[str] | None = None) -> Message:
    """Parse a message body (everything after the length prefix) into a Message.

    Raises ProtocolError naming what is wrong: short body, bad header length,
    header not a JSON object, wrong version, unknown type.
    """
    if len(body) < 4:
        raise ProtocolError(f"message body of {len(body)} bytes is shorter than its 4-byte header length")
    (head_len,) = _LEN.unpack_from(body)
    if head_len > MAX_HEADER_BYTES or head_len > len(body) - 4:
        raise ProtocolError(f"header length {head_len} does not fit (body {len(body)} bytes, limit {MAX_HEADER_BYTES})")
    try:
        header = json.loads(body[4:4 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"header is not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    version = header.pop("v", None)
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(f"protocol version {version!r} not supported (this side speaks {VERSION})", "bad_version")
    msg_type = header.pop("type", None)
    if not isinstance(msg_type, str):
        raise ProtocolError("header has no string 'type'")
    if allowed_types is not None and msg_type not in allowed_types:
        raise ProtocolError(f"unknown message type {msg_type[:40]!r}", "unknown_type")
    return Message(msg_type, header, bytes(body[4 + head_len:]))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ProtocolTimeout()
    return left


def _recv_exact(sock: socket.socket, count: int, deadline: float | None, started: bool) -> bytes:
    """Read exactly ``count`` bytes before ``deadline`` (monotonic seconds), or raise."""
    chunks = bytearray()
    while len(chunks) < count:
        sock.settimeout(_remaining(deadline))
        try:
            chunk = sock.recv(min(count - len(chunks), 1 << 20))
        except socket.timeout:
            raise ProtocolTimeout() from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise ConnectionClosed(f"connection reset: {exc}") from None
        if not chunk:
            if started or chunks:
                raise ConnectionClosed("connection closed in the middle of a message")
            raise ConnectionClosed()
        chunks += chunk
    return bytes(chunks)


def recv_message(sock: socket.socket, *, deadline: float | None = None,
                 max_bytes: int = CLIENT_MAX_MESSAGE_BYTES,
                 allowed_types: frozenset[str] | None = None) -> Message:
    """Read one whole message before ``deadline`` (time.monotonic() seconds, None = wait forever).

    The length prefix is checked against ``max_bytes`` before the body is
    read, so a hostile length costs nothing. Raises ProtocolTimeout,
    ConnectionClosed or ProtocolError (code "too_large", "bad_version", ...).
    """
    prefix = _recv_exact(sock, 4, deadline, started=False)
    (length,) = _LEN.unpack(prefix)
    if length > max_bytes:
        raise ProtocolError(f"message of {length} bytes is over the limit of {max_bytes}", "too_large")
    if length < 4:
        raise ProtocolError(f"message length {length} is shorter than its 4-byte header length")
    return decode_body(_recv_exact(sock, length, deadline, started=True), allowed_types)


def send_message(sock: socket.socket, msg_type: str, fields: dict[str, Any] | None = None,
                 payload: bytes = b"", *, deadline: float | None = None) -> None:
    """Send one message whole before ``deadline`` or raise ProtocolTimeout / ConnectionClosed."""
    data = memoryview(encode(msg_type, fields, payload))
    while data:
        sock.settimeout(_remaining(deadline))
        try:
            sent = sock.send(data)
        except socket.timeout:
            raise ProtocolTimeout("could not send before the deadline") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ConnectionClosed(f"peer went away: {exc}") from None
        data = data[sent:]


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, or None when it is not a JPEG.

    The daemon checks this before decoding, so a small file claiming a huge
    image cannot make it allocate gigabytes.
    """
    if len(data) < 4 or data[0:2] != b"\xff\xd8":
        return None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            i += 2
            continue
        seg_len = (data[i + 2] << 8) | data[i + 3]
        if seg_len < 2:
            return None
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            if i + 9 > n:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            return width, height
        if marker in (0xD9, 0xDA):
            return None
        i += 2 + seg_len
    return None


# ---- client side: used by the PAM helper and the admin CLI ----

def connect(socket_path: str, timeout: float = 1.0) -> socket.socket:
    """Connect to faceidd within ``timeout`` seconds or raise DaemonError saying why.

    With a timeout set, connecting to a Unix socket whose listen queue is full
    fails at once (EAGAIN) instead of waiting: a local user flooding the
    socket would make every login fall through. So that is retried until
    the timeout, as a blocking connect would wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
            break
        except BlockingIOError:
            sock.close()
            if time.monotonic() >= deadline:
                raise DaemonError(f"faceidd did not accept a connection on {socket_path} within {timeout:g} s: "
                                  f"its queue is full") from None
            time.sleep(0.002)
        except FileNotFoundError:
            sock.close()
            raise DaemonError(f"faceidd is not running: {socket_path} does not exist") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonError(f"faceidd is not running: nothing listens on {socket_path}") from None
        except socket.timeout:
            sock.close()
            raise DaemonError(f"faceidd did not accept a connection on {socket_path} within {timeout:g} s") from None
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot connect to faceidd at {socket_path}: {exc.strerror or exc}") from None
    return sock


class Client:
    """A connection to faceidd with deadline-bounded request/answer calls.

    Every call takes ``timeout`` seconds for the whole exchange, so a daemon
    that hangs costs the caller at most that long.
    """

    def __init__(self, socket_path: str, timeout: float = 1.0):
        self.socket_path = socket_path
        self.sock = connect(socket_path, timeout)

    def send(self, msg_type: str, fields: dict[str, Any] | None = None, payload: bytes = b"",
             timeout: float = 1.0) -> None:
        try:
            send_message(self.sock, msg_type, fields, payload, deadline=time.monotonic() + timeout)
        except ProtocolError as exc:
            raise DaemonError(f"sending {msg_type} to faceidd: {exc}") from None

    def recv(self, timeout: float = 1.0) -> Message:
        """The daemon's next message; an ``error`` message is raised as DaemonError."""
        try:
            msg = recv_message(self.sock, deadline=time.monotonic() + timeout, allowed_types=SERVER_TYPES)
        except ProtocolTimeout:
            raise DaemonError(f"faceidd did not answer within {timeout:g} s") from None
        except ProtocolError as exc:
            raise DaemonError(f"bad answer from faceidd: {exc}") from None
        if msg.type == "error":
            raise DaemonError(f"faceidd refused: {msg.get('code')}: {msg.get('message')}")
        return msg

    def request(self, msg_type: str, fields: dict[str, Any] | None = None, payload: bytes = b"",
                timeout: float = 1.0) -> Message:
        """Send one message and return the answer, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        self.send(msg_type, fields, payload, timeout)
        return self.recv(max(0.001, deadline - time.monotonic()))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hello_fields(user: str, service: str = "", tty: str = "", rhost: str = "") -> dict[str, str]:
    """The fields of a hello message (all strings, empty when unknown)."""
    return {"user": user, "service": service, "tty": tty, "rhost": rhost}


def request_status(socket_path: str, timeout: float = 2.0) -> dict[str, Any]:
    """Ask faceidd for its status (root only); returns the status fields or raises DaemonError."""
    with Client(socket_path, timeout) as client:
        return client.request("status", timeout=timeout).fields


def request_reload(socket_path: str, timeout: float = 10.0) -> dict[str, Any]:
    """Ask faceidd to re-read its config and enrolments (root only); returns the reload answer's fields.

    Raises DaemonError when the daemon is unreachable, refuses, or the reload failed
    (the daemon then keeps its previous config).
    """
    with Client(socket_path, min(timeout, 2.0)) as client:
        answer = client.request("reload", timeout=timeout)
    if not answer.get("ok"):
        raise DaemonError(f"faceidd reload failed: {answer.get('error')}")
    return answer.fields
