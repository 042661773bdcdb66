"""A user's login password sealed to this machine's TPM, so that a face login at the greeter unlocks the keyring.

Why: after a face login no password was typed, so pam_gnome_keyring has
nothing to unlock the login keyring with. ``faceid keyring enroll USER``
seals the (PAM-checked) login password to the TPM with tpm2-tools; the
helper, after a face match whose liveness check passed, at a greeter only
(SERVICES), unseals it and hands it to the PAM module through a pipe, which
sets it as PAM_AUTHTOK.

The TPM does the crypto: an object sealed under the owner hierarchy's
primary key (recreated from the TPM's own seed each time), with the
attributes ``fixedtpm|fixedparent`` and a policy on PCR 7 (the Secure Boot
state). The record (``<state_dir>/keyring/<user>.sealed``, root 0600 in a
root 0700 folder) holds the TPM's public and private parts, which no other
TPM can load, and no plaintext. The secret goes to tpm2_create on stdin and
comes back from tpm2_unseal on a pipe: never on a command line, in an
environment or in a file. A digest of the user's /etc/shadow hash is kept
too: when the password changed since the enrolment (``passwd``), the record
is dropped instead of handing on a stale password.

Standard library only: the PAM helper imports this.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import tempfile
import time
from typing import Any

from pam_faceid.common import atomic

SERVICES = frozenset({"lightdm", "gdm-password", "sddm"})
"""The PAM services that get the unsealed password: greeters, where a typed password unlocks the keyring today.
Never sudo, su, polkit, a locker without pam_gnome_keyring, or a network service."""
DEFAULT_TCTI = "device:/dev/tpmrm0"
PCRS = "sha256:7"
FOLDER = "keyring"
SUFFIX = ".sealed"
MAX_SECRET = 512
"""PAM's own limit on an answer (PAM_MAX_RESP_SIZE)."""
TOOL_TIMEOUT = 10.0
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SHADOW = "/etc/shadow"
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)


class SealError(Exception):
    """Sealing, unsealing or reading a record failed; the message says why (never the secret)."""


def folder(state_dir: str) -> str:
    return os.path.join(state_dir, FOLDER)


def record_path(state_dir: str, user: str) -> str:
    if not _USER.match(user):
        raise SealError(f"{user!r} is not a user name")
    return os.path.join(folder(state_dir), user + SUFFIX)


def sealed_users(state_dir: str) -> list[str]:
    """Users with a sealed record, sorted (an unreadable folder counts as none)."""
    try:
        names = os.listdir(folder(state_dir))
    except OSError:
        return []
    return sorted(name[:-len(SUFFIX)] for name in names if name.endswith(SUFFIX) and not name.startswith("."))


def shadow_digest(user: str, shadow: str = SHADOW) -> str | None:
    """SHA-256 of ``user``'s password hash in /etc/shadow (None: not a local password); changes with the password."""
    try:
        with open(shadow, "rb") as fh:
            for line in fh:
                fields = line.rstrip(b"\n").split(b":")
                if len(fields) > 1 and fields[0] == user.encode():
                    return hashlib.sha256(fields[1]).hexdigest()
    except OSError:
        return None
    return None


def _env(tcti: str) -> dict[str, str]:
    return {"PATH": SAFE_PATH, "TPM2TOOLS_TCTI": tcti, "LC_ALL": "C"}


def _run(args: list[str], tcti: str, cwd: str, secret: bytes | bytearray | None = None) -> bytes:
    """One tpm2-tools command in ``cwd``; its stdout. The secret, if any, goes on stdin."""
    try:
        done = subprocess.run(args, input=secret if secret is not None else b"", capture_output=True, cwd=cwd,
                              env=_env(tcti), timeout=TOOL_TIMEOUT)
    except FileNotFoundError:
        raise SealError(f"{args[0]} not found: install tpm2-tools") from None
    except subprocess.TimeoutExpired:
        raise SealError(f"{args[0]}: the TPM did not answer within {TOOL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = next((line for line in lines if "failed" in line.lower()),
                   lines[-1] if lines else f"exit {done.returncode}")
        raise SealError(f"{args[0]}: {why.strip()}")
    return done.stdout


def _flush(tcti: str, cwd: str) -> None:
    """Free the transient slots (a TPM has few: swtpm three); saved contexts stay usable."""
    try:
        _run(["tpm2_flushcontext", "-t"], tcti, cwd)
    except SealError:
        pass


def tpm_problem(tcti: str) -> str | None:
    """Why no TPM can be used through ``tcti`` (None: one answers)."""
    kind, _, where = tcti.partition(":")
    if kind == "device" and not os.path.exists(where or "/dev/tpmrm0"):
        return f"no TPM: {where or '/dev/tpmrm0'} does not exist"
    with tempfile.TemporaryDirectory(prefix="faceid-tpm-") as work:
        try:
            _run(["tpm2_getrandom", "--hex", "8"], tcti, work)
        except SealError as exc:
            return f"no TPM answers through {tcti}: {exc}"
    return None


def _primary(tcti: str, work: str) -> None:
    """The owner hierarchy's primary key as ``primary.ctx``: the same key every time, from the TPM's seed."""
    _run(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", "primary.ctx"], tcti, work)
    _flush(tcti, work)


def seal(secret: bytes | bytearray, tcti: str, user: str, work_parent: str | None = None) -> dict[str, Any]:
    """Seal ``secret`` to the TPM; the record to store (no plaintext in it)."""
    if not secret or len(secret) > MAX_SECRET:
        raise SealError(f"the password must be 1 to {MAX_SECRET} bytes")
    with tempfile.TemporaryDirectory(prefix="faceid-seal-", dir=work_parent) as work:
        os.chmod(work, 0o700)
        _primary(tcti, work)
        _run(["tpm2_pcrread", "-Q", "-o", "pcr.bin", PCRS], tcti, work)
        _run(["tpm2_createpolicy", "-Q", "--policy-pcr", "-l", PCRS, "-f", "pcr.bin", "-L", "policy.dat"], tcti, work)
        _flush(tcti, work)
        _run(["tpm2_create", "-Q", "-C", "primary.ctx", "-g", "sha256", "-L", "policy.dat",
              "-a", "fixedtpm|fixedparent", "-i", "-", "-u", "sealed.pub", "-r", "sealed.priv"], tcti, work,
             secret=secret)
        _flush(tcti, work)
        with open(os.path.join(work, "sealed.pub"), "rb") as pub, open(os.path.join(work, "sealed.priv"), "rb") as priv:
            parts = {"pub": base64.b64encode(pub.read()).decode(), "priv": base64.b64encode(priv.read()).decode()}
    return {"version": 1, "user": user, "tcti": tcti, "pcrs": PCRS, **parts, "shadow": shadow_digest(user),
            "sealed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def unseal(record: dict[str, Any], work_parent: str | None = None) -> bytearray:
    """The secret of ``record``, from the TPM that sealed it (any other refuses: integrity check failed)."""
    tcti = str(record.get("tcti") or DEFAULT_TCTI)
    with tempfile.TemporaryDirectory(prefix="faceid-unseal-", dir=work_parent) as work:
        os.chmod(work, 0o700)
        for part in ("pub", "priv"):
            try:
                data = base64.b64decode(str(record[part]), validate=True)
            except (KeyError, ValueError):
                raise SealError(f"the record has no valid {part} part") from None
            with open(os.path.join(work, f"sealed.{part}"), "wb") as fh:
                fh.write(data)
        _primary(tcti, work)
        _run(["tpm2_load", "-Q", "-C", "primary.ctx", "-u", "sealed.pub", "-r", "sealed.priv", "-c", "sealed.ctx"],
             tcti, work)
        _flush(tcti, work)
        try:
            secret = _unseal_into_buffer(["tpm2_unseal", "-c", "sealed.ctx", "-p", f"pcr:{record.get('pcrs', PCRS)}"],
                                         tcti, work)
        finally:
            _flush(tcti, work)
    return secret


def _unseal_into_buffer(args: list[str], tcti: str, work: str) -> bytearray:
    """tpm2_unseal's stdout read straight into a bytearray the caller can wipe (no bytes copy on the way)."""
    buffer = bytearray(MAX_SECRET + 1)
    view = memoryview(buffer)
    size = 0
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=work, env=_env(tcti))
    except FileNotFoundError:
        raise SealError(f"{args[0]} not found: install tpm2-tools") from None
    try:
        assert proc.stdout is not None and proc.stderr is not None
        while size < len(buffer):
            got = os.readv(proc.stdout.fileno(), [view[size:]])
            if not got:
                break
            size += got
        errors = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        code = proc.wait(TOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SealError(f"{args[0]}: the TPM did not answer within {TOOL_TIMEOUT:.0f} s") from None
    finally:
        view.release()
    if code != 0 or size > MAX_SECRET:
        wipe(buffer)
        why = next((line for line in errors if "failed" in line.lower()),
                   errors[-1] if errors else f"exit {code}, {size} bytes")
        raise SealError(f"{args[0]}: {why.strip()}")
    del buffer[size:]  # shrinking in place: the bytes cut off were never written
    return buffer


def read_secret(fd: int) -> bytearray:
    """A password from the pipe ``fd`` until its end, read straight into a bytearray (wipe it after use)."""
    buffer = bytearray(MAX_SECRET + 1)
    view = memoryview(buffer)
    size = 0
    try:
        while size < len(buffer):
            got = os.readv(fd, [view[size:]])
            if not got:
                break
            size += got
    finally:
        view.release()
    if size > MAX_SECRET:
        wipe(buffer)
        raise SealError(f"more than {MAX_SECRET} bytes: not a password")
    del buffer[size:]
    return buffer


def _check_private(path: str) -> None:
    """Refuse a record or folder that is not root's alone (someone could have planted or read it)."""
    for part in (os.path.dirname(path), path):
        st = os.lstat(part)
        if st.st_uid != 0 or st.st_mode & 0o077 or stat.S_ISLNK(st.st_mode):
            raise SealError(f"{part} is not root's alone (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")


def load(state_dir: str, user: str) -> dict[str, Any] | None:
    """``user``'s record (None: none sealed); a record others could touch is refused."""
    path = record_path(state_dir, user)
    if not os.path.lexists(path):
        return None
    _check_private(path)
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as exc:
        raise SealError(f"{path}: unreadable record ({exc})") from None
    if not isinstance(record, dict) or record.get("version") != 1 or record.get("user") != user:
        raise SealError(f"{path}: not a sealed record of {user}")
    return record


def store(state_dir: str, user: str, record: dict[str, Any]) -> str:
    """Write ``record`` atomically, root 0600 in a root 0700 folder; its path."""
    path = record_path(state_dir, user)
    os.makedirs(folder(state_dir), mode=0o700, exist_ok=True)
    os.chown(folder(state_dir), 0, 0)
    os.chmod(folder(state_dir), 0o700)
    atomic.write_bytes(path, json.dumps(record, indent=1).encode(), 0o600, (0, 0))
    return path


def remove(state_dir: str, user: str) -> bool:
    """Drop ``user``'s record; False when there was none."""
    try:
        os.unlink(record_path(state_dir, user))
    except FileNotFoundError:
        return False
    return True


def stale(record: dict[str, Any], user: str) -> bool:
    """The password changed since it was sealed (the shadow hash moved), so it must not be handed on."""
    return record.get("shadow") != shadow_digest(user)


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def work_folder(state_dir: str) -> str:
    """Root 0700 scratch space for the TPM's context files (never the secret)."""
    path = folder(state_dir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path

