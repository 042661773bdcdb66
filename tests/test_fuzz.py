"""Fuzzing the wire protocol: 100,000 inputs through the decoder in-process, thousands through a live faceidd.

The inputs and checks are in bench/fuzz_inputs.py; bench/fuzz.py sends 100,000 of
them to a live daemon for the README figure. Here: no exception but a
ProtocolError with a known code, no wait on a complete stream, every
connection closed by the daemon within a bound, nothing but valid messages
back, the daemon alive with flat memory and no traceback in its log.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from attack_support import enrol_random, jpegs, plain_policy, reading_notifications
from faceidd_util import model_available
from faces_support import PERSON
from bench.fuzz_inputs import cases, decode_stream, expand, send_to_daemon, vm_rss_kib
from hypothesis import HealthCheck, Phase, given, settings

from pam_faceid.common import protocol

DECODER_CASES = 1000
DECODER_VARIANTS = 100
"""1,000 hypothesis cases x 100 inputs each (the case and 99 mutations) = 100,000 inputs through the decoder."""


def noise_jpegs() -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for shape, params in (((48, 64, 3), []), ((16, 16, 3), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), ((120, 160), [])):
        ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, shape, np.uint8), params)
        assert ok
        out.append(buf.tobytes())
    return out


JPEGS = noise_jpegs()


def test_decoder_takes_100k_inputs_without_a_crash_or_a_wait_and_reaches_past_the_first_message():
    """decode_stream raises on a crash, a foreign error code or a wait; the inputs are not all rejected at the
    first byte either: more than one in twenty decode one message or more, so the fuzz reaches the later states.

    The share depends on which project modules are imported before the test (hypothesis mixes constants
    from loaded local modules into what it draws): about 9 % when this file runs alone, over 10 % after the
    rest of the suite. The bound is half of that; a decoder refusing every message without a payload gives
    3.9 %.
    """
    decoded: collections.Counter[int] = collections.Counter()

    @settings(max_examples=DECODER_CASES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(cases(JPEGS))
    def fuzz(case):
        for data in expand(case, DECODER_VARIANTS):
            decoded[min(decode_stream(data), 3)] += 1

    fuzz()
    total = sum(decoded.values())
    assert total == DECODER_CASES * DECODER_VARIANTS, decoded
    assert decoded[1] + decoded[2] + decoded[3] > total // 20, decoded


def collect_inputs(n_cases: int, variants: int, jpegs: list[bytes]) -> list[bytes]:
    """``n_cases * variants`` fuzz inputs drawn by hypothesis (generate phase only, reproducible)."""
    out: list[bytes] = []

    @settings(max_examples=n_cases, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases(jpegs))
    def draw(case):
        out.extend(expand(case, variants))

    draw()
    return out


def test_live_daemon_survives_fuzzed_connections_with_flat_memory(faceidd, person_images):
    """3,000 inputs on fresh connections, half of them inside a session (after a valid hello) when a model exists."""
    d = faceidd(plain_policy())
    seeds = JPEGS
    prefixes = [b""]
    if model_available():
        enrol_random(d.state_dir, "root")
        seeds = JPEGS + jpegs(person_images(PERSON, limit=2))
        prefixes.append(protocol.encode("hello", protocol.hello_fields("root", "fuzz")))
    d.start()
    inputs = collect_inputs(300, 10, seeds)
    answers: collections.Counter[str] = collections.Counter()
    slowest = 0.0

    def run(batch: list[tuple[int, bytes]]) -> None:
        nonlocal slowest
        for i, data in batch:
            result = send_to_daemon(d.socket, data, prefixes[i % len(prefixes)])
            answers.update(result.answers)
            slowest = max(slowest, result.seconds)

    def send_all(items: list[tuple[int, bytes]]) -> None:
        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(run, items[k::4]) for k in range(4)]:
                future.result()

    numbered = list(enumerate(inputs))
    with reading_notifications(d):
        send_all(numbered[:500])  # warm-up: thread stacks, allocator arenas, the model's first runs
        time.sleep(0.2)
        before = vm_rss_kib(d.proc.pid)
        send_all(numbered[500:])
        time.sleep(0.2)
        after = vm_rss_kib(d.proc.pid)

    assert d.proc.poll() is None, d.logs()
    assert protocol.request_status(d.socket)["pid"] == d.proc.pid
    logs = d.logs()
    assert "Traceback" not in logs and "internal error" not in logs, logs[-3000:]
    assert after - before < 8 * 1024, f"faceidd RSS grew from {before} to {after} KiB over {len(inputs) - 500} inputs"
    assert slowest < 8.0
    errors = {k for k in answers if k.startswith("error:")}
    assert {"error:bad_message", "error:too_large", "error:unknown_type"} <= errors, answers
    if len(prefixes) > 1:
        assert answers["ready"] and answers["verdict"] and answers["progress"], answers
