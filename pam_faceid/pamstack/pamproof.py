"""Prove a PAM change in a private copy of /etc/pam.d before the live files change.

The stack is never open between an edit and its proof: the candidate is
written into a copy of /etc/pam.d (for pam-auth-update, that tool runs there,
with a copy of /var/lib/pam), which a child process mounts over /etc/pam.d in
its own mount namespace (``unshare --mount``); only there are the checks run.
The live files are replaced by the caller (pamconf) after a proof passed.

The checks: a throwaway local user gets a random password, and the real PAM
stack (python-pam in a child whose real uid is that user, as when the user
runs sudo) must accept that password and refuse a wrong one. That is done
with the real helper (whatever state faceidd is in) and, so that the answer
does not hang on faceidd's state, again with our lines' program replaced by
stand-ins: the face line by /bin/false (no match, for any reason) and the
password-used line by /bin/true and by /bin/false (faceidd recorded the
report or not). Whatever our lines return short of a face match, a wrong
password must be refused and a right one accepted. We know no real password,
so this is what can be proven: the stack parses, reaches the password module,
and our lines did not turn into "anything goes". The throwaway user is always
deleted; the copy too.
"""

from __future__ import annotations

import json
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

PAM_DIR = Path("/etc/pam.d")
CHECK_TIMEOUT = 60.0
PROOF_TIMEOUT = 300.0
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STAND_INS = (("/bin/false", "/bin/true"), ("/bin/false", "/bin/false"))
"""(face line, password-used line) programs: every way our lines can end without a face match."""

_CHECK_CHILD = """
import os, sys
os.setresuid(int(sys.argv[3]), 0, 0)
import ctypes
ctypes.CDLL = ctypes.PyDLL  # keep the GIL in libpam: a pam_python face line runs Python in this process
import pam
service, user, password = sys.argv[1], sys.argv[2], sys.stdin.read()
handle = pam.pam()
ok = handle.authenticate(user, password, service=service, resetcreds=False)
print(f"{int(bool(ok))} {handle.code} {handle.reason}")
"""


class PamConfError(Exception):
    """A PAM change could not be made or proven; the message says what is left as it was."""


@dataclass
class Proof:
    ok: bool
    detail: str


class ThrowawayUser:
    """A local user with a random password and no login shell, deleted on exit (also on errors)."""

    def __enter__(self) -> "ThrowawayUser":
        self.name = f"fidchk{secrets.token_hex(5)}"
        self.password = secrets.token_urlsafe(24)
        run = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", "-c", "pam_faceid PAM check", self.name],
                             capture_output=True, text=True)
        if run.returncode:
            raise PamConfError(f"cannot create a throwaway user to prove the password path: {run.stderr.strip()}")
        try:
            run = subprocess.run(["chpasswd"], input=f"{self.name}:{self.password}\n", capture_output=True, text=True)
            if run.returncode:
                raise PamConfError(f"cannot set the throwaway user's password: {run.stderr.strip()}")
            self.uid = pwd.getpwnam(self.name).pw_uid
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["userdel", "-f", self.name], capture_output=True)


@dataclass
class PrivateCopy:
    """A copy of /etc/pam.d (and /var/lib/pam) in a root-only folder, and what the live files held then."""

    work: Path
    mounts: list[tuple[Path, Path]] = field(default_factory=list)
    snapshot: dict[Path, bytes] = field(default_factory=dict)

    def copy_of(self, live: Path) -> Path:
        for copy, target in self.mounts:
            if live.parent == target:
                return copy / live.name
        raise ValueError(f"{live} is not in a copied folder")

    def changed(self, wanted: Callable[[Path], bool]) -> dict[Path, bytes]:
        """Live path -> new content, for each ``wanted`` file whose copy differs from what the live one held."""
        out = {}
        for copy, target in self.mounts:
            for path in sorted(copy.iterdir()):
                live = target / path.name
                if wanted(live) and path.is_file() and not path.is_symlink():
                    content = path.read_bytes()
                    if content != self.snapshot.get(live):
                        out[live] = content
        return out

    def unchanged_since(self, live: Path) -> bool:
        try:
            return live.read_bytes() == self.snapshot.get(live)
        except FileNotFoundError:
            return live not in self.snapshot


@contextmanager
def private_copy(folders: tuple[Path, ...] = (PAM_DIR,)) -> Iterator[PrivateCopy]:
    """A fresh copy of ``folders`` (to be mounted over them in the proof), removed afterwards."""
    copy = PrivateCopy(Path(tempfile.mkdtemp(prefix="faceid-pam-")))
    try:
        for n, live in enumerate(folders):
            if not live.is_dir():
                raise PamConfError(f"{live} is not a folder: cannot prove the change in a copy of it")
            target = copy.work / f"{n}-{live.name}"
            shutil.copytree(live, target, symlinks=True)
            copy.mounts.append((target, live))
            for path in live.iterdir():
                if path.is_file() and not path.is_symlink():
                    copy.snapshot[path] = path.read_bytes()
        yield copy
    finally:
        shutil.rmtree(copy.work, ignore_errors=True)


def prove(copy: PrivateCopy, after: list[str], before: tuple[str, ...] = (), writes: dict[str, str] | None = None,
          command: list[str] | None = None, helpers: tuple[str, ...] = ()) -> str:
    """In ``copy``: ``before`` must work as they are; then ``writes`` and ``command`` are applied there, and
    ``after`` (service names) must work, with the real helper (faceid-helper or one of ``helpers``) and with
    stand-ins for it. Raises PamConfError."""
    with ThrowawayUser() as user:
        spec = {"mounts": [[str(c), str(t)] for c, t in copy.mounts], "user": user.name, "uid": user.uid,
                "password": user.password, "before": list(before), "writes": writes or {}, "command": command,
                "after": after, "helpers": list(helpers)}
        argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-I", "-m",
                "pam_faceid.pamstack.pamproof"]
        try:
            done = subprocess.run(argv, input=json.dumps(spec), capture_output=True, text=True, cwd="/",
                                  timeout=PROOF_TIMEOUT, env={"PATH": SAFE_PATH})
        except subprocess.TimeoutExpired:
            raise PamConfError(f"the proof did not finish within {PROOF_TIMEOUT:.0f} s") from None
    try:
        result = json.loads((done.stdout.strip().splitlines() or [""])[-1])
    except ValueError:
        why = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        raise PamConfError(f"the proof in a private copy of {PAM_DIR} could not run: {why}") from None
    if result.get("before") and not result["before"]["ok"]:
        raise PamConfError(f"the password path does not work even before the change ({result['before']['detail']})")
    if result.get("command"):
        raise PamConfError(result["command"])
    if not result["after"]["ok"]:
        raise PamConfError(f"after the change {result['after']['detail']}")
    return result["after"]["detail"]


# ---------------------------------------------------------------- inside the private mount namespace


def _authenticate(service: str, user: str, uid: int, password: str, wrap: tuple[str, ...] = ()) -> tuple[bool, str]:
    """python-pam in a child whose real uid is the user (euid root, like setuid sudo), so pam_rootok is no shortcut;
    ``wrap`` runs it (e.g. in a mount namespace)."""
    try:
        done = subprocess.run([*wrap, sys.executable, "-I", "-c", _CHECK_CHILD, service, user, str(uid)],
                              input=password, capture_output=True, text=True, timeout=CHECK_TIMEOUT, cwd="/",
                              env={"PATH": SAFE_PATH})
    except subprocess.TimeoutExpired:
        return False, f"PAM did not answer within {CHECK_TIMEOUT:.0f} s"
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode or not last[:1].isdigit():
        return False, f"PAM check crashed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    flag, _, reason = last.partition(" ")
    return flag == "1", reason


CHECK_SERVICE = "faceid-password-check"
"""The service a password is checked with, in a private copy only: common-auth without our face lines."""


def check_password(user: str, uid: int, password: str) -> tuple[bool, str]:
    """Is ``password`` ``user``'s login password? Asked of the real password modules (common-auth, our face
    lines taken out, in a private copy of /etc/pam.d) so that a face at the camera can never stand in for it."""
    from pam_faceid.pamstack import pamconf

    with private_copy() as copy:
        pam_copy = copy.mounts[0][0]
        common = pam_copy / "common-auth"
        if common.is_file():
            common.write_text(pamconf.remove_lines(common.read_text()))
        (pam_copy / CHECK_SERVICE).write_text("auth include common-auth\naccount required pam_permit.so\n")
        wrap = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" /etc/pam.d && shift && exec "$@"', "sh", str(pam_copy))
        return _authenticate(CHECK_SERVICE, user, uid, password, wrap)


def _prove_services(names: list[str], spec: dict, stand_ins: bool) -> Proof:
    """Right password accepted, wrong refused, for each service (and its stand-in variants); run side by side."""
    from pam_faceid.pamstack import pamconf

    checks: list[tuple[str, str]] = []
    for name in names:
        checks.append((name, ""))
        text = (PAM_DIR / name).read_text()
        for face, report in STAND_INS if stand_ins else ():
            variant = pamconf.with_programs(text, face, report, tuple(spec["helpers"]))
            if variant == text:
                break
            alias = f"faceid-proof-{secrets.token_hex(5)}"
            (PAM_DIR / alias).write_text(variant)
            checks.append((alias, f" with our lines replaced by stand-ins (face line {face}, "
                                  f"password-used line {report})"))
    jobs = [(service, what, password, password == spec["password"]) for service, what in checks
            for password in (spec["password"], spec["password"] + "x")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: _authenticate(job[0], spec["user"], spec["uid"], job[2]), jobs))
    for (service, what, _, right), (ok, reason) in zip(jobs, answers):
        if right and not ok:
            return Proof(False, f"the right password was refused{what} ({reason})")
        if not right and ok:
            return Proof(False, f"a wrong password was accepted{what}: the stack no longer checks passwords")
    extra = ", with the real helper and with stand-ins for it" if len(checks) > len(names) else ""
    return Proof(True, f"proven: a right password is accepted and a wrong one refused{extra}")


def _main() -> int:
    """The child under ``unshare --mount``: mount the copies, prove, change, prove; one JSON line on stdout."""
    spec = json.load(sys.stdin)
    for copy, target in spec["mounts"]:
        subprocess.run(["mount", "--bind", copy, target], check=True, capture_output=True)
    result: dict[str, object] = {}
    if spec["before"]:
        before = _prove_services(spec["before"], spec, stand_ins=False)
        result["before"] = before.__dict__
        if not before.ok:
            print(json.dumps(result))
            return 0
    for name, text in spec["writes"].items():
        (PAM_DIR / name).write_text(text)
    if spec["command"]:
        run = subprocess.run(spec["command"], capture_output=True, text=True,
                             env={"PATH": SAFE_PATH, "DEBIAN_FRONTEND": "noninteractive"})
        if run.returncode:
            result["command"] = (f"{' '.join(spec['command'])} failed: "
                                 f"{run.stderr.strip() or run.stdout.strip()}")
            print(json.dumps(result))
            return 0
    result["after"] = _prove_services(spec["after"], spec, stand_ins=True).__dict__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
