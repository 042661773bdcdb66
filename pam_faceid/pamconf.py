"""Turn face auth on and off in PAM without ever locking anyone out.

Two ways, as Debian intends: when ``pam-auth-update`` and our profile
(/usr/share/pam-configs/faceid, installed by install.sh) exist, the profile is
enabled or disabled and pam-auth-update rewrites common-auth; otherwise the
named /etc/pam.d service files are edited, the helper line placed before the
first password line, after a timestamped backup.

The face line is the pam_exec line (helper_line) or, with libpam-python, the
pam_python line (prompt_line: face or a typed password, whichever comes first).

Each way also adds a second helper line after the password module,
``auth optional pam_exec.so quiet seteuid <helper> --password-used``: it runs
only once the stack accepted the password, and tells the daemon so, for
``auth.require_password_after`` (with pam-auth-update it is the separate
``faceid-password`` profile, an "Additional" auth block).

Either way the change is kept only after it is proven that the password path
still works: a throwaway local user gets a random password, and the real PAM
stack (python-pam, in a child process whose real uid is that user, as when
the user runs sudo) must accept that password and refuse a wrong one. We
know no real password, so this is what can be proven: the stack parses,
reaches pam_unix, and face auth did not turn into "anything goes". If the
proof fails the backup is restored. The throwaway user is always deleted.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PAM_DIR = Path("/etc/pam.d")
PROFILE = Path("/usr/share/pam-configs/faceid")
PROFILE_NAME = "faceid"
PASSWORD_PROFILE = Path("/usr/share/pam-configs/faceid-password")
PASSWORD_PROFILE_NAME = "faceid-password"
PASSWORD_FLAG = "--password-used"
BACKUP_DIR = Path("/var/backups/pam_faceid")
HELPER_NAME = "faceid-helper"
DEFAULT_SERVICES = ("sudo", "sudo-i", "login", "gdm-password", "lightdm", "sddm", "kde", "polkit-1",
                    "gnome-screensaver", "cinnamon-screensaver", "mate-screensaver", "xfce4-screensaver",
                    "xscreensaver", "i3lock", "swaylock", "hyprlock")
"""Services 'faceid pam enable' edits when none are named and pam-auth-update is not used (those present)."""
CHECK_TIMEOUT = 60.0

_CHECK_CHILD = """
import ctypes, sys
ctypes.CDLL = ctypes.PyDLL  # keep the GIL in libpam: pam_python (the face line) runs Python in this process
import pam
service, user, password = sys.argv[1], sys.argv[2], sys.stdin.read()
handle = pam.pam()
ok = handle.authenticate(user, password, service=service, resetcreds=False)
print(f"{int(bool(ok))} {handle.code} {handle.reason}")
"""


class PamConfError(Exception):
    """A PAM change could not be made or proven; the message says what is left as it was."""


def helper_path() -> str:
    """This installation's faceid-helper (next to the running Python: the venv's bin)."""
    return str(Path(sys.executable).parent / HELPER_NAME)


def helper_line(helper: str) -> str:
    """The PAM line for a service file: on match PAM is done; on anything else it asks for the password."""
    return f"auth\t[success=done default=ignore]\tpam_exec.so quiet stdout seteuid {helper}"


def password_line(helper: str) -> str:
    """The PAM line after the password module: it reports a password login to the daemon, never fails PAM."""
    return f"auth\toptional\tpam_exec.so quiet seteuid {helper} {PASSWORD_FLAG}"


PROMPT_MODULE = Path(__file__).with_name("pam_prompt.py")
"""The pam_python module (face or password, whichever comes first); root-owned 0644 inside the installed package."""
PAM_PYTHON_SO = ("/lib/security/pam_python.so", "/usr/lib/x86_64-linux-gnu/security/pam_python.so",
                 "/usr/lib/security/pam_python.so")
PROMPT_STARTS = ("race", "enter")


def pam_python_available() -> bool:
    """True when Debian's libpam-python module is installed (install.sh installs it)."""
    return any(os.path.isfile(path) for path in PAM_PYTHON_SO)


def prompt_line(helper: str, start: str = "race", config: str | None = None, module: Path = PROMPT_MODULE) -> str:
    """The pam_python line: face and typed password race (``start=enter``: face only after an empty Enter).

    ``abort=die``: Ctrl-C at the module's prompt ends the stack instead of
    falling to the password module's own prompt.
    """
    from pam_faceid.pam_prompt import unsafe_path

    if start not in PROMPT_STARTS:
        raise PamConfError(f"--start {start}: use one of {', '.join(PROMPT_STARTS)}")
    why = unsafe_path(str(module))
    if why:  # pam_python runs any script it is given, even one others can write
        raise PamConfError(f"{module}: {why}; not putting it in PAM")
    words = [f"helper={helper}"] + ([f"config={config}"] if config else []) + ([f"start={start}"] if start != "race"
                                                                               else [])
    if any(any(c.isspace() for c in word) for word in [str(module), *words]):
        raise PamConfError("a path with white space cannot go on a PAM line")
    return f"auth\t[success=done abort=die default=ignore]\tpam_python.so {module} {' '.join(words)}"


def is_helper_line(line: str) -> bool:
    body = line.strip()
    return (bool(body) and not body.startswith("#") and HELPER_NAME in body
            and ("pam_exec" in body or "pam_python" in body))


def enabled_in(text: str) -> bool:
    return any(is_helper_line(line) for line in text.splitlines())


def services_with_face_auth(pam_dir: Path = PAM_DIR) -> list[str]:
    found = []
    for path in sorted(pam_dir.iterdir()) if pam_dir.is_dir() else []:
        try:
            if path.is_file() and enabled_in(path.read_text(errors="replace")):
                found.append(path.name)
        except OSError:
            continue
    return found


_PASSWORD_MODULES = ("pam_unix.so", "pam_unix2.so", "pam_sss.so", "pam_ldap.so", "pam_krb5.so", "pam_winbind.so")


def _is_password_line(tokens: list[str]) -> bool:
    """The first line that asks for the password: pam_unix and friends, or an included auth stack."""
    if not tokens:
        return False
    if tokens[0] == "@include":
        return len(tokens) > 1 and "auth" in tokens[1]
    if tokens[0].lstrip("-") != "auth" or len(tokens) < 3:
        return False
    control, module = tokens[1], tokens[2]
    if control.startswith("["):
        rest = " ".join(tokens[1:])
        module = rest[rest.index("]") + 1:].split()[0] if "]" in rest else module
    if control in ("include", "substack"):
        return True
    return any(module.endswith(name) for name in _PASSWORD_MODULES)


def _rules(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(line index, tokens) of every non-comment, non-blank line (no continuation lines in our edits)."""
    out = []
    for index, line in enumerate(lines):
        body = line.split("#", 1)[0].strip()
        if body:
            out.append((index, body.split()))
    return out


def _auth_rules(lines: list[str]) -> list[tuple[int, list[str]]]:
    return [(i, t) for i, t in _rules(lines) if t[0].lstrip("-") == "auth" or (t[0] == "@include" and "auth" in t[1])]


def insert_line(text: str, helper: str, face_line: str | None = None) -> str:
    """``text`` with the helper line before the first password line; jumps over that point are lengthened.

    A ``[... default=N]`` rule earlier in the auth stack whose jump crosses the
    new line would otherwise land one rule short; an ``@include`` inside such a
    jump makes the count unknowable, so that is refused.
    """
    lines = text.splitlines()
    target = next((i for i, tokens in _rules(lines) if _is_password_line(tokens)), None)
    if target is None:
        raise PamConfError("no password line (pam_unix, @include common-auth, include …) to put face auth "
                           "before; add the line by hand")
    position = {i: n for n, (i, _) in enumerate(_auth_rules(lines))}
    return _insert_rule(lines, target, position[target], face_line or helper_line(helper))


def insert_password_line(text: str, helper: str) -> str:
    """``text`` with the password-used line after its last auth rule (reached only once the password passed)."""
    lines = text.splitlines()
    auth_rules = _auth_rules(lines)
    if not auth_rules:
        raise PamConfError("no auth rule to put the password-used line after; add the line by hand")
    return _insert_rule(lines, auth_rules[-1][0] + 1, len(auth_rules), password_line(helper))


def insert_lines(text: str, helper: str, face_line: str | None = None) -> str:
    """Both lines: face auth (``face_line``, default the pam_exec line) before the password, the report after it."""
    return insert_password_line(insert_line(text, helper, face_line), helper)


def _insert_rule(lines: list[str], target: int, rank: int, new_line: str) -> str:
    """``lines`` with ``new_line`` inserted at line index ``target``, the ``rank``-th auth rule (0-based).

    Jumps of earlier auth rules that reach that rank or beyond are lengthened
    by one, so they land where they did before (also a jump past the end).
    """
    auth_rules = _auth_rules(lines)
    fixed: dict[int, str] = {}
    for n, (i, tokens) in enumerate(auth_rules):
        if i >= target or not tokens[1].startswith("[") or tokens[0] == "@include":
            continue
        line = lines[i]

        def bump(match: re.Match[str]) -> str:
            jump = int(match.group(2))
            if n + jump >= rank:
                crossed = [auth_rules[k][1] for k in range(n + 1, min(n + jump + 1, len(auth_rules)))]
                if any(t[0] == "@include" for t in crossed):
                    raise PamConfError(f"rule {line.strip()!r} jumps over an @include: add the face line by hand")
                return f"{match.group(1)}={jump + 1}"
            return match.group(0)

        head, bracket, tail = line.partition("[")
        inner, close, rest = tail.partition("]")
        new = head + bracket + re.sub(r"(\w+)=(\d+)", bump, inner) + close + rest
        if new != line:
            fixed[i] = new
    out = [fixed.get(i, line) for i, line in enumerate(lines)]
    out.insert(target, new_line)
    return "\n".join(out) + "\n"


def remove_lines(text: str) -> str:
    """``text`` without the helper line(s), and jumps that crossed them shortened again."""
    lines = text.splitlines()
    while True:
        index = next((i for i, line in enumerate(lines) if is_helper_line(line)), None)
        if index is None:
            return "\n".join(lines) + "\n"
        auth_rules = [i for i, t in _rules(lines)
                      if t[0].lstrip("-") == "auth" or (t[0] == "@include" and "auth" in t[1])]
        at = auth_rules.index(index)
        for n, i in enumerate(auth_rules[:at]):
            def shrink(match: re.Match[str], n: int = n) -> str:
                jump = int(match.group(2))
                return f"{match.group(1)}={jump - 1}" if n + jump >= at else match.group(0)

            if "[" in lines[i]:
                head, bracket, tail = lines[i].partition("[")
                inner, close, rest = tail.partition("]")
                lines[i] = head + bracket + re.sub(r"(\w+)=(\d+)", shrink, inner) + close + rest
        del lines[index]


def _write_like(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its owner and mode."""
    st = path.stat()
    tmp = path.with_name(f".{path.name}.faceid-tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, path)


def backup(path: Path, backup_dir: Path = BACKUP_DIR) -> Path:
    """A timestamped copy outside /etc/pam.d (every file there is a service)."""
    backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    copy = backup_dir / f"{path.name}.{stamp}"
    shutil.copy2(path, copy)
    return copy


# ---------------------------------------------------------------- the proof


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
            import pwd

            self.uid = pwd.getpwnam(self.name).pw_uid
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["userdel", "-f", self.name], capture_output=True)


def _authenticate_as(service: str, user: ThrowawayUser, password: str) -> tuple[bool, str]:
    """python-pam in a child whose real uid is the user (euid root, like setuid sudo), so pam_rootok is no shortcut."""
    uid = user.uid
    try:
        done = subprocess.run([sys.executable, "-c", _CHECK_CHILD, service, user.name], input=password,
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              preexec_fn=lambda: os.setresuid(uid, 0, 0), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except subprocess.TimeoutExpired:
        return False, f"PAM did not answer within {CHECK_TIMEOUT:.0f} s"
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode or not last[:1].isdigit():
        return False, f"PAM check crashed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    flag, _, reason = last.partition(" ")
    return flag == "1", reason


def prove_password_path(service: str) -> Proof:
    """Does ``service`` accept a right password and refuse a wrong one, for a fresh local user?"""
    with ThrowawayUser() as user:
        ok, reason = _authenticate_as(service, user, user.password)
        if not ok:
            return Proof(False, f"the right password was refused ({reason})")
        ok, reason = _authenticate_as(service, user, user.password + "x")
        if ok:
            return Proof(False, "a wrong password was accepted: the stack no longer checks passwords")
    return Proof(True, "a right password is accepted and a wrong one refused")


# ---------------------------------------------------------------- changes


@dataclass
class Change:
    service: str
    action: str
    detail: str
    backup: Path | None = None


def _service_path(service: str) -> Path:
    if not service or "/" in service or service.startswith("."):
        raise PamConfError(f"{service!r}: not a PAM service name")
    path = PAM_DIR / service
    if not path.is_file():
        raise PamConfError(f"{path}: no such PAM service file")
    return path


def edit_service(service: str, enable: bool, helper: str, backup_dir: Path = BACKUP_DIR,
                 prove: bool = True, face_line: str | None = None) -> Change:
    """Add or remove the helper line in one service file; keep it only if the password path is proven."""
    path = _service_path(service)
    text = path.read_text()
    if enable == enabled_in(text):
        return Change(service, "unchanged", "face auth already " + ("on" if enable else "off"))
    new = insert_lines(text, helper, face_line) if enable else remove_lines(text)
    if prove:
        before = prove_password_path(service)
        if not before.ok:
            raise PamConfError(f"{path}: the password path does not work even before the change ({before.detail}); "
                               "not touching it")
    saved = backup(path, backup_dir)
    _write_like(path, new)
    if prove:
        try:
            after = prove_password_path(service)
        except BaseException:
            _write_like(path, saved.read_text())
            raise
        if not after.ok:
            _write_like(path, saved.read_text())
            raise PamConfError(f"{path}: after the change {after.detail}; restored the backup {saved}")
    return Change(service, "enabled" if enable else "disabled",
                  "password path proven" if prove else "not proven (--no-check)", saved)


def pam_auth_update_available() -> bool:
    return shutil.which("pam-auth-update") is not None and PROFILE.is_file()


def _common_files() -> list[Path]:
    return sorted(p for p in PAM_DIR.glob("common-*") if p.is_file())


def toggle_profile(enable: bool, backup_dir: Path = BACKUP_DIR, prove: bool = True) -> Change:
    """pam-auth-update --enable/--disable faceid and faceid-password, proven through a service including common-auth."""
    saved = {p: backup(p, backup_dir) for p in _common_files()}
    flag = "--enable" if enable else "--disable"
    names = [PROFILE_NAME] + ([PASSWORD_PROFILE_NAME] if PASSWORD_PROFILE.is_file() else [])
    run = subprocess.run(["pam-auth-update", "--package", flag, *names], capture_output=True, text=True,
                         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if run.returncode:
        raise PamConfError(f"pam-auth-update {flag} {' '.join(names)} failed: "
                           f"{run.stderr.strip() or run.stdout.strip()}")
    common_auth = PAM_DIR / "common-auth"
    state = enabled_in(common_auth.read_text()) if common_auth.exists() else False
    if state != enable:
        raise PamConfError(f"pam-auth-update ran but {common_auth} {'lacks' if enable else 'still has'} the face line "
                           "(local edits? run pam-auth-update by hand)")
    if prove:
        check = PAM_DIR / f"faceid-check-{secrets.token_hex(4)}"
        check.write_text("@include common-auth\n")
        try:
            proof = prove_password_path(check.name)
        finally:
            check.unlink(missing_ok=True)
        if not proof.ok:
            subprocess.run(["pam-auth-update", "--package", "--enable" if not enable else "--disable", *names],
                           capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            for path, copy in saved.items():
                _write_like(path, copy.read_text())
            raise PamConfError(f"after pam-auth-update {proof.detail}; restored the common-* files")
    return Change("common-auth", "enabled" if enable else "disabled",
                  f"via pam-auth-update; {'password path proven' if prove else 'not proven'}", None)
