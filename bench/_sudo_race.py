"""Typing the password while a stranger is in view: real sudo in a pty, today's pam_exec stack beside the race.

Case (b) of tests/test_prompt.py, timed: the camera shows another person
than the one enrolled, the password is typed 0.2 s after a password prompt
appears, then Enter. With the pam_exec line (``faceid pam enable --start
exec``) pam_unix's prompt appears only once the face check gave up
(auth.timeout); with the pam_python line (``--start race``) it is there at
once and Enter stops the face check. The two stacks take turns attempt by
attempt. Each sudo runs in a private mount namespace over a copy of
/etc/pam.d and a sudoers file naming the temporary user: the real files
are never changed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from bench._common import VENV_BIN, summary

from pam_faceid.pamstack import pamconf

STACKS = ("exec", "race")
LABELS = {"exec": "pam_exec line (today): face, then the password prompt",
          "race": "pam_python line: face or password, whichever first"}
MARK = "SHELL-REACHED"
TYPE_AFTER = 0.2


def stranger_config(values: dict, camera: Path) -> dict:
    """The daemon's config for these runs: ``camera`` in view and no frame cap before auth.timeout.

    An image folder sends frames as fast as the daemon answers (a camera
    sends 30 a second), so without this the cap of 60 frames, not the
    timeout, would end a stranger's session, in well under a second.
    """
    return {**values, "daemon": {**values["daemon"], "max_frames_per_session": 1000},
            "camera": {"device": str(camera)}}


def _namespace_copy(base: Path, user: str, stack: str, config: Path) -> tuple[Path, Path]:
    """A /etc/pam.d copy whose sudo file has the face line of ``stack``, and a sudoers file for ``user``."""
    pam_dir = base / f"pam.d-{stack}"
    shutil.copytree("/etc/pam.d", pam_dir, symlinks=True)
    helper = str(VENV_BIN / pamconf.HELPER_NAME)
    sudo = pam_dir / "sudo"
    how = pamconf.FaceStart("exec") if stack == "exec" else pamconf.FaceStart("race", str(config))
    if stack == "exec":  # pam_exec's helper takes the config from the command line
        helper = f"{helper} --config {config}"
    sudo.write_text(pamconf.insert_lines(sudo.read_text(), helper, how=how))
    sudoers = base / "sudoers"
    sudoers.write_text(f"Defaults lecture=never, timestamp_timeout=0, !use_pty\n{user} ALL=(ALL) ALL\n")
    os.chmod(sudoers, 0o440)
    return pam_dir, sudoers


def _attempt(pexpect, pam_dir: Path, sudoers: Path, user: str, password: str) -> dict:
    mounts = 'mount --bind "$1" /etc/pam.d && mount --bind "$2" /etc/sudoers && shift 2 && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounts, "sh", str(pam_dir), str(sudoers),
            "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "/usr/bin/sudo", "/bin/echo", MARK]
    started = time.monotonic()
    child = pexpect.spawn(argv[0], argv[1:], env={"PATH": "/usr/bin:/bin", "TERM": "dumb"}, timeout=30,
                          encoding="utf-8", codec_errors="replace")
    try:
        child.expect(r"[Pp]assword[^:\r\n]*: ")
        prompt = time.monotonic()
        time.sleep(TYPE_AFTER)
        child.send(password)
        enter = time.monotonic()
        child.send("\r")
        child.expect_exact(MARK)
        shell = time.monotonic()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    if child.exitstatus != 0:
        raise SystemExit(f"auth_latency: sudo failed (exit {child.exitstatus})")
    return {"prompt_s": prompt - started, "enter_to_shell_s": shell - enter, "start_to_shell_s": shell - started}


def run(base: Path, user: str, config: Path, attempts: int, warmup: int) -> dict:
    """Per stack: start to prompt, Enter to shell and start to shell (p50/p95 ms) of sudo with a stranger in view."""
    import pexpect

    password = f"pw-{secrets.token_hex(8)}"
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True, capture_output=True)
    copies = {stack: _namespace_copy(base, user, stack, config) for stack in STACKS}
    samples: dict[str, list[dict]] = {stack: [] for stack in STACKS}
    for i in range(warmup + attempts):
        for stack in STACKS[i % 2:] + STACKS[:i % 2]:
            sample = _attempt(pexpect, *copies[stack], user, password)
            if i >= warmup:
                samples[stack].append(sample)
    out = {}
    for stack, kept in samples.items():
        out[stack] = {"label": LABELS[stack],
                      **{key[:-2] + "_ms": summary([1000 * s[key] for s in kept])
                         for key in ("prompt_s", "enter_to_shell_s", "start_to_shell_s")}}
    return {"attempts": attempts, "warmup": warmup, "type_after_s": TYPE_AFTER, "stacks": out}
