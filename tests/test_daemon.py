"""faceidd as a real process on a real socket: decision logic, readiness, peer credentials, abuse, reload, limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time

import cv2
import numpy as np
import pytest
from faceidd_util import Faceidd, enrol, require_model, run_as_nobody
from faces_support import session_frames

from pam_faceid.common import protocol
from pam_faceid.daemon.decision import Decision, Verdict
from pam_faceid.daemon.lockout import LockoutStore
from pam_faceid.daemon.session import MESSAGE_TIMEOUT
from pam_faceid.common.store import Store

# ---------------------------------------------------------------- the decision, a pure function of scores and time


def decide(scores, threshold=0.5, need=2, timeout=4.0, max_frames=60, times=None):
    d = Decision(threshold, need, timeout, max_frames, started=0.0)
    verdict = None
    for i, (score, reason) in enumerate(scores):
        verdict = d.observe(score, reason, (times or [0.1 * (j + 1) for j in range(len(scores))])[i])
        if verdict is not None:
            break
    return verdict or d.finish(5.0 if times is None else times[-1], "client ended")


def test_two_matching_frames_match():
    v = decide([(0.2, None), (0.6, None), (None, "no_face"), (0.5, None), (0.9, None)])
    assert v == Verdict("match", 0.6, 4, None, matches=2)  # threshold is inclusive; decided at the 4th frame


def test_one_match_is_not_enough():
    v = decide([(0.7, None), (0.1, None), (None, "face_too_small")])
    assert v.result == "no_match" and v.score == 0.7 and v.frames == 3


def test_no_face_in_any_frame_says_why():
    v = decide([(None, "no_face"), (None, "too_dark")])
    assert v.result == "no_face" and v.reason == "too_dark" and v.score is None


def test_no_frames_at_all_is_timeout():
    assert decide([]).result == "timeout"


def test_frames_after_the_timeout_do_not_count():
    v = decide([(0.9, None), (0.9, None)], times=[1.0, 4.5])
    assert v.result == "no_match" and v.frames == 1 and v.reason == "time is up"


def test_frame_limit_ends_the_session():
    v = decide([(0.1, None)] * 10, max_frames=3)
    assert v.result == "no_match" and v.frames == 3 and "3 frames" in v.reason


def test_clock_starts_at_the_first_frame_by_default():
    d = Decision(0.5, 2, timeout=1.0, max_frames=60)
    assert d.observe(0.9, None, now=100.0) is None  # camera start-up before it does not count
    assert d.observe(0.9, None, now=100.9).result == "match"
    d = Decision(0.5, 2, timeout=1.0, max_frames=60)
    d.observe(0.9, None, now=100.0)
    assert d.observe(0.9, None, now=101.5).result == "no_match"


def test_single_frame_policy():
    assert decide([(0.55, None)], need=1).result == "match"


# ---------------------------------------------------------------- the process

def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


def answer(sock: socket.socket, timeout: float = 5) -> protocol.Message | None:
    """The daemon's next message, or None when it closed the connection."""
    try:
        return protocol.recv_message(sock, deadline=time.monotonic() + timeout)
    except protocol.ConnectionClosed:
        return None


def test_ready_socket_modes_status_and_clean_stop(faceidd):
    d = faceidd()
    d.start()
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o755
    status = protocol.request_status(d.socket)
    assert status["pid"] == d.proc.pid and status["users"] == [] and status["socket"] == d.socket
    assert status["sessions"]["max"] == 8
    assert d.stop() == 0
    assert not os.path.exists(d.socket)
    assert "stopped" in d.logs()


def test_sd_notify_readiness_carries_status(faceidd):
    d = faceidd()
    d.start(wait=False)
    message = d.wait_notify("READY=1")
    assert "STATUS=serving 0 users" in message and f"MAINPID={d.proc.pid}" in message
    d.signal(signal.SIGTERM)
    assert "STOPPING=1" in d.wait_notify("STOPPING=1")


def test_bad_config_exits_with_one_line(faceidd):
    d = faceidd()
    d.rewrite_config({"auth": {"timeout": "soon"}})
    proc = subprocess.run(d.command(), capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("<3>")]
    assert len(errors) == 1 and "auth.timeout" in errors[0] and str(d.config_path) in errors[0]


def test_refuses_to_replace_a_live_daemon_but_replaces_a_stale_socket(faceidd):
    first = faceidd()
    first.start()
    second = Faceidd(first.base, None)
    proc = subprocess.run(second.command(), capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"})
    assert proc.returncode == 1 and "another faceidd is already listening" in proc.stderr
    assert protocol.request_status(first.socket)["pid"] == first.proc.pid
    os.killpg(first.proc.pid, signal.SIGKILL)  # leaves the socket file behind, as a crash would
    first.proc.wait()
    assert os.path.exists(first.socket)
    first.start()
    assert protocol.request_status(first.socket)["pid"] == first.proc.pid


def test_bad_enrolment_is_skipped_and_reported(faceidd):
    d = faceidd()
    store = Store(d.state_dir)
    store.add_templates("alice", np.eye(128, dtype=np.float32)[0])
    store.add_templates("bob", np.eye(128, dtype=np.float32)[1])
    store.path("bob").write_text('{"format": "pam_faceid.enrolment", "version": 7}')
    os.chmod(store.path("bob"), 0o600)
    d.start()
    status = protocol.request_status(d.socket)
    assert "bob" in status["skipped"] and "version 7" in status["skipped"]["bob"]
    assert "skipping user bob" in d.logs()
    with protocol.Client(d.socket) as client:
        verdict = client.request("hello", protocol.hello_fields("bob", "test"))
    assert verdict.type == "verdict" and verdict.get("result") == "error"
    assert "enrolment unreadable" in verdict.get("reason")


def test_sighup_and_reload_message_reread_enrolments_and_config(faceidd):
    d = faceidd()
    d.start()
    store = Store(d.state_dir)
    store.add_templates("alice", np.eye(128, dtype=np.float32)[0])
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded:")
    deadline = time.monotonic() + 5
    while "alice" not in protocol.request_status(d.socket)["users"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert protocol.request_status(d.socket)["users"] == ["alice"]
    store.add_templates("carol", np.eye(128, dtype=np.float32)[2])
    d.rewrite_config({"daemon": {"max_sessions": 3}})
    reply = protocol.request_reload(d.socket)
    assert reply["users"] == ["alice", "carol"]
    assert protocol.request_status(d.socket)["sessions"]["max"] == 3
    d.rewrite_config({"auth": {"timeout": -5}})
    with pytest.raises(protocol.DaemonError, match="reload failed.*auth.timeout"):
        protocol.request_reload(d.socket)
    assert protocol.request_status(d.socket)["sessions"]["max"] == 3  # the previous config stays in force
    assert "keeping the previous config" in d.logs()


NOBODY_CLIENT = """
import json, sys
from pam_faceid.common import protocol
path = sys.argv[1] if len(sys.argv) > 1 else {path!r}
out = {{}}
for kind in ("status", "reload"):
    try:
        getattr(protocol, "request_" + kind)(path)
        out[kind] = "allowed"
    except protocol.DaemonError as exc:
        out[kind] = str(exc)
for user in ("root", "nobody"):
    with protocol.Client(path) as client:
        m = client.request("hello", protocol.hello_fields(user, "test"))
        out[user] = [m.type, m.get("result"), m.get("reason")]
print(json.dumps(out))
"""


def test_peer_credentials_nobody_may_ask_only_about_nobody(faceidd):
    d = faceidd()
    d.start()
    proc = run_as_nobody(NOBODY_CLIENT.format(path=d.socket))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "refused" in out["status"] and "root only" in out["status"]
    assert "refused" in out["reload"] and "root only" in out["reload"]
    assert out["root"][:2] == ["verdict", "refused"]
    assert out["nobody"][:2] == ["verdict", "not_enrolled"]
    logs = d.logs()
    assert "refused status from pid=" in logs and "uid=65534" in logs
    assert "refused hello for user='root'" in logs
    with protocol.Client(d.socket) as client:  # root may ask about anyone
        assert client.request("hello", protocol.hello_fields("nobody", "test")).get("result") == "not_enrolled"


ABUSE = {
    "truncated": struct.pack(">I", 100) + b"\x00\x00\x00\x10{\"v\":1",
    "oversized": struct.pack(">I", 2_000_000_000),
    "wrong_version": protocol.encode("hello", {"user": "root"}).replace(b'"v":1', b'"v":9'),
    "unknown_type": protocol.encode("sudo_me", {"user": "root"}),
    "garbage": bytes(range(256)) * 4,  # claims 66051 bytes, sends 1024: cut off at the deadline
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "frame_before_hello": protocol.encode("frame", payload=b"\xff\xd8"),
    "bad_user": protocol.encode("hello", protocol.hello_fields("../../etc/shadow")),
    "non_string_user": protocol.encode("hello", {"user": ["root"]}),
}


def test_protocol_abuse_gets_an_error_or_a_drop_and_others_are_served(faceidd):
    d = faceidd()
    d.start()
    silent = raw_connect(d.socket)  # says nothing: told "timeout" and dropped after the hello timeout
    results = {}
    for name, data in ABUSE.items():
        with raw_connect(d.socket) as sock:
            sock.sendall(data)
            if name == "truncated":
                sock.shutdown(socket.SHUT_WR)
            reply = answer(sock)
            results[name] = None if reply is None else (reply.type, reply.get("code"))
            assert answer(sock) is None  # and the connection is closed
        assert protocol.request_status(d.socket)["pid"] == d.proc.pid
    assert results["oversized"] == ("error", "too_large")
    assert results["wrong_version"] == ("error", "bad_version")
    assert results["unknown_type"] == ("error", "unknown_type")
    assert results["garbage"] == ("error", "timeout")
    assert results["http"] == ("error", "too_large")  # "GET " read as a length is 1.2 GB
    assert results["frame_before_hello"] == ("error", "unexpected")
    assert results["bad_user"] == ("error", "bad_message")
    assert results["non_string_user"] == ("error", "bad_message")
    assert results["truncated"] is None  # the stream ended inside a message: closed without a reply
    reply = answer(silent, timeout=10)
    assert reply is not None and (reply.type, reply.get("code")) == ("error", "timeout")
    silent.close()
    assert "protocol error from pid=" in d.logs()
    assert d.proc.poll() is None


def test_silent_and_trickling_clients_are_dropped_without_holding_others(faceidd):
    d = faceidd({"daemon": {"max_sessions": 2}, "logging": {"level": "debug"}})
    d.start()
    mark = d.mark()
    hogs = [raw_connect(d.socket) for _ in range(2)]
    hogs[1].sendall(protocol.encode("hello", {"user": "root"})[:5])
    d.wait_log("took a session slot (2 in use)", after=mark)  # both hogs hold the two slots
    # The status request waits in the queue (QUEUE_WAIT, 3 s, then "busy") and is served only once a hog
    # is cut off at the hello timeout (2 s): the daemon's log shows that order.
    reply = protocol.request_status(d.socket, timeout=10)
    assert reply["pid"] == d.proc.pid
    for hog in hogs:
        message = answer(hog, timeout=5)
        assert (message.type, message.get("code")) == ("error", "timeout"), message
        hog.close()
    d.wait_log("status asked by pid=", after=mark)  # logged just after the answer is sent
    lines = d.logs()[mark:].splitlines()
    dropped = next(i for i, line in enumerate(lines) if "protocol error from pid=" in line and ": timeout:" in line)
    served = next(i for i, line in enumerate(lines) if "status asked by pid=" in line)
    assert dropped < served, "\n".join(lines)


def test_a_hostile_uid_cannot_hold_more_than_a_few_connections(faceidd):
    """Six connections from nobody, one after another: the daemon accepts in order, so the first three are
    held (PER_UID_CONNECTIONS) and the last three are each refused at once with the per-uid "busy"."""
    d = faceidd()
    d.start()
    code = f"""
import socket, time, json
from pam_faceid.common import protocol
socks = []
for _ in range(6):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect({d.socket!r}); socks.append(s)
out = []
for s in socks[3:]:
    m = protocol.recv_message(s, deadline=time.monotonic() + 5)
    out.append([m.type, m.get("code"), m.get("message")])
print(json.dumps(out))
"""
    proc = run_as_nobody(code)
    assert proc.returncode == 0, proc.stderr
    refused = json.loads(proc.stdout)
    assert refused == [["error", "busy", "too many connections from this user; try again"]] * 3, refused
    assert d.logs().count("uid=65534: too many connections") == 3


def test_socket_activation_through_systemd_socket_activate(faceidd):
    d = faceidd()
    os.makedirs(os.path.dirname(d.socket), mode=0o755)
    command = ["systemd-socket-activate", "-l", d.socket, "-E", "NOTIFY_SOCKET", *d.command()]
    d.start(command=command, wait=False)
    deadline = time.monotonic() + 10
    while not os.path.exists(d.socket):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = protocol.request_status(d.socket, timeout=30)  # the first connection starts faceidd
    d.wait_notify("READY=1")
    assert "socket passed by systemd" in d.logs()
    assert status["pid"] == d.proc.pid  # systemd-socket-activate execs the daemon in place
    assert d.stop() == 0
    assert os.path.exists(d.socket)  # the socket belongs to the service manager: left alone


# ---------------------------------------------------------------- sessions with the real model

def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def run_session(path: str, user: str, payloads: list[bytes]) -> tuple[list[protocol.Message], protocol.Message]:
    with protocol.Client(path, 5) as client:
        first = client.request("hello", protocol.hello_fields(user, "test"), timeout=5)
        if first.type == "verdict":
            return [], first
        assert first.type == "ready"
        progress = []
        for payload in payloads:
            reply = client.request("frame", payload=payload, timeout=10)
            if reply.type == "verdict":
                return progress, reply
            progress.append(reply)
        return progress, client.request("end", timeout=5)


@pytest.fixture
def model_daemon(faceidd, person_images):
    """faceidd with the real model and root enrolled from 4 real images of faces_support.PERSON."""
    require_model()
    from faces_support import OTHER_PERSON, PERSON

    d = faceidd({"liveness": {"mode": "off"}})  # frames here are different photos: liveness is test_liveness.py's
    genuine = person_images(PERSON)
    enrol(d.state_dir, "root", genuine[:4])
    d.start()
    d.genuine = genuine
    d.impostor = person_images(OTHER_PERSON)
    return d


def test_session_matches_the_enrolled_person_and_not_another(model_daemon):
    d = model_daemon
    frames = [jpeg(f) for f in session_frames(d.genuine[:4])]
    _, verdict = run_session(d.socket, "root", frames)
    assert verdict.get("result") == "match", verdict.fields
    frames = [jpeg(cv2.imread(str(p))) for p in d.impostor[:10]]
    _, verdict = run_session(d.socket, "root", frames)
    assert verdict.get("result") == "no_match", verdict.fields
    assert "verdict=match" in d.logs() and "verdict=no_match" in d.logs()


def test_session_without_faces_and_bad_frames_that_end_it(model_daemon):
    """A frame without a face is a progress reason; one no camera sends ends the session refused, counted."""
    d = model_daemon
    blank = jpeg(np.full((480, 640, 3), 128, np.uint8))
    progress, verdict = run_session(d.socket, "root", [blank, blank])
    assert [m.get("reason") for m in progress] == ["no_face", "no_face"]
    assert verdict.get("result") == "no_face" and verdict.get("frames") == 2
    huge = b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + b"\x00" * 64  # SOF claiming 65535x65535
    for payload, why in ((b"not a jpeg", "not a JPEG"), (huge, "65535x65535 px")):
        progress, verdict = run_session(d.socket, "root", [blank, payload, blank])
        assert len(progress) == 1 and verdict.get("result") == "refused" and verdict.get("frames") == 1
        assert verdict.get("reason").startswith("frame refused: ") and why in verdict.get("reason")
    assert d.logs().count("verdict=refused") == 2
    assert len(LockoutStore(d.state_dir).read("root").failures) == 2


def test_dark_frames_are_too_dark_by_the_camera_threshold(model_daemon):
    """The helper sends an image folder's JPEGs unchecked, so the daemon applies camera.dark_threshold too."""
    d = model_daemon
    face = cv2.imread(str(d.genuine[0]))
    dark = jpeg((face * 0.04).astype(np.uint8))
    progress, verdict = run_session(d.socket, "root", [dark, jpeg(face)])
    assert [m.get("reason") for m in progress] == ["too_dark", None]
    assert progress[1].get("faces") == 1 and progress[1].get("matches") == 1  # the face after it still counts
    assert (verdict.get("result"), verdict.get("reason"), verdict.get("frames")) == ("no_match", "client ended", 2)
    d.rewrite_config({"camera": {"dark_threshold": 0}})
    protocol.request_reload(d.socket)
    progress, _ = run_session(d.socket, "root", [dark])
    assert [m.get("reason") for m in progress] == ["no_face"]  # looked at for a face, not refused as dark


def test_frame_limit_per_session(model_daemon):
    d = model_daemon
    d.rewrite_config({"daemon": {"max_frames_per_session": 2}})
    protocol.request_reload(d.socket)
    blank = jpeg(np.full((120, 160, 3), 90, np.uint8))
    progress, verdict = run_session(d.socket, "root", [blank] * 5)
    assert len(progress) == 1 and verdict.get("result") == "no_face" and verdict.get("frames") == 2


def test_reload_does_not_drop_a_session_in_flight(model_daemon):
    d = model_daemon
    frames = [jpeg(f) for f in session_frames(d.genuine[:4])]
    with protocol.Client(d.socket, 5) as client:
        assert client.request("hello", protocol.hello_fields("root", "test"), timeout=5).type == "ready"
        first = client.request("frame", payload=frames[0], timeout=10)
        d.signal(signal.SIGHUP)
        protocol.request_reload(d.socket)
        d.wait_log("reloaded:")
        reply = first
        for payload in frames[1:]:
            reply = client.request("frame", payload=payload, timeout=10)
            if reply.type == "verdict":
                break
    assert reply.type == "verdict" and reply.get("result") == "match", reply.fields


def test_silent_client_in_a_session_gets_a_timeout_verdict(model_daemon):
    """Silence past MESSAGE_TIMEOUT (2 s) ends the session, long before auth.timeout (here 30 s) would:
    the verdict comes within the client's 10 s wait, and not before the silence limit."""
    d = model_daemon
    d.rewrite_config({"auth": {"timeout": 30}})
    protocol.request_reload(d.socket)
    with protocol.Client(d.socket, 5) as client:
        started = time.monotonic()
        assert client.request("hello", protocol.hello_fields("root", "test"), timeout=5).type == "ready"
        verdict = client.recv(timeout=10)
    assert verdict.get("result") == "timeout" and verdict.get("frames") == 0
    assert time.monotonic() - started >= MESSAGE_TIMEOUT


def test_per_user_head_is_used_when_present_and_ignored_when_unsafe(model_daemon):
    """faceid retrain writes <state_dir>/models/<user>/head.npz; the daemon maps frames and templates by it.

    A head that sends every vector to one point makes a stranger match: proof
    that it is applied. Made for another base model, or writable by others, it
    is ignored and the user is scored by the base model again.
    """
    from pam_faceid.common.userhead import UserHead, head_dir, save_head

    d = model_daemon
    status = protocol.request_status(d.socket)
    model_id = status["model"]["id"]
    collapse = UserHead(np.zeros((128, 128), np.float32), np.ones(128, np.float32), 0.5, model_id)
    stranger = [jpeg(cv2.imread(str(p))) for p in d.impostor[:6]]

    save_head(d.state_dir, "root", collapse)
    protocol.request_reload(d.socket)
    assert protocol.request_status(d.socket)["user_models"] == ["root"]
    assert run_session(d.socket, "root", stranger)[1].get("result") == "match"

    save_head(d.state_dir, "root", UserHead(collapse.weight, collapse.bias, 0.5, "another-model"))
    protocol.request_reload(d.socket)
    assert protocol.request_status(d.socket)["user_models"] == []
    assert run_session(d.socket, "root", stranger)[1].get("result") == "no_match"

    save_head(d.state_dir, "root", collapse)
    os.chmod(head_dir(d.state_dir, "root") / "head.npz", 0o666)
    protocol.request_reload(d.socket)
    assert protocol.request_status(d.socket)["user_models"] == []
    assert run_session(d.socket, "root", stranger)[1].get("result") == "no_match"


def test_snapshots_keep_the_last_attempts_frames(model_daemon):
    """Kept root-only (folders 0700, files 0600) even by a daemon started under umask 000."""
    d = model_daemon
    d.rewrite_config({"snapshots": {"enabled": True, "keep": 2}})
    d.stop()
    umask = os.umask(0)
    try:
        d.start()
    finally:
        os.umask(umask)
    blank = jpeg(np.full((120, 160, 3), 90, np.uint8))
    for count in (1, 2, 3):
        run_session(d.socket, "root", [blank] * count)
    root = d.state_dir / "snapshots"
    d.wait_log("auth user=root service=test", timeout=5)
    deadline = time.monotonic() + 5  # written just after the verdict is sent
    while time.monotonic() < deadline:
        attempts = sorted(p for p in root.iterdir())
        if len(attempts) == 2 and len(list(attempts[-1].glob("frame_*.jpg"))) == 3:
            break
        time.sleep(0.05)
    assert len(attempts) == 2 and stat.S_IMODE(root.stat().st_mode) == 0o700
    frames = sorted(len(list(a.glob("frame_*.jpg"))) for a in attempts)
    assert frames == [2, 3]  # the oldest attempt (1 frame) was pruned
    info = json.loads((attempts[-1] / "attempt.json").read_text())
    assert info["user"] == "root" and info["verdict"] == "no_face" and info["service"] == "test"
    files = [p for a in attempts for p in a.iterdir()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in attempts} == {0o700}
    assert len(files) == 7 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


NOBODY_SESSION = """
import json, pathlib, sys
from pam_faceid.common import protocol
messages = []
with protocol.Client(sys.argv[1]) as client:
    messages.append(client.request("hello", protocol.hello_fields("nobody", "test"), timeout=5).fields)
    for path in sorted(pathlib.Path(sys.argv[2]).iterdir()):
        reply = client.request("frame", payload=path.read_bytes(), timeout=10)
        messages.append({"type": reply.type, **reply.fields})
        if reply.type == "verdict":
            break
print(json.dumps(messages))
"""


def test_a_non_root_client_gets_no_score(model_daemon):
    """nobody asking about itself learns the verdict, never the similarity it could climb; root still sees it."""
    d = model_daemon
    enrol(d.state_dir, "nobody", d.genuine[:4])
    d.signal(signal.SIGHUP)
    d.wait_log("reloaded")
    folder = d.base / "frames"
    folder.mkdir(mode=0o755)
    for i, frame in enumerate(session_frames(d.genuine[:4])):
        (folder / f"{i:03d}.jpg").write_bytes(jpeg(frame))
        os.chmod(folder / f"{i:03d}.jpg", 0o644)
    proc = run_as_nobody(f"import sys; sys.argv = ['-', {d.socket!r}, {str(folder)!r}]\n{NOBODY_SESSION}", timeout=60)
    assert proc.returncode == 0, proc.stderr
    messages = json.loads(proc.stdout)
    assert messages[-1]["type"] == "verdict" and messages[-1]["result"] == "match", messages
    assert all(m.get("score") is None for m in messages), messages
    _, verdict = run_session(d.socket, "nobody", [p.read_bytes() for p in sorted(folder.iterdir())])
    assert verdict.get("result") == "match" and isinstance(verdict.get("score"), float)
    assert "user=nobody" in d.logs() and "uid=65534 verdict=match score=0." in d.logs()
