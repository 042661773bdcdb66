"""faceidd's log as journald and syslog read it: sd-daemon priority prefixes, audit lines to AUTHPRIV."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import syslog
from pathlib import Path

import pytest

from pam_faceid.common import protocol
from pam_faceid.common import scaffold

# In a private mount namespace: /dev becomes a tmpfs holding binds of the real nodes, plus /dev/log bound to
# the test's datagram socket, so faceidd's syslog lines reach the test and nobody else's /dev changes.
PRIVATE_DEV_LOG = r"""
set -e
mount --make-rprivate /
mkdir "$OLD"
mount --rbind /dev "$OLD"
mount -t tmpfs -o mode=755 tmpfs /dev
for f in "$OLD"/* "$OLD"/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    n=${f##*/}
    if [ -L "$f" ]; then cp -P "$f" "/dev/$n"
    elif [ -d "$f" ]; then mkdir "/dev/$n"; mount --rbind "$f" "/dev/$n"
    else touch "/dev/$n"; mount --bind "$f" "/dev/$n"; fi
done
rm -f /dev/log; touch /dev/log; mount --bind "$SOCK" /dev/log
exec "$@"
"""

AUTHPRIV_INFO = f"<{syslog.LOG_AUTHPRIV | syslog.LOG_INFO}>"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def ask_unenrolled(path: str) -> None:
    with protocol.Client(path, 5) as client:
        assert client.request("hello", protocol.hello_fields("root", "journaltest"), timeout=5).type == "verdict"


def start_with_dev_log(d, tmp_path: Path, env: dict[str, str]) -> socket.socket:
    """Start faceidd with its /dev/log bound to a socket of ours; return that socket."""
    sock_path = tmp_path / "devlog.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(5)
    settings = [f"{k}={v}" for k, v in {"OLD": str(tmp_path / "olddev"), "SOCK": str(sock_path), **env}.items()]
    d.start(["unshare", "-m", "env", *settings, "sh", "-c", PRIVATE_DEV_LOG, "sh", *d.command()])
    return listener


def test_stderr_lines_carry_priority_prefixes_and_no_ident(faceidd):
    """journald files a line by its <N> prefix (journalctl -p err finds errors) and adds the ident itself."""
    bad = faceidd()
    bad.rewrite_config({"auth": {"timeout": "soon"}})
    proc = subprocess.run(bad.command(), capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin"})
    assert proc.returncode == 2
    assert lines(proc.stderr) and all(line.startswith("<3>") for line in lines(proc.stderr)), proc.stderr
    assert "<3>" + str(bad.config_path) + ": auth.timeout = soon" in proc.stderr

    d = faceidd()
    d.start()
    ask_unenrolled(d.socket)
    logged = lines(d.wait_log("auth user=root service=journaltest"))
    assert any(line.startswith("<6>ready: ") for line in logged), logged
    assert any(line.startswith("<6>auth user=root service=journaltest ") for line in logged), logged
    assert not any(line.startswith("faceidd") or not line.startswith("<") for line in logged), logged


def test_audit_lines_also_go_to_authpriv(faceidd, tmp_path):
    d = faceidd()
    listener = start_with_dev_log(d, tmp_path, {})
    ask_unenrolled(d.socket)
    record = listener.recv(4096).decode()
    assert record.startswith(AUTHPRIV_INFO), record
    assert f"faceidd[{d.proc.pid}]: auth user=root service=journaltest " in record, record
    assert "<6>auth user=root service=journaltest " in d.wait_log("auth user=root")  # and on stderr
    listener.settimeout(0.5)
    try:
        extra = listener.recv(4096).decode()
    except socket.timeout:
        extra = ""
    assert not extra, f"only audit lines go to syslog: {extra}"


def test_under_the_journal_audit_lines_are_filed_once(faceidd, tmp_path):
    """When stderr is the journal ($JOURNAL_STREAM), syslog already brings audit lines there: stderr skips them."""
    d = faceidd()
    d.log_path.touch()
    st = os.stat(d.log_path)
    listener = start_with_dev_log(d, tmp_path, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    ask_unenrolled(d.socket)
    record = listener.recv(4096).decode()
    assert record.startswith(AUTHPRIV_INFO) and "auth user=root service=journaltest " in record, record
    d.stop()
    logged = d.logs()
    assert "<6>ready: " in logged and "<6>stopped" in logged
    assert "auth user=" not in logged, logged


def test_faceid_demo_quotes_faceidds_last_line_without_the_prefix(faceidd):
    """faceid demo's "faceidd did not start: ..." is faceidd's own last line, without its sd-daemon prefix."""
    d = faceidd()
    d.rewrite_config({"auth": {"timeout": "soon"}})
    daemon = scaffold.Daemon(d.config_path, d.log_path)
    try:
        with pytest.raises(scaffold.ScaffoldError):
            daemon.start(timeout=30)
    finally:
        daemon.close()
    raw = d.logs().strip().splitlines()[-1]
    line = scaffold.last_log_line(d.log_path)
    assert re.match(r"^<\d>", raw) and raw.endswith(line), raw  # faceidd's line, its prefix taken off
    assert re.match(r"^/\S+config.yaml: auth.timeout = soon: ", line), line
