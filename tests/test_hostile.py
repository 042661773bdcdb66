"""A hostile local user (uid nobody) against faceidd while the owner logs in.

test_daemon.py checks each refusal once, alone. Here one nobody process
runs every attack in turn: asking about other users, admin messages, huge
length prefixes, a message that never ends, slowloris, a flood of hundreds
of connections and (with a model) endless frames. Each attack must be
refused or cut off within its bound, and all the while root asks for its own
sessions: every one is answered within the helper's 1 s budget and decided
within auth.timeout, and (with a model) every one matches. Apart: an
enrolled user streaming the biggest frames a message may hold on all its
connections must not hold up the owner's login.
"""

from __future__ import annotations

import base64
import json
import statistics
import subprocess
import threading
import time

import pytest
from attack_support import crafted_progressive_jpeg, enrol_random, jpegs, plain_policy
from faceidd_util import PYTHON, enrol, model_available, require_model, run_as_nobody
from faces_support import OTHER_PERSON, PERSON

from pam_faceid.helper import main as helper
from pam_faceid.common import protocol
from pam_faceid.daemon.server import HELLO_TIMEOUT, PER_UID_CONNECTIONS
from pam_faceid.daemon.session import SESSION_MARGIN

ATTACK = r'''
import base64, json, os, socket, struct, time
from pam_faceid.common import protocol
P = json.loads(%r)
path = P["socket"]
out = {}

def conn():
    s = protocol.connect(path, 10)  # waits while the listen queue is full (after a flood)
    s.settimeout(10)
    return s

def raw_conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s

def answers(s, limit=10.0):
    """Answer types until the daemon closes: 'error:<code>' for errors."""
    got = []
    deadline = time.monotonic() + limit
    while True:
        try:
            m = protocol.recv_message(s, deadline=deadline)
        except protocol.ConnectionClosed:
            return got
        except protocol.ProtocolTimeout:
            return got + ["still open"]
        got.append("error:%%s" %% m.get("code") if m.type == "error" else "%%s:%%s" %% (m.type, m.get("result")))

def one(data, limit=10.0):
    with conn() as s:
        s.sendall(data)
        return answers(s, limit)

# 1. about other users, with every message that names one
users = ["root", "daemon", "bin"]
out["other_users"] = [one(protocol.encode("hello", protocol.hello_fields(u, "sudo"))) for u in users]
if "password_used" in protocol.CLIENT_TYPES:
    out["other_users"] += [one(protocol.encode("password_used", {"user": u, "service": "sudo"})) for u in users]
# 2. admin messages
out["admin"] = [one(protocol.encode(t)) for t in sorted(protocol.ADMIN_TYPES)]
# 3. huge length prefixes: refused before any body is read
out["huge_prefix"] = []
for n in (0xFFFFFFFF, 0x80000000, P["max_bytes"] + 1):
    started = time.monotonic()
    out["huge_prefix"].append([one(struct.pack(">I", n) + b"x" * 16), round(time.monotonic() - started, 3)])
# 4. a message that never ends: a length just under the limit, then a trickle
with conn() as s:
    started = time.monotonic()
    s.sendall(struct.pack(">I", P["max_bytes"] - 1) + b"\0\0\0\2{}")
    s.settimeout(0.1)
    got = None
    while got is None and time.monotonic() - started < 10:
        try:
            s.send(b"\0" * 64)
            time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            got = "closed"
        except socket.timeout:
            got = "closed"
    s.settimeout(5)
    out["endless_message"] = [got, answers(s, 2), round(time.monotonic() - started, 3)]
# 5. slowloris: hold as many connections as the daemon lets us, each with half a message
held = []
started = time.monotonic()
for _ in range(8):
    s = conn()
    s.sendall(protocol.encode("hello", protocol.hello_fields("nobody"))[:5])
    held.append(s)
out["slowloris"] = []
for s in held:
    got = answers(s, 8)
    out["slowloris"].append([got, round(time.monotonic() - started, 3)])
    s.close()
# 6. a flood: hundreds of connections at once
socks, refused_connect = [], 0
started = time.monotonic()
for _ in range(P["flood"]):
    try:
        socks.append(raw_conn())
    except OSError:
        refused_connect += 1
results = [answers(s, 8) for s in socks]
for s in socks:
    s.close()
out["flood"] = {"opened": len(socks), "refused_connect": refused_connect,
                "busy": sum(r == ["error:busy"] for r in results),
                "cut": sum(r == ["error:timeout"] for r in results),
                "other": [r for r in results if r not in (["error:busy"], ["error:timeout"])],
                "seconds": round(time.monotonic() - started, 3)}
# 7. a sustained flood: four processes connecting and closing as fast as they can
started = time.monotonic()
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        end = time.monotonic() + P["flood_seconds"]
        while time.monotonic() < end:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except OSError:
                pass
            s.close()
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
out["sustained_flood"] = round(time.monotonic() - started, 3)
# 8. endless frames in our own session
if P["frame"]:
    frame = base64.b64decode(P["frame"])
    with conn() as s:
        started = time.monotonic()
        s.sendall(protocol.encode("hello", protocol.hello_fields("nobody", "sudo")))
        first = protocol.recv_message(s, deadline=time.monotonic() + 5)
        sent, last = 0, None
        try:
            while time.monotonic() - started < 20:
                s.sendall(protocol.encode("frame", payload=frame))
                sent += 1
                last = protocol.recv_message(s, deadline=time.monotonic() + 10)
                if last.type != "progress":
                    break
        except (OSError, protocol.ProtocolError):
            last = None
        out["endless_frames"] = [first.type, sent, last.type if last else None, last.get("result") if last else None,
                                 last.get("frames") if last else None, round(time.monotonic() - started, 3)]
print(json.dumps(out))
'''


def owner_once(path: str, frames: list[bytes], log: list[tuple[float, float, str]]) -> None:
    """One session of root about itself: (seconds to the first answer, to the verdict, result) into ``log``."""
    try:
        with protocol.Client(path, helper.DAEMON_TIMEOUT) as client:
            started = time.monotonic()
            reply = client.request("hello", protocol.hello_fields("root", "sudo"), timeout=5)
            first = time.monotonic() - started
            for payload in frames:
                if reply.type != "ready" and reply.type != "progress":
                    break
                reply = client.request("frame", payload=payload, timeout=10)
            if reply.type in ("ready", "progress"):
                reply = client.request("end", timeout=5)
            log.append((first, time.monotonic() - started, str(reply.get("result"))))
    except protocol.DaemonError as exc:
        log.append((float("inf"), float("inf"), f"failed: {exc}"))


def owner_sessions(path: str, frames: list[bytes], stop: threading.Event,
                   log: list[tuple[float, float, str]]) -> None:
    """Root asking about itself, again and again, until ``stop``."""
    while not stop.is_set():
        owner_once(path, frames, log)
        stop.wait(0.1)


def test_hostile_user_is_refused_or_cut_off_and_the_owner_keeps_logging_in(faceidd, person_images):
    d = faceidd(plain_policy())
    frames: list[bytes] = []
    nobody_frame = ""
    if model_available():
        genuine = person_images(PERSON)
        enrol(d.state_dir, "root", genuine[:4])
        enrol_random(d.state_dir, "nobody")
        frames = jpegs(genuine[:4])  # the enrolment photos: a match whatever the model's accuracy
        nobody_frame = base64.b64encode(jpegs(person_images(OTHER_PERSON, limit=1))[0]).decode()
    d.start()
    max_bytes = protocol.DEFAULT_MAX_MESSAGE_BYTES
    params = {"socket": d.socket, "max_bytes": max_bytes, "flood": 300, "flood_seconds": 3,
              "frame": nobody_frame}
    stop = threading.Event()
    owner: list[tuple[float, float, str]] = []
    thread = threading.Thread(target=owner_sessions, args=(d.socket, frames, stop, owner))
    thread.start()
    try:
        proc = run_as_nobody(ATTACK % json.dumps(params), timeout=90)
    finally:
        stop.set()
        thread.join()
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)

    refused = "verdict:refused"
    assert all(got == [refused] or got == ["error:refused"] for got in out["other_users"]), out["other_users"]
    assert all(got == ["error:refused"] for got in out["admin"]), out["admin"]
    for got, seconds in out["huge_prefix"]:
        assert got == ["error:too_large"] and seconds < 0.5
    closed, got, seconds = out["endless_message"]
    assert closed == "closed" or got == ["error:timeout"], out["endless_message"]
    assert seconds < HELLO_TIMEOUT + 1.5
    cut = [entry for entry in out["slowloris"] if entry[0] == ["error:timeout"]]
    busy = [entry for entry in out["slowloris"] if entry[0] == ["error:busy"]]
    assert len(cut) == PER_UID_CONNECTIONS and len(busy) == 8 - PER_UID_CONNECTIONS, out["slowloris"]
    assert max(seconds for _, seconds in cut) < HELLO_TIMEOUT + 1.0
    flood = out["flood"]
    assert flood["opened"] + flood["refused_connect"] == 300
    assert flood["cut"] <= PER_UID_CONNECTIONS and flood["busy"] >= flood["opened"] - PER_UID_CONNECTIONS, flood
    assert not flood["other"], flood
    if nobody_frame:
        first, sent, last, result, counted, seconds = out["endless_frames"]
        assert first == "ready" and last == "verdict" and result in ("no_match", "no_face"), out["endless_frames"]
        assert counted <= 60 and seconds < 4.0 + SESSION_MARGIN + 1.0

    assert len(owner) >= 10, owner
    assert all(not result.startswith("failed") for _, _, result in owner), owner
    slowest = max(first for first, _, _ in owner)
    assert slowest < helper.DAEMON_TIMEOUT, f"the owner waited {slowest:.2f} s for an answer to hello: {owner}"
    # With the model every owner session is a "match", which the daemon decides by its own clock: past
    # auth.timeout (4 s) from the first frame it would be "no_match, time is up".
    want = "match" if frames else "not_enrolled"
    assert {result for _, _, result in owner} == {want}, owner
    assert d.proc.poll() is None
    logs = d.logs()
    assert "Traceback" not in logs and "internal error" not in logs
    assert "too many connections" in logs and "refused hello for user='root'" in logs


FORGED = "<6>auth user=root service=sudo tty=- rhost=- pid=1 uid=0 verdict=match score=0.990"


@pytest.mark.parametrize("fields", [
    {"user": "nobody", "service": "sudo\n" + FORGED, "tty": "", "rhost": ""},
    {"user": "nobody", "service": "sudo", "tty": "pts/1\r" + FORGED, "rhost": ""},
    {"user": "nobody", "service": "sudo", "tty": "", "rhost": "x" * 300},
    {"user": "nobody\n", "service": "sudo", "tty": "", "rhost": ""},
    {"user": "nobody", "service": "sudo\n" + FORGED, "tty": None},  # password_used
])
def test_hello_fields_cannot_forge_audit_lines(faceidd, fields):
    """service/tty/rhost are written into the audit line: control characters there are refused, not logged."""
    d = faceidd()
    d.start()
    kind = "password_used" if fields.get("tty") is None else "hello"
    code = f"""
from pam_faceid.common import protocol
with protocol.Client({d.socket!r}) as client:
    try:
        print(client.request({kind!r}, {fields!r}).type)
    except protocol.DaemonError as exc:
        print(exc)
"""
    mark = d.mark()
    proc = run_as_nobody(code)
    assert proc.returncode == 0, proc.stderr
    assert "bad_message" in proc.stdout, proc.stdout
    d.wait_log(": bad_message: ", after=mark)  # the refusal is logged: whatever this request wrote is in the log
    lines = d.logs()[mark:].splitlines()
    assert not any(line.startswith(FORGED) for line in lines)
    assert not any("auth user=nobody" in line or "password_used user=nobody" in line for line in lines)


HOG = r'''
import json, sys, threading, time
import cv2
import numpy as np
from pam_faceid.common import protocol
path, seconds, side = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
ramp = np.linspace(0, 255, side, dtype=np.uint8)
big = cv2.imencode(".jpg", cv2.merge([np.tile(ramp, (side, 1))] * 3))[1].tobytes()
counts = []

def hog():
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            with protocol.Client(path, 5) as client:
                reply = client.request("hello", protocol.hello_fields("nobody", "sudo"), timeout=5)
                while reply.type in ("ready", "progress") and time.monotonic() < end:
                    reply = client.request("frame", payload=big, timeout=30)
                    sent += 1
        except protocol.DaemonError:
            time.sleep(0.05)
    counts.append(sent)

hogs = [threading.Thread(target=hog) for _ in range(3)]
for t in hogs:
    t.start()
print("streaming", flush=True)
for t in hogs:
    t.join()
print(json.dumps({"bytes": len(big), "sent": sum(counts)}))
'''


def owner_under_hogs(d, frames: list[bytes], side: int) -> tuple[list[tuple[float, float, str]], dict]:
    """Three owner sessions while nobody streams ``side``-px frames on all three of its connections."""
    hog = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(PYTHON), "-c", HOG,
                            d.socket, "2.5", str(side)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={"PATH": "/usr/bin:/bin"})
    try:
        assert hog.stdout.readline().strip() == "streaming", hog.stderr.read()
        time.sleep(0.5)
        owner: list[tuple[float, float, str]] = []
        for _ in range(3):
            owner_once(d.socket, frames, owner)
        out, err = hog.communicate(timeout=60)
    finally:
        if hog.poll() is None:
            hog.kill()
            hog.wait()
    assert hog.returncode == 0, err
    return owner, json.loads(out.splitlines()[-1])


def test_an_enrolled_user_streaming_huge_frames_does_not_hold_up_the_owner(faceidd, person_images):
    """2048x2048 frames on all three of nobody's connections; the daemon scales frames down before the detector
    (the helper sends 640 px), so each costs no more of the one serialised detector than a camera frame.
    Before, the owner's login took 6-7 s under this and ran past auth.timeout.

    Measured against the same hogs sending camera-sized frames in the same run, so the machine's load moves
    both alike: the owner's sessions under huge frames take at most twice as long (1.1-1.4x here; 6-7x with the
    daemon's downscaling removed).
    """
    require_model()
    d = faceidd(plain_policy())
    genuine = person_images(PERSON)
    enrol(d.state_dir, "root", genuine[:4])
    enrol_random(d.state_dir, "nobody")
    d.start()
    frames = jpegs(genuine[:4])
    camera, _ = owner_under_hogs(d, frames, 640)
    owner, big = owner_under_hogs(d, frames, protocol.MAX_FRAME_SIDE)
    assert big["bytes"] <= protocol.DEFAULT_MAX_MESSAGE_BYTES and big["sent"] > 0
    # "match" is decided by the daemon's own clock: past auth.timeout from the first frame it is "no_match".
    assert [result for _, _, result in camera + owner] == ["match"] * 6, (camera, owner)
    typical = statistics.median(whole for _, whole, _ in camera)
    huge = statistics.median(whole for _, whole, _ in owner)
    assert huge < 2 * typical + 0.1, f"owner's session: {huge:.2f} s under huge frames, {typical:.2f} s under 640 px"


CRAFTED = r'''
import json, threading, time
from pam_faceid.common import protocol
path, frame_path = json.loads(%r)
frame = open(frame_path, "rb").read()
results = []

def attempt():
    started = time.monotonic()
    try:
        with protocol.Client(path, 5) as client:
            reply = client.request("hello", protocol.hello_fields("nobody", "sudo"), timeout=5)
            if reply.type == "ready":
                reply = client.request("frame", payload=frame, timeout=5)
            results.append([reply.get("result"), reply.get("reason"), round(time.monotonic() - started, 3)])
    except protocol.DaemonError as exc:
        results.append(["failed", str(exc), round(time.monotonic() - started, 3)])

threads = [threading.Thread(target=attempt) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
deadline = time.monotonic() + 3
while True:  # the daemon frees a connection slot just after its verdict: "busy" until then
    attempt()
    if "busy" not in str(results[-1][1]) or time.monotonic() > deadline:
        break
    results.pop()
    time.sleep(0.05)
print(json.dumps(results))
'''


def test_crafted_progressive_jpegs_are_refused_before_decoding_and_counted(faceidd, person_images):
    """Issue 14's frame (progressive, 2048 px, 130,000 empty scans: 40 s of libjpeg each) on all three of an
    enrolled user's connections: each session ends refused within a second, counts as a failed attempt (so the
    fourth is locked out at hello), and the owner's login is untouched. Before, each held a session ~40 s+."""
    require_model()
    d = faceidd({**plain_policy(), "lockout": {"max_failures": 3, "window": 600, "duration": 600}})
    genuine = person_images(PERSON)
    enrol(d.state_dir, "root", genuine[:4])
    enrol_random(d.state_dir, "nobody")
    d.start()
    frame_path = d.base / "crafted.jpg"
    frame_path.write_bytes(crafted_progressive_jpeg())
    frame_path.chmod(0o644)
    started = time.monotonic()
    proc = run_as_nobody(CRAFTED % json.dumps([d.socket, str(frame_path)]), timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r[0] for r in results] == ["refused"] * 3 + ["locked_out"], (results, proc.stderr[-2000:], d.logs()[-3000:])
    assert all(r[1].startswith("frame refused: progressive JPEG (SOF2)") for r in results[:3]), results
    assert max(r[2] for r in results) < 2.0 and time.monotonic() - started < 10, results
    owner: list[tuple[float, float, str]] = []
    owner_once(d.socket, jpegs(genuine[:4]), owner)
    assert owner[0][2] == "match" and owner[0][1] < 4.0, owner
    logs = d.logs()
    assert logs.count("verdict=refused") == 3 and "reason='frame refused: progressive JPEG (SOF2)" in logs
    assert "lockout user=nobody" in logs and "Traceback" not in logs
