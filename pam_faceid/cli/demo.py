"""faceid demo: the whole face login, for real, on a machine without a camera, with timings.

It starts its own faceidd on a temporary socket and state folder (never the
system one, so real enrolments are not touched), enrols the bundled sample
person (a public-domain photograph, see data/samples/README.md) for a
throwaway local user, and logs that user in through faceid-helper and the real
PAM stack (a temporary /etc/pam.d service file) with an image-folder camera.
Then a different person is shown and refused, and the very frames that let
the sample person in (one photograph moved about, which the first login
accepts with liveness off) are refused once liveness.mode is basic; the
daemon's own verdict and liveness reason are shown. Everything it made (user,
service file, daemon, files) is removed at the end, also on errors or Ctrl-C.

Exit codes: 0 every step behaved as expected; 1 a step did not (the output
says which); 4 not root.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pam_faceid.common import atomic
from pam_faceid.pamstack import pamconf
from pam_faceid.cli import EXIT_FAILURE, CommandError
from pam_faceid.cli import _common as common

EXAMPLE = """example:
  sudo faceid demo"""

FRAME_SIZE = (640, 480)
ENROL_FRAMES = 5
ATTEMPT_FRAMES = 8


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register 'faceid demo'."""
    parser = sub.add_parser(
        "demo",
        help="run the whole face login for real with a sample person (no camera needed)",
        description="Start a temporary faceidd, enrol the bundled sample person for a throwaway user, log in "
                    "through the PAM helper and the real PAM stack with an image-folder camera, then show a "
                    "different person (refused) and the same photo of the sample person again with liveness on "
                    "(refused). Prints each step with its time and leaves nothing behind.",
        epilog=EXAMPLE,
        formatter_class=common.formatter(),
    )
    parser.set_defaults(run=run)
    return parser


def samples_dir() -> Path:
    return Path(str(resources.files("pam_faceid") / "data" / "samples"))


def sample_image(kind: str) -> np.ndarray:
    """The bundled photo of ``sample_person`` or ``other_person`` as BGR."""
    from pam_faceid.common.images import read_image

    folder = samples_dir() / kind
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    image = read_image(files[0]) if files else None
    if image is None:
        raise CommandError(f"bundled sample images missing in {folder}: reinstall pam_faceid", EXIT_FAILURE)
    return image


def camera_frames(face: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Camera-like frames of one photo: the face placed on a background with small shifts, scale,
    rotation, lighting and sensor noise (all in the image plane: a photo moved about)."""
    import cv2

    rng = np.random.default_rng(seed)
    width, height = FRAME_SIZE
    base = np.linspace(60, 110, width, dtype=np.float32)[None, :, None].repeat(height, 0).repeat(3, 2)
    frames = []
    for _ in range(count):
        scale = rng.uniform(0.9, 1.1)
        angle = rng.uniform(-5, 5)
        dx, dy = rng.uniform(-12, 12, 2)
        gain = rng.uniform(0.85, 1.15)
        side = int(300 * scale)
        face_img = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        face_img = cv2.warpAffine(face_img, matrix, (side, side), borderMode=cv2.BORDER_REPLICATE)
        frame = base.copy()
        x0, y0 = int((width - side) / 2 + dx), int((height - side) / 2 + dy)
        frame[y0:y0 + side, x0:x0 + side] = face_img
        frame = frame * gain + rng.normal(0, 3, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    """Replace the image-folder camera's content with ``frames``."""
    import cv2

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(mode=0o700)
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame_{index:03d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return folder


class Steps:
    """Numbered steps with their times; remembers which expectation failed."""

    def __init__(self) -> None:
        self.number = 0
        self.failures: list[str] = []

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[dict[str, str]]:
        self.number += 1
        print(f"[{self.number}] {text} …", flush=True)
        note: dict[str, str] = {}
        started = time.monotonic()
        yield note
        ms = (time.monotonic() - started) * 1000
        print(f"    {note.get('result', 'done')} ({ms:.0f} ms)", flush=True)

    def expect(self, ok: bool, what: str) -> str:
        if not ok:
            self.failures.append(what)
        return "as expected" if ok else f"UNEXPECTED: {what}"


def _config_text(work: Path, model_path: str, liveness: str | None, service: str) -> str:
    lines = [
        "camera:", f"  device: {work / 'camera'}", "  dark_threshold: 0.0",
        "daemon:", f"  socket: {work / 'faceidd.sock'}", f"  state_dir: {work / 'state'}",
        "auth:", "  abort_if_ssh: false", "  abort_if_lid_closed: false", "  timeout: 6.0", f"  services: [{service}]",
        "model:", f"  path: {model_path or chr(34) * 2}",
    ]
    if liveness is not None:
        lines += ["liveness:", f"  mode: {liveness}"]
    return "\n".join(lines) + "\n"


def _write_config(work: Path, model_path: str, liveness: str | None, service: str) -> Path:
    path = work / "config.yaml"
    atomic.write_bytes(path, _config_text(work, model_path, liveness, service).encode(), 0o600)
    return path


def _program(name: str) -> list[str]:
    """A console script of this installation (next to the running Python), or ``python -m`` as fallback."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = {"faceidd": "pam_faceid.daemon.server", "faceid": "pam_faceid.cli", "faceid-helper": "pam_faceid.helper.main"}[name]
    return [sys.executable, "-m", module]


def _wait_ready(proc: subprocess.Popen, socket_path: str, log: Path, timeout: float = 60.0) -> dict[str, Any]:
    from pam_faceid.common.protocol import DaemonError, request_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            last = re.sub(r"^<\d>", "", " ".join(tail))  # without its sd-daemon priority prefix
            raise CommandError(f"faceidd exited with {proc.returncode}: {last}", EXIT_FAILURE)
        try:
            return request_status(socket_path, timeout=1.0)
        except DaemonError:
            time.sleep(0.1)
    raise CommandError(f"faceidd did not answer within {timeout:.0f} s (log: {log})", EXIT_FAILURE)


def _daemon_verdict(log: Path, user: str) -> dict[str, str]:
    """verdict, liveness and reason of the last audit line faceidd logged for ``user`` (empty if none)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if f"auth user={user} " in line]
    if not lines:
        return {}
    found = dict(re.findall(r" (verdict|liveness)=(\S+)", lines[-1]))
    reason = re.search(r" reason='([^']*)'", lines[-1])
    if reason:
        found["reason"] = reason.group(1)
    return found


def _pam_attempt(user: str, service: str, steps: Steps, expect_success: bool, what: str,
                 also: Callable[[], tuple[bool, str, str]] | None = None) -> str:
    """One PAM login without a password; ``also`` gives a further expectation (ok, shown, what) after it."""
    from pam_faceid.cli.test import run_pam

    ok, code, reason, messages, seconds = run_pam(user, service, "")
    said = " | ".join(m.strip() for m in messages if m.strip()) or "nothing"
    verdict = "PAM success" if ok else f"PAM failure ({reason})"
    text = f"{verdict} in {seconds:.2f} s; PAM said: {said}"
    expected = steps.expect(ok == expect_success, what)
    if also is not None:
        also_ok, shown, also_what = also()
        text += f"; {shown}"
        if expected == "as expected":
            expected = steps.expect(also_ok, also_what)
    return f"{text} -> {expected}"


def run(args: argparse.Namespace) -> int:
    """Run every step; clean up in reverse order whatever happened."""
    common.require_root("faceid demo (it creates a temporary user and PAM service)")
    cfg = common.load_cfg(args)
    model_path = cfg.model.path
    common.load_embedder(cfg)
    sample, other = sample_image("sample_person"), sample_image("other_person")
    steps = Steps()
    cleanup: list[tuple[str, Callable[[], object]]] = []
    work = Path(tempfile.mkdtemp(prefix="faceid-demo-"))
    cleanup.append((f"removed {work}", lambda: shutil.rmtree(work, ignore_errors=True)))
    print(f"faceid demo: sample person = Eileen Collins, different person = Grace Hopper (public-domain photos, "
          f"{samples_dir() / 'README.md'}); model {common.model_dir(cfg)}")
    try:
        return _run_steps(steps, work, model_path, sample, other, cleanup)
    finally:
        print("cleaning up …")
        for what, undo in reversed(cleanup):
            try:
                undo()
                print(f"    {what}")
            except Exception as exc:  # keep cleaning the rest
                print(f"    could not undo ({what}): {exc}", file=sys.stderr)


def _run_steps(steps: Steps, work: Path, model_path: str, sample: np.ndarray, other: np.ndarray,
               cleanup: list[tuple[str, Callable[[], object]]]) -> int:
    from pam_faceid.common.protocol import request_reload

    work.chmod(0o700)
    service = f"faceid-demo-{secrets.token_hex(3)}"  # the demo's own PAM service: the one auth.services holds
    config = _write_config(work, model_path, "off", service)
    photo = camera_frames(sample, ATTEMPT_FRAMES, seed=2)
    write_folder(work / "camera", photo)
    socket_path = str(work / "faceidd.sock")

    with steps.step(f"starting faceidd on {socket_path} (state in {work / 'state'})") as note:
        log = work / "faceidd.log"
        log_fh = open(log, "w")
        proc = subprocess.Popen(_program("faceidd") + ["--config", str(config)], stdout=log_fh,
                                stderr=subprocess.STDOUT)

        def stop() -> None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            log_fh.close()

        cleanup.append((f"stopped faceidd (pid {proc.pid})", stop))
        status = _wait_ready(proc, socket_path, log)
        note["result"] = f"ready, pid {status.get('pid')}, model {(status.get('model') or {}).get('id') or 'loaded'}"

    user = f"fiddemo{secrets.token_hex(3)}"
    with steps.step(f"creating throwaway user {user}") as note:
        # Undo registered first: an interrupt during useradd must not leave the user behind.
        cleanup.append((f"deleted user {user}", lambda: subprocess.run(["userdel", "-f", user], capture_output=True)))
        subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-c", "faceid demo", user], check=True,
                       capture_output=True)
        subprocess.run(["chpasswd"], input=f"{user}:{secrets.token_urlsafe(24)}\n", text=True, check=True,
                       capture_output=True)
        note["result"] = "created (random password nobody knows)"

    enrol = write_folder(work / "enrol", camera_frames(sample, ENROL_FRAMES, seed=1))
    with steps.step(f"enrolling the sample person for {user}: faceid enroll {user} --from {ENROL_FRAMES} frames") \
            as note:
        done = subprocess.run(_program("faceid") + ["--config", str(config), "enroll", user, "--from", str(enrol),
                                                    "--label", "demo"], capture_output=True, text=True, timeout=120)
        lines = done.stdout.strip().splitlines()
        if done.returncode:
            raise CommandError(f"enrolment failed: {(done.stderr.strip().splitlines() or lines or ['?'])[-1]}",
                               EXIT_FAILURE)
        note["result"] = next((line for line in lines if line.startswith("enrolled")), "enrolled")

    service_path = Path("/etc/pam.d") / service
    with steps.step(f"writing PAM service /etc/pam.d/{service}: faceid-helper, then pam_unix") as note:
        helper = " ".join(_program("faceid-helper"))
        cleanup.append((f"removed {service_path}", lambda: service_path.unlink(missing_ok=True)))  # before writing
        service_path.write_text(pamconf.insert_line("auth required pam_unix.so\naccount required pam_permit.so\n",
                                                    f"{helper} --config {config}"))  # the lines 'faceid pam' writes
        note["result"] = "written"

    with steps.step(f"logging in as {user} with the sample person in front of the camera, no password given "
                    f"(liveness off: the sample is one photograph)") as note:
        note["result"] = _pam_attempt(user, service, steps, True, "the enrolled sample person was not let in")

    write_folder(work / "camera", camera_frames(other, ATTEMPT_FRAMES, seed=3))
    with steps.step(f"logging in as {user} with a different person in front of the camera") as note:
        note["result"] = _pam_attempt(user, service, steps, False, "a different person was let in")

    _write_config(work, model_path, "basic", service)
    request_reload(socket_path)
    write_folder(work / "camera", photo)
    with steps.step(f"logging in as {user} with the same photo of the sample person that got in above, now with "
                    f"liveness basic") as note:
        def daemon_said() -> tuple[bool, str, str]:
            said = _daemon_verdict(log, user)
            return (said.get("verdict") == "not_live",
                    f"faceidd: verdict={said.get('verdict', '?')} liveness={said.get('liveness', '?')} "
                    f"({said.get('reason', 'no reason')})", "the photo was not refused by the liveness check")

        note["result"] = _pam_attempt(user, service, steps, False, "a photo was let in with liveness on", daemon_said)

    if steps.failures:
        print(f"demo: {len(steps.failures)} step(s) did not behave as expected: {'; '.join(steps.failures)}")
        return EXIT_FAILURE
    print("demo: every step behaved as expected")
    return 0
