"""The wire protocol on real socket pairs: exact bytes, limits checked before reading, deadlines, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import socket
import struct
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from faces_support import require_shared_faces
from hypothesis import given, settings
from hypothesis import strategies as st

from pam_faceid.common import protocol


def pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def test_encode_is_the_documented_layout():
    data = protocol.encode("frame", {"n": 1}, b"\xff\xd8JPEG")
    header = b'{"v":1,"type":"frame","n":1}'
    assert data == struct.pack(">I", 4 + len(header) + 6) + struct.pack(">I", len(header)) + header + b"\xff\xd8JPEG"


def test_round_trip_over_a_socket():
    a, b = pair()
    with a, b:
        protocol.send_message(a, "hello", protocol.hello_fields("alice", "sudo", "/dev/pts/1", ""))
        protocol.send_message(a, "frame", payload=bytes(range(256)) * 10)
        msg = protocol.recv_message(b, deadline=time.monotonic() + 1, allowed_types=protocol.CLIENT_TYPES)
        assert msg.type == "hello" and msg.fields == {"user": "alice", "service": "sudo", "tty": "/dev/pts/1",
                                                      "rhost": ""}
        msg = protocol.recv_message(b, deadline=time.monotonic() + 1)
        assert msg.type == "frame" and msg.payload == bytes(range(256)) * 10


def test_oversized_length_is_refused_before_reading_the_body():
    a, b = pair()
    with a, b:
        a.sendall(struct.pack(">I", 3_000_000_000))  # no body follows: reading it would block
        started = time.monotonic()
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.recv_message(b, deadline=time.monotonic() + 5, max_bytes=1024)
        assert err.value.code == "too_large"
        assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("body, code", [
    (struct.pack(">I", 5) + b'{"v":', "bad_message"),                     # header JSON truncated
    (struct.pack(">I", 2) + b"[]", "bad_message"),                        # not an object
    (struct.pack(">I", 9) + b"\xff\xfe garbage", "bad_message"),          # not UTF-8
    (struct.pack(">I", 100) + b'{"v":1}', "bad_message"),                 # header length past the body
    (struct.pack(">I", 16) + b'{"v":2,"type":"x"}'[:16], "bad_message"),
    (struct.pack(">I", 18) + b'{"v":2,"type":"x"}', "bad_version"),
    (struct.pack(">I", 22) + b'{"v":true,"type":"end"}'[:22], "bad_message"),
    (struct.pack(">I", 23) + b'{"v":true,"type":"end"}', "bad_version"),
    (struct.pack(">I", 23) + b'{"v":1,"type":"launch"}', "unknown_type"),
    (struct.pack(">I", 12) + b'{"v":1,"t":1}', "bad_message"),
    (b"\x00\x00", "bad_message"),                                          # shorter than the header length
    (struct.pack(">I", 60000) + b"[" * 30000 + b"]" * 30000, "bad_message"),  # nesting bomb
])
def test_bad_bodies_raise_with_a_code(body, code):
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.decode_body(body, protocol.CLIENT_TYPES)
    assert err.value.code == code, str(err.value)


def test_truncated_message_then_close_is_connection_closed():
    a, b = pair()
    with b:
        a.sendall(protocol.encode("hello", {"user": "x"})[:-3])
        a.close()
        with pytest.raises(protocol.ConnectionClosed, match="middle"):
            protocol.recv_message(b, deadline=time.monotonic() + 1)


def test_silent_peer_times_out_at_the_deadline():
    a, b = pair()
    with a, b:
        a.sendall(protocol.encode("hello", {"user": "x"})[:7])  # a slow-loris: part of a message, then nothing
        started = time.monotonic()
        with pytest.raises(protocol.ProtocolTimeout):
            protocol.recv_message(b, deadline=started + 0.3)
        assert 0.25 < time.monotonic() - started < 1.0


def test_trickling_peer_cannot_extend_the_deadline():
    a, b = pair()
    data = protocol.encode("hello", {"user": "x" * 50})
    stop = threading.Event()

    def trickle():
        for byte in data:
            if stop.wait(0.05):
                return
            try:
                a.send(bytes([byte]))
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(protocol.ProtocolTimeout):
            protocol.recv_message(b, deadline=started + 0.5)
        assert time.monotonic() - started < 1.0
    finally:
        stop.set()
        thread.join()
        a.close()
        b.close()


def test_clean_close_between_messages():
    a, b = pair()
    a.close()
    with b, pytest.raises(protocol.ConnectionClosed):
        protocol.recv_message(b, deadline=time.monotonic() + 1)


def test_header_limit_and_nan_are_refused_when_encoding():
    with pytest.raises(ValueError):
        protocol.encode("hello", {"user": "x" * (protocol.MAX_HEADER_BYTES + 1)})
    with pytest.raises(ValueError):
        protocol.encode("verdict", {"score": float("nan")})


def test_jpeg_size_reads_real_encoder_output():
    image = np.random.default_rng(0).integers(0, 255, (37, 91, 3), np.uint8)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        ok, buf = cv2.imencode(".jpg", image, params)
        assert ok
        assert protocol.jpeg_size(buf.tobytes()) == (91, 37)
    ok, png = cv2.imencode(".png", image)
    assert protocol.jpeg_size(png.tobytes()) is None
    assert protocol.jpeg_size(b"\xff\xd8\xff") is None
    assert protocol.jpeg_size(b"") is None


def encoded(image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, params or [])
    assert ok
    return buf.tobytes()


def test_frame_problem_takes_what_cameras_cv2_and_pillow_write():
    """Baseline JPEG as the helper (camera.encode_jpeg), cv2.imencode's options and Pillow write it: all taken."""
    import io

    from PIL import Image

    from pam_faceid import camera

    colour = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    options = [[], [cv2.IMWRITE_JPEG_QUALITY, 100], [cv2.IMWRITE_JPEG_OPTIMIZE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 1],
               [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]]
    frames = [encoded(colour, params) for params in options]
    frames += [encoded(colour[:, :, 0]), camera.encode_jpeg(np.resize(colour, (1080, 1920, 3))),
               encoded(np.zeros((protocol.MAX_FRAME_SIDE,) * 2, np.uint8))]
    for mode in ("RGB", "L"):
        out = io.BytesIO()
        Image.fromarray(colour if mode == "RGB" else colour[:, :, 0]).save(out, "JPEG", quality=90,
                                                                           exif=Image.Exif().tobytes())
        frames.append(out.getvalue())
    assert [protocol.frame_problem(data) for data in frames] == [None] * len(frames)


def test_frame_problem_takes_every_real_photo(tmp_path):
    """Every tenth JPEG of ../shared/faces (4,856 files) is a frame the daemon takes; walking each is cheap."""
    root = require_shared_faces()
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[::10]
    assert len(paths) > 1000
    refused = {}
    started = time.monotonic()
    for path in paths:
        problem = protocol.frame_problem(path.read_bytes())
        if problem:
            refused[str(path)] = problem
    assert refused == {}
    assert time.monotonic() - started < 20  # file reads included, on a busy 2-core machine


def _patched(data: bytes, marker: int, offset: int, value: int) -> bytes:
    """``data`` with one byte of the first ``marker`` segment's payload set to ``value``."""
    at = data.index(bytes([0xFF, marker])) + 4 + offset
    return data[:at] + bytes([value]) + data[at + 1:]


def test_frame_problem_refuses_what_no_camera_sends_in_one_line_without_decoding():
    from attack_support import crafted_progressive_jpeg

    grey = np.random.default_rng(1).integers(0, 255, (64, 96), np.uint8)
    colour = cv2.merge([grey] * 3)
    base = encoded(colour)
    sos = base.index(b"\xff\xda")
    cases = {
        "progressive JPEG (SOF2)": encoded(colour, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        "arithmetic-coded JPEG (SOF9)": base.replace(b"\xff\xc0", b"\xff\xc9", 1),
        "lossless JPEG (SOF3)": base.replace(b"\xff\xc0", b"\xff\xc3", 1),
        "arithmetic coding tables (DAC)": base[:sos] + b"\xff\xcc\x00\x04\x00\x11" + base[sos:],
        "more than 1 scan(s)": encoded(grey)[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\xff\xd9",
        "more than 64 marker segments": base[:sos] + b"\xff\xfe\x00\x03x" * 60 + base[sos:],
        "12-bit samples": _patched(base, 0xC0, 0, 12),
        "0x64 px": _patched(_patched(base, 0xC0, 3, 0), 0xC0, 4, 0),
        "65535x65535 px": b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + b"\x00" * 64,
        "4 colour components": _patched(base, 0xC0, 5, 4),
        "not a JPEG": encoded(colour)[2:],
        "stray byte": base[:2] + b"\x00" + base[2:],
        "no scan (SOS)": base[:sos],
        "bad length": base[:sos + 4],
    }
    for expected, data in cases.items():
        problem = protocol.frame_problem(data)
        assert problem is not None and expected in problem and "\n" not in problem, (expected, problem)
    crafted = crafted_progressive_jpeg()  # libjpeg takes about a minute to decode it
    assert len(crafted) < protocol.DEFAULT_MAX_MESSAGE_BYTES
    assert "progressive" in protocol.frame_problem(crafted)
    baseline_soup = base[:-2] + b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00" * 130_000 + base[-2:]
    assert "more than 3 scan(s)" in protocol.frame_problem(baseline_soup)
    rst_soup = base[:sos + 14] + b"\xff\xd0" * 500_000 + base[sos + 14:]  # restarts inside the data: libjpeg's own
    assert protocol.frame_problem(rst_soup) is None
    # The walks cost about one pass over the bytes: the floor is splitting the same bytes at every 0xFF, measured
    # here (best of 5 each), so a busy machine slows both. A decode or a quadratic walk costs thousands of those.
    soups = (crafted, baseline_soup, rst_soup)
    walk = _best_of(5, lambda: [protocol.frame_problem(data) for data in soups])
    floor = _best_of(5, lambda: [data.split(b"\xff") for data in soups])
    assert walk < 5 * floor, f"frame_problem {walk * 1000:.1f} ms, one split pass {floor * 1000:.1f} ms"


def _best_of(runs: int, work) -> float:
    """The fastest of ``runs`` timings of ``work()``: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def test_client_helpers_report_a_missing_daemon(tmp_path):
    started = time.monotonic()
    with pytest.raises(protocol.DaemonError, match="not running"):
        protocol.request_status(str(tmp_path / "none.sock"))
    with pytest.raises(protocol.DaemonError, match="not running"):
        protocol.request_reload(str(tmp_path / "none.sock"))
    assert time.monotonic() - started < 0.5


def test_client_request_times_out_on_a_silent_server(tmp_path):
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(protocol.DaemonError, match="did not answer"):
            protocol.request_status(path, timeout=0.3)
        assert time.monotonic() - started < 1.0
    finally:
        server.close()


def test_client_raises_error_replies(tmp_path):
    path = str(tmp_path / "err.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        with conn:
            protocol.recv_message(conn, deadline=time.monotonic() + 2)
            protocol.send_message(conn, "error", {"code": "refused", "message": "status is for root only"})

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(protocol.DaemonError, match="refused: status is for root only"):
            protocol.request_status(path)
    finally:
        thread.join()
        server.close()


def test_header_is_plain_json():
    data = protocol.encode("verdict", {"result": "match", "score": 0.5, "frames": 2, "reason": None})
    (head_len,) = struct.unpack(">I", data[4:8])
    assert json.loads(data[8:8 + head_len]) == {"v": 1, "type": "verdict", "result": "match", "score": 0.5,
                                                "frames": 2, "reason": None}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decode_body_raises_only_protocol_errors_on_any_bytes(body):
    try:
        msg = protocol.decode_body(body, protocol.CLIENT_TYPES)
    except protocol.ProtocolError as exc:
        assert exc.code in protocol.ERROR_CODES
    else:
        assert msg.type in protocol.CLIENT_TYPES


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(protocol.CLIENT_TYPES)),
       st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.integers(), st.text(max_size=20)), max_size=5),
       st.binary(max_size=100))
def test_any_encoded_message_decodes_to_itself(msg_type, fields, payload):
    data = protocol.encode(msg_type, fields, payload)
    msg = protocol.decode_body(data[4:], protocol.CLIENT_TYPES)
    assert msg.type == msg_type and msg.payload == payload
    assert msg.fields == {k: v for k, v in fields.items() if k not in ("v", "type")}


def test_the_docstring_documents_every_result_and_error_code():
    """docs/protocol.md is generated from this docstring (tests/test_docs.py), so it must name every word."""
    spec = protocol.__doc__[protocol.__doc__.index("Wire format"):]
    for word in (*protocol.RESULTS, *protocol.ERROR_CODES):
        assert word in spec, f"{word} is not documented in protocol.py's docstring"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a server as another user")
def test_client_refuses_a_socket_served_by_anyone_but_root():
    """A socket someone else listens on (a stale path taken over) is never sent a frame or believed."""
    folder = Path(tempfile.mkdtemp(prefix="fid-peer-"))
    folder.chmod(0o777)
    path = str(folder / "faceidd.sock")
    server = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(1); "
              "print('ready', flush=True); time.sleep(30)")
    proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "/usr/bin/python3",
                             "-c", server, path], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(protocol.DaemonError, match=r"served by uid 65534, not uid 0: not faceidd, refused"):
            protocol.Client(path, 1.0)
        protocol.connect(path, 1.0, server_uid=65534).close()  # the check is the only thing refusing it
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder)
