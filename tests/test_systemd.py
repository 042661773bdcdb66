"""The systemd units: verify clean, exposure <= 2.5, in step with the config, and the daemon works under their W^X rule."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import pytest
from faceidd_util import FACEIDD, PYTHON, enrol, model_available
from faces_support import PERSON

from pam_faceid.common import config
from pam_faceid.common import protocol

UNITS = Path(__file__).resolve().parents[1] / "systemd"
INSTALLED_FACEIDD = "/opt/pam_faceid/bin/faceidd"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string((UNITS / name).read_text())
    return parser


@pytest.fixture
def unit_copies(tmp_path):
    """The units with ExecStart pointed at the venv's faceidd (verify checks the binary exists)."""
    for name in ("faceidd.service", "faceidd.socket"):
        text = (UNITS / name).read_text().replace(INSTALLED_FACEIDD, str(FACEIDD))
        (tmp_path / name).write_text(text)
    return tmp_path


def test_units_verify_clean(unit_copies):
    proc = subprocess.run(["systemd-analyze", "verify", "faceidd.service", "faceidd.socket"], cwd=unit_copies,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_service_exposure_is_at_most_2_5(unit_copies):
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=25", "./faceidd.service"],
                          cwd=unit_copies, capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for faceidd\.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.5, proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_units_agree_with_the_config_defaults_and_the_daemon():
    socket_unit = read_unit("faceidd.socket")
    service = read_unit("faceidd.service")
    assert socket_unit["Socket"]["ListenStream"] == config.KEYS["daemon.socket"].default
    assert socket_unit["Socket"]["SocketMode"] == "0666"
    assert service["Service"]["Type"] == "notify"
    assert service["Service"]["ExecStart"] == INSTALLED_FACEIDD
    assert "/var/lib/" + service["Service"]["StateDirectory"] == config.KEYS["daemon.state_dir"].default
    assert service["Service"]["RestrictAddressFamilies"] == "AF_UNIX"
    assert service["Service"]["MemoryDenyWriteExecute"] == "yes"


MDWE_WRAPPER = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute= enforces
    print("MDWE unsupported", flush=True)
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not in force")
except OSError:
    pass
from pam_faceid.daemon.server import main
sys.exit(main(sys.argv[1:]))
"""


def test_daemon_works_under_memory_deny_write_execute(faceidd, person_images):
    """MemoryDenyWriteExecute=yes must not break onnxruntime or OpenCV's detector: run faceidd under the same rule.

    Linux >= 6.3 offers the rule per process (prctl PR_SET_MDWE), so this needs no systemd as PID 1.
    """
    d = faceidd()
    if model_available():
        images = person_images(PERSON)
        enrol(d.state_dir, "root", images[:3])
    d.start(command=[str(PYTHON), "-c", MDWE_WRAPPER, "--config", str(d.config_path)], wait=False)
    try:
        d.wait_notify("READY=1")
    except AssertionError:
        if d.proc.poll() == 77:
            pytest.skip("this kernel has no PR_SET_MDWE (Linux >= 6.3)")
        raise
    status = protocol.request_status(d.socket)
    if not model_available():
        pytest.skip("no trained model yet: started under MDWE, but the embedder could not be exercised")
    assert status["model"]["loaded"], status
    with protocol.Client(d.socket, 5) as client:
        assert client.request("hello", protocol.hello_fields("root", "test"), timeout=5).type == "ready"
        ok, buf = cv2.imencode(".jpg", cv2.imread(str(images[5])))
        reply = client.request("frame", payload=buf.tobytes(), timeout=10)
    assert reply.type in ("progress", "verdict") and reply.get("result") != "error", reply.fields
    assert reply.get("reason") is None, reply.fields  # the face was found and embedded under W^X
