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
``frame``   {} + payload: one camera frame, a sequential (baseline) JPEG of
            8-bit grey or YCbCr, at most 2048x2048 (the helper sends at most
            640 px). The daemon walks its markers before decoding; a frame no
            camera sends (progressive, lossless, hierarchical or
            arithmetic-coded, more scans than components, more than 64 marker
            segments, not a JPEG) ends the session at once with the verdict
            ``refused``, reason "frame refused: <why>", counted as a failed
            attempt (lockout.*).
``end``     {}: the client has no more frames (camera ended, its time is up);
            the daemon answers with the verdict at once.
``password_used`` {"user", "service", "stage"}: the PAM stack of ``service``
            may have authenticated ``user`` by the password, so that
            ``auth.require_password_after`` knows when the password was last
            used. The helper sends it from ``pam_exec.so ... faceid-helper
            --password-used`` lines: ``stage`` "auth" from the line after the
            password module (reached after a wrong password too in some
            stacks: the daemon only notes it), "account" from the account
            stack, which runs only after a successful authentication: that
            report, from the same PAM application process, records the use.
            Root only: any other uid, the user itself included, gets the error
            ``refused`` (a user's own process could otherwise claim a password
            it never typed). The daemon ignores it when it granted that user a
            face match in the last few seconds (a stack where face success also
            reaches that line). Answer: ``password_used``.
``status``  {}: root only. Answer: ``status``.
``reload``  {}: root only: re-read the config and the enrolments. Answer: ``reload``.

Messages (daemon -> client)
---------------------------
``ready``    {"timeout", "max_frames", "min_matching_frames"}: answer to hello; send
             frames now. A match needs ``min_matching_frames`` matching frames.
``progress`` {"frames", "faces", "matches", "reason"}: answer to a frame that
             did not decide the session; ``reason`` is why the frame had no
             usable face ("no_face", "face_too_small", ...) or null.
``verdict``  {"result", "score", "frames", "matches", "reason"; for a root peer also "liveness": "live", "off",
             "not_live:<cue>" or null}: the session's single
             answer, after which the daemon closes the connection. ``result`` is
             one of RESULTS: match | no_match | no_face | timeout | not_live |
             locked_out | password_required | not_enrolled | refused | error.
             ``refused``: the client may not ask about this user, or sent a
             frame the daemon refuses (see ``frame``). ``not_live``: the face matched but the liveness check
             (liveness.mode) did not find a live face: a print, a screen or a
             mask, as the anti-spoofing model sees it; ``reason`` says so.
             ``locked_out``: too many failed attempts (lockout.*);
             ``password_required``: the password was not used within
             auth.require_password_after hours. ``score`` is the
             best similarity seen (null if no face, and always null for a
             non-root client: only root sees scores), ``frames`` the number of
             frames processed, ``matches`` how many of them matched, ``reason``
             a short text or null.
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
import re
import socket
import struct
import time
from typing import Any, Iterator, NamedTuple

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


MAX_FRAME_SEGMENTS = 64
"""Marker segments a frame may hold: cv2.imencode writes 9, a camera's photo with EXIF, XMP and ICC about 20."""
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""Start-of-frame markers; only SOF0 (baseline) and SOF1 (extended sequential, Huffman) are taken as frames."""
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1})
_SOF_KIND = {0x2: "progressive", 0x3: "lossless", 0x5: "hierarchical", 0x6: "hierarchical progressive",
             0x7: "hierarchical lossless", 0x9: "arithmetic-coded", 0xA: "arithmetic-coded progressive",
             0xB: "arithmetic-coded lossless", 0xD: "arithmetic-coded hierarchical",
             0xE: "arithmetic-coded hierarchical progressive", 0xF: "arithmetic-coded hierarchical lossless"}
_FILL = re.compile(rb"\xff+")
_ENTROPY_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The marker that ends a scan's entropy-coded data: 0xFF then anything but a stuffed zero, a restart or a fill."""


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each marker segment after SOI, up to EOI or the end of the data.

    A scan's entropy-coded data is skipped by a regular expression, not byte
    by byte in Python, so walking a 2 MiB frame costs about a millisecond.
    Raises ValueError with a short reason when the structure cannot be walked.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    i, n = 2, len(data)
    while i + 2 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"stray byte at offset {i} between segments")
        fill = _FILL.match(data, i)
        i = fill.end() - 1 if fill else i
        if i + 2 > n:
            return
        marker = data[i + 1]
        if marker == 0xD9 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # EOI, TEM, RSTn: no length
            yield marker, i + 2, i + 2
            if marker == 0xD9:
                return
            i += 2
            continue
        if i + 4 > n:
            raise ValueError("truncated segment header")
        end = i + 2 + ((data[i + 2] << 8) | data[i + 3])
        if end < i + 4 or end > n:
            raise ValueError(f"segment 0x{marker:02X} at offset {i} has a bad length")
        yield marker, i + 4, end
        i = end
        if marker == 0xDA:
            found = _ENTROPY_END.search(data, i)
            if found is None:
                return
            i = found.start()


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, or None when it is not a JPEG.

    The daemon checks this before decoding, so a small file claiming a huge
    image cannot make it allocate gigabytes.
    """
    try:
        for marker, start, end in _segments(data):
            if marker in _SOF:
                if end - start < 5:
                    return None
                return (data[start + 3] << 8) | data[start + 4], (data[start + 1] << 8) | data[start + 2]
            if marker in (0xD9, 0xDA):
                return None
    except ValueError:
        return None
    return None


def frame_problem(data: bytes, max_side: int = MAX_FRAME_SIDE) -> str | None:
    """Why faceidd refuses this frame without decoding it, or None for a JPEG a webcam or cv2.imencode makes.

    Taken: sequential Huffman-coded JPEG (SOF0/SOF1), 8-bit, grey or YCbCr,
    at most ``max_side`` pixels a side, at most one scan per component and
    MAX_FRAME_SEGMENTS marker segments. Refused: progressive, lossless,
    hierarchical and arithmetic-coded frames, and anything the walk cannot
    follow. A progressive 2048 px frame with 130,000 empty scans cost the
    decoder a minute; walking its markers costs microseconds.
    """
    components = scans = segments = 0
    try:
        for marker, start, end in _segments(data):
            segments += 1
            if segments > MAX_FRAME_SEGMENTS:
                return f"more than {MAX_FRAME_SEGMENTS} marker segments"
            if marker in _SOF:
                if marker not in _SEQUENTIAL_SOF:
                    return f"{_SOF_KIND[marker - 0xC0]} JPEG (SOF{marker - 0xC0}): only baseline frames are taken"
                if components or end - start < 6:
                    return "a second or short frame header (SOF)"
                bits, height = data[start], (data[start + 1] << 8) | data[start + 2]
                width, components = (data[start + 3] << 8) | data[start + 4], data[start + 5]
                if bits != 8:
                    return f"{bits}-bit samples: only 8-bit frames are taken"
                if not (0 < width <= max_side and 0 < height <= max_side):
                    return f"{width}x{height} px: a frame is 1 to {max_side} px a side"
                if components not in (1, 3):
                    return f"{components} colour components: only grey or YCbCr frames are taken"
            elif marker == 0xCC:
                return "arithmetic coding tables (DAC): only Huffman-coded frames are taken"
            elif marker == 0xDA:
                scans += 1
                if not components:
                    return "a scan (SOS) before the frame header (SOF)"
                if scans > components:
                    return f"more than {components} scan(s) in a sequential JPEG of {components} component(s)"
    except ValueError as exc:
        return str(exc)
    return None if scans else "no scan (SOS): the JPEG holds no image data"


# ---- client side: used by the PAM helper and the admin CLI ----

def connect(socket_path: str, timeout: float = 1.0, server_uid: int | None = 0) -> socket.socket:
    """Connect to faceidd within ``timeout`` seconds or raise DaemonError saying why.

    With a timeout set, connecting to a Unix socket whose listen queue is full
    fails at once (EAGAIN) instead of waiting: a local user flooding the
    socket would make every login fall through. So that is retried until
    the timeout, as a blocking connect would wait.

    The process listening must run as ``server_uid`` (root), by the kernel's
    SO_PEERCRED: a local user who got a socket in its place (a stale path, a
    misconfigured folder) must not be sent camera frames or answer for faceidd.
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
    if server_uid is not None:
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                  struct.calcsize("3i")))
        except OSError as exc:
            sock.close()
            raise DaemonError(f"cannot tell who listens on {socket_path}: {exc.strerror or exc}") from None
        if uid != server_uid:
            sock.close()
            raise DaemonError(f"{socket_path} is served by uid {uid}, not uid {server_uid}: not faceidd, refused")
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
