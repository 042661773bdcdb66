"""Fuzz inputs for the faceidd wire protocol, and the checks every input must pass.

Shared by tests/test_fuzz.py and bench/fuzz.py (the 100,000-input run whose
figures are in the README); no pytest here. An input is the whole byte
stream one client sends on one connection. Hypothesis draws a *case*: a
stream of 1-4 messages (valid ones with hostile fields, raw bytes, lying
length prefixes, lying header lengths, frames that are JPEGs, broken JPEGs
or noise) and a seed; ``expand`` turns the case into the stream itself plus
``variants - 1`` seeded mutations of it (bit flips, truncation, inserted and
deleted bytes, interesting 32-bit values written over length fields), so
hypothesis' structure and cheap byte-level mutation both reach the decoder.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Sequence

from hypothesis import strategies as st

from pam_faceid.common import protocol

MAX_INPUT_BYTES = 48 * 1024
"""Inputs stay below a Unix socket's buffer, so writing one never waits for the reader."""

INTERESTING_U32 = (0, 1, 3, 4, 5, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, protocol.MAX_HEADER_BYTES,
                   protocol.MAX_HEADER_BYTES + 1, protocol.CLIENT_MAX_MESSAGE_BYTES,
                   protocol.DEFAULT_MAX_MESSAGE_BYTES, protocol.DEFAULT_MAX_MESSAGE_BYTES + 1,
                   0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)
_U32 = struct.Struct(">I")

USERS = ("root", "nobody", "", " ", "../../etc/shadow", "root\n", "nobody\n", "-root", ".root", "r" * 300,
         "root\x00", "röot", "ROOT")

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
msg_types = st.one_of(st.sampled_from(sorted(protocol.CLIENT_TYPES | protocol.SERVER_TYPES)), st.text(max_size=12))
users = st.one_of(st.sampled_from(USERS), st.text(max_size=24), json_values)
fields_of = st.dictionaries(st.sampled_from(["user", "service", "tty", "rhost", "v", "type", "timeout", "frames"])
                            | st.text(max_size=8), json_values, max_size=5)


def payloads(jpegs: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Frame payloads: seed JPEGs, truncated or bit-flipped JPEGs, JPEG-looking noise, plain noise."""
    seeds = st.sampled_from(list(jpegs))

    @st.composite
    def damaged(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(seeds))
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data[:draw(st.integers(2, len(data)))])

    huge_sof = st.builds(lambda w, h: b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", h, w) + b"\x03" + b"\0" * 64,
                         st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
    return st.one_of(seeds, damaged(), huge_sof, st.binary(max_size=2048).map(lambda b: b"\xff\xd8" + b),
                     st.binary(max_size=512))


def messages(jpegs: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """One message's bytes, well-formed or not."""
    def encoded(msg_type: str, fields: dict, payload: bytes) -> bytes:
        try:
            return protocol.encode(msg_type, fields, payload)
        except ValueError:  # header over the limit: send a raw one instead
            return b"\x00\x00\x00\x04\x00\x01\x00\x00"

    hello = st.builds(lambda user, svc, tty, rhost: encoded("hello", {"user": user, "service": svc, "tty": tty,
                                                                      "rhost": rhost}, b""),
                      users, st.one_of(st.text(max_size=30), json_values), st.text(max_size=20), st.text(max_size=20))
    frame = st.builds(lambda payload: encoded("frame", {}, payload), payloads(jpegs))
    simple = st.builds(lambda t: encoded(t, {}, b""), st.sampled_from(sorted(protocol.CLIENT_TYPES)))
    anything = st.builds(encoded, msg_types, fields_of, st.binary(max_size=256))
    raw_body = st.binary(max_size=512).map(lambda body: _U32.pack(len(body)) + body)
    lying_length = st.builds(lambda n, body: _U32.pack(n) + body, st.sampled_from(INTERESTING_U32)
                             | st.integers(0, 0xFFFFFFFF), st.binary(max_size=64))
    lying_header = st.builds(lambda h, head, payload: _U32.pack(4 + len(head) + len(payload)) + _U32.pack(h)
                             + head + payload, st.sampled_from(INTERESTING_U32) | st.integers(0, 0xFFFFFFFF),
                             st.binary(max_size=64) | st.sampled_from([b'{"v":1,"type":"hello"}', b"[" * 2000,
                                                                       b'{"v":1,"type":"frame"' + b" " * 100]),
                             st.binary(max_size=64))
    nesting = st.integers(1, 30000).map(lambda depth: encoded_raw_header(b"[" * depth + b"]" * depth))
    return st.one_of(hello, frame, simple, anything, raw_body, lying_length, lying_header, nesting,
                     st.binary(max_size=128))


def encoded_raw_header(head: bytes, payload: bytes = b"") -> bytes:
    return _U32.pack(4 + len(head) + len(payload)) + _U32.pack(len(head)) + head + payload


def cases(jpegs: Sequence[bytes]) -> st.SearchStrategy[tuple[bytes, int]]:
    """(stream of 1-4 messages, mutation seed)."""
    stream = st.lists(messages(jpegs), min_size=1, max_size=4).map(lambda parts: b"".join(parts)[:MAX_INPUT_BYTES])
    return st.tuples(stream, st.integers(0, 2 ** 32 - 1))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four byte-level mutations of ``data``."""
    buf = bytearray(data or b"\0")
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        i = rng.randrange(len(buf)) if buf else 0
        if op == 0 and buf:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[i] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x22, 0x5B, 0x7B))
        elif op == 2:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 3:
            buf[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and buf:
            del buf[i:i + rng.randint(1, 16)]
        elif op == 5:
            at = rng.choice((0, 4, i))
            buf[at:at + 4] = _U32.pack(rng.choice(INTERESTING_U32 + (len(buf), max(0, len(buf) - 4), len(buf) + 1)))
        elif op == 6 and buf:
            j = rng.randrange(len(buf))
            buf[j:j] = buf[i:i + rng.randint(1, 64)]
    return bytes(buf[:MAX_INPUT_BYTES])


def expand(case: tuple[bytes, int], variants: int) -> list[bytes]:
    """The case's stream and ``variants - 1`` seeded mutations of it."""
    data, seed = case
    rng = random.Random(seed)
    return [data] + [mutate(data, rng) for _ in range(variants - 1)]


# ---------------------------------------------------------------- the checks

class FuzzFailure(AssertionError):
    """An input made the decoder or the daemon do something it must never do; carries the input."""

    def __init__(self, why: str, data: bytes):
        super().__init__(f"{why}; input ({len(data)} bytes): {data[:200]!r}")
        self.data = data


def decode_stream(data: bytes) -> int:
    """Feed ``data`` to the real receiver (recv_message on a socket pair, as the daemon reads) to its end.

    Every message must come out as a client message, or the stream must stop
    at a ProtocolError with a known code: never another exception, never a
    wait (the stream is complete, so a timeout is a hang). Returns the number
    of messages decoded.
    """
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    count = 0
    try:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        while True:
            try:
                msg = protocol.recv_message(b, deadline=time.monotonic() + 2.0,
                                            max_bytes=protocol.DEFAULT_MAX_MESSAGE_BYTES,
                                            allowed_types=protocol.CLIENT_TYPES)
            except protocol.ProtocolTimeout:
                raise FuzzFailure("the decoder waited on a complete stream", data) from None
            except protocol.ProtocolError as exc:
                if exc.code not in protocol.ERROR_CODES:
                    raise FuzzFailure(f"unknown error code {exc.code!r}", data) from None
                return count
            except Exception as exc:
                raise FuzzFailure(f"decoder raised {type(exc).__name__}: {exc}", data) from exc
            if (msg.type not in protocol.CLIENT_TYPES or not isinstance(msg.fields, dict)
                    or "v" in msg.fields or "type" in msg.fields or not isinstance(msg.payload, bytes)):
                raise FuzzFailure(f"decoded a malformed message {msg!r}", data)
            count += 1
    finally:
        a.close()
        b.close()


@dataclass
class SocketResult:
    """What one fuzz input got from a live daemon."""

    seconds: float
    answers: list[str] = field(default_factory=list)
    """Answer types in order; an error answer as "error:<code>"."""


def send_to_daemon(path: str, data: bytes, prefix: bytes = b"", limit: float = 8.0) -> SocketResult:
    """Send ``prefix + data`` on a fresh connection, close our side, read the daemon's answers to its close.

    The daemon must close the connection within ``limit`` seconds (no hang)
    and everything it sends must be valid server messages.
    """
    started = time.monotonic()
    deadline = started + limit
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(limit)
    result = SocketResult(0.0)
    try:
        sock.connect(path)
        try:
            sock.sendall(prefix + data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered an early error and closed: read what it said
        while True:
            try:
                msg = protocol.recv_message(sock, deadline=deadline, allowed_types=protocol.SERVER_TYPES)
            except protocol.ConnectionClosed as exc:
                if "middle" in str(exc):
                    raise FuzzFailure("the daemon sent half a message", data) from None
                break
            except protocol.ProtocolTimeout:
                raise FuzzFailure(f"the daemon kept the connection open past {limit:g} s", data) from None
            except protocol.ProtocolError as exc:
                raise FuzzFailure(f"the daemon sent an invalid message: {exc}", data) from None
            result.answers.append(f"error:{msg.get('code')}" if msg.type == "error" else msg.type)
    except OSError as exc:
        raise FuzzFailure(f"socket error {exc!r} talking to the daemon", data) from None
    finally:
        sock.close()
    result.seconds = time.monotonic() - started
    return result


def vm_rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
