"""Load: concurrent sessions from many client processes against one faceidd, through bench/load.py.

The benchmark itself checks that every session got exactly one verdict, the
expected one, matching the daemon's audit line (nothing lost, nothing
crossed) and exits non-zero otherwise; here it runs at test size. The README
figure is its full run (20 processes x 10 sessions with frames).
"""

from __future__ import annotations

import json
import subprocess
import sys

from faceidd_util import MODEL_DIR, REPO, require_model

from pam_faceid.helper import main as helper


def load(tmp_path, *args: str) -> dict:
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "load.py"), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_200_concurrent_sessions_from_20_processes_are_all_answered_in_time(tmp_path):
    """hello -> verdict sessions (no model needed): the connection handling alone, at the full 200."""
    result = load(tmp_path, "--no-frames", "--processes", "20", "--sessions", "10")
    assert result["answered"] == result["audit_lines"] == 200
    assert result["lost"] == result["wrong"] == result["audit_mismatch"] == 0
    assert result["ready_s"]["p95"] < helper.DAEMON_TIMEOUT


def test_concurrent_sessions_with_frames_all_get_their_own_verdict(tmp_path):
    require_model()
    result = load(tmp_path, "--processes", "5", "--sessions", "4", "--model", str(MODEL_DIR))
    assert result["answered"] == result["audit_lines"] == 20
    assert result["lost"] == result["wrong"] == result["audit_mismatch"] == 0
    assert set(result["reference"].values()) <= {"match", "no_match", "no_face"}  # scored, whatever the model
    assert result["ready_s"]["p95"] < helper.DAEMON_TIMEOUT
