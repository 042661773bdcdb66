"""faceid demo end to end as a subprocess: expected verdicts, and nothing left behind (also after Ctrl-C)."""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
from pathlib import Path

from cli_support import FACEID, model_dir, require_root


def _config(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    path = tmp_path / "config.yaml"
    path.write_text(f"model:\n  path: {model_dir()}\n")
    path.chmod(0o600)
    return path


def _leftovers(tmp: Path) -> list[str]:
    found = [f"/etc/pam.d/{p.name}" for p in Path("/etc/pam.d").glob("faceid-demo-*")]
    found += [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith("fiddemo")]
    found += [str(p) for p in tmp.glob("faceid-demo-*")]
    return found


def test_demo_runs_the_whole_path_and_leaves_nothing(tmp_path):
    require_root()
    config = _config(tmp_path)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([FACEID, "--config", str(config), "demo"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Face recognised." in out and "PAM success" in out
    assert "a different person" in out and "PAM failure" in out
    assert "now with liveness basic" in out and "verdict=not_live liveness=not_live:" in out
    assert "every step behaved as expected" in out
    steps = re.findall(r"^\[(\d+)\] .+ …$", out, re.M)
    timed = re.findall(r"^    (.+) \((\d+) ms\)$", out, re.M)
    assert steps == [str(n) for n in range(1, len(steps) + 1)] and len(steps) >= 7, out  # numbered in order
    assert len(timed) == len(steps), out  # each step ends with its result and its time
    assert not [result for result, _ in timed if "UNEXPECTED" in result], out
    assert _leftovers(tmp_path) == []


def test_demo_cleans_up_when_interrupted(tmp_path):
    require_root()
    config = _config(tmp_path)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([FACEID, "--config", str(config), "demo"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.startswith("[4]"):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stdout.read()
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "cleaning up" in rest and "deleted user" in rest
    assert _leftovers(tmp_path) == []
