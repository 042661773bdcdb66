"""Turn face auth on and off in PAM without ever locking anyone out or letting anyone in.

Two ways, as Debian intends: when ``pam-auth-update`` and our profile
(/usr/share/pam-configs/faceid, installed by install.sh) exist, the profile is
enabled or disabled and pam-auth-update rewrites common-auth; otherwise the
named /etc/pam.d service files are edited, after a timestamped backup.

A face match stands in for the password module only: it takes the route a
right password takes (see face_lines), so every module after the password
still runs. A second line after the last auth rule,
``auth [default=ignore] pam_exec.so quiet seteuid <helper> --password-used``,
tells the daemon that the password was used (``auth.require_password_after``);
its result is ignored, so it can never turn a failure into success (with
pam-auth-update it is the separate ``faceid-password`` profile).

The face line is pam_exec's (the helper, then the password prompt) or, with
libpam-python, the pam_python prompt module's (face or a typed password,
whichever comes first; see pam_prompt). Our lines are found by what they run
(pam_exec or the prompt module with faceid-helper as the program), never by
a comment. No change reaches /etc/pam.d before it is
proven in a private copy (pamproof): the live files are replaced only then,
each atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pam_faceid.common import atomic
from pam_faceid.helper.pam_prompt import unsafe_path
from pam_faceid.pamstack import pamproof
from pam_faceid.pamstack.pamproof import PamConfError

PAM_DIR = pamproof.PAM_DIR
VAR_LIB_PAM = Path("/var/lib/pam")
PROFILE = Path("/usr/share/pam-configs/faceid")
PROFILE_NAME = "faceid"
PASSWORD_PROFILE = Path("/usr/share/pam-configs/faceid-password")
PASSWORD_PROFILE_NAME = "faceid-password"
PASSWORD_FLAG = "--password-used"
REPORT_CONTROL = "[default=ignore]"
SKIP_CONTROL = "[success=1 default=die]"
SKIP_NOTE = "face matched: skip the password module below"
BACKUP_DIR = Path("/var/backups/pam_faceid")
HELPER_NAME = "faceid-helper"
DEFAULT_SERVICES = ("sudo", "sudo-i", "login", "gdm-password", "lightdm", "sddm", "kde", "polkit-1",
                    "gnome-screensaver", "cinnamon-screensaver", "mate-screensaver", "xfce4-screensaver",
                    "xscreensaver", "i3lock", "swaylock", "hyprlock")
"""Services 'faceid pam enable' edits when none are named and pam-auth-update is not used (those present)."""


def helper_path() -> str:
    """This installation's faceid-helper (next to the running Python: the venv's bin)."""
    return str(Path(sys.executable).parent / HELPER_NAME)


INSTALLED_PROMPT_MODULE = Path(sys.prefix) / "pam" / "pam_prompt.py"
"""Where install.sh puts the pam_python module (/opt/pam_faceid/pam/pam_prompt.py): a fixed path with no Python
version in it, so a Python upgrade that moves site-packages cannot turn face unlock off. install.sh owns it."""
PROMPT_MODULE = INSTALLED_PROMPT_MODULE if INSTALLED_PROMPT_MODULE.is_file() else \
    Path(__file__).parent.parent / "helper" / "pam_prompt.py"
"""The module the PAM lines name: the installed one, else (a development checkout) the package's own file."""
PAM_PYTHON_SO = ("/lib/security/pam_python.so", "/usr/lib/x86_64-linux-gnu/security/pam_python.so",
                 "/usr/lib/security/pam_python.so")
STARTS = ("race", "enter", "exec")
"""How the face line starts: race a typed password (pam_python), look only after Enter (pam_python), or pam_exec."""


def pam_python_available() -> bool:
    """True when Debian's libpam-python module is installed (install.sh installs it)."""
    return any(os.path.isfile(path) for path in PAM_PYTHON_SO)


@dataclass(frozen=True)
class FaceStart:
    """Which face line to write: ``start`` from STARTS, and for pam_python the config the module passes on."""

    start: str = "exec"
    config: str | None = None
    module: Path = PROMPT_MODULE


def face_line(helper: str, control: str, how: FaceStart = FaceStart()) -> str:
    """The face line; ``control`` makes a match take the password module's route.

    pam_exec runs the helper; pam_python runs the prompt module, which races
    the helper against a typed password (``abort=die``: Ctrl-C at its prompt
    ends the stack instead of falling through to the password module's own).
    """
    if how.start == "exec":
        return f"auth\t{control}\tpam_exec.so quiet stdout seteuid {helper}"
    if how.start not in STARTS:
        raise PamConfError(f"--start {how.start}: use one of {', '.join(STARTS)}")
    why = unsafe_path(str(how.module))
    if why:  # pam_python runs any script it is given, even one others can write
        raise PamConfError(f"{how.module}: {why}; not putting it in PAM")
    words = [f"helper={helper}"] + ([f"config={how.config}"] if how.config else []) + \
        ([f"start={how.start}"] if how.start != "race" else [])
    if any(any(c.isspace() for c in word) for word in [str(how.module), *words]):
        raise PamConfError("a path with white space cannot go on a PAM line")
    return f"auth\t[abort=die {control.strip('[]')}]\tpam_python.so {how.module} {' '.join(words)}"


def password_line(helper: str, kind: str = "auth") -> str:
    """The report line after the last ``kind`` rule (auth, account); ``[default=ignore]``: its result never counts.

    The auth one also runs after a wrong password in a substack or
    ``required`` stack; the account one runs only after a successful
    authentication. faceidd records a password use when both come from one
    PAM application (protocol: password_used).
    """
    return f"{kind}\t{REPORT_CONTROL}\tpam_exec.so quiet seteuid {helper} {PASSWORD_FLAG}"


def skip_line(was: str | None = None) -> str:
    """After a ``[success=ok default=1]`` face line: a match also skips the password module (pam_permit never fails)."""
    note = f"; it was {json.dumps(was)}" if was is not None else ""
    return f"auth\t{SKIP_CONTROL}\tpam_permit.so\t# {SKIP_NOTE}{note}"


@dataclass(frozen=True)
class Rule:
    """One PAM configuration line without its comment: ``type control module args``, or ``@include file``."""

    index: int
    type: str
    control: str
    module: str
    args: tuple[str, ...]

    @property
    def is_auth(self) -> bool:
        return self.type.lstrip("-") == "auth" or (self.type == "@include" and "auth" in self.module)

    @property
    def is_account(self) -> bool:
        return self.type.lstrip("-") == "account" or (self.type == "@include" and "account" in self.module)

    @property
    def inlines(self) -> bool:
        """Its file's rules are inlined, each counting in jumps (a substack counts as one module)."""
        return self.type == "@include" or self.control == "include"

    @property
    def module_name(self) -> str:
        return os.path.basename(self.module)

    def program(self) -> tuple[str | None, tuple[str, ...]]:
        """For a pam_exec rule: the program it runs and that program's arguments; for our pam_python module on an
        auth line: its ``helper=`` (on a ``password`` line it only reseals the keyring: not a face line); else
        (None, ())."""
        if self.module_name == "pam_python.so" and self.args and os.path.basename(self.args[0]) == PROMPT_MODULE.name \
                and self.type.lstrip("-") == "auth":
            return next((arg[len("helper="):] for arg in self.args[1:] if arg.startswith("helper=")), None), ()
        if self.module_name != "pam_exec.so":
            return None, ()
        for n, arg in enumerate(self.args):
            if arg not in _PAM_EXEC_FLAGS and not arg.startswith(_PAM_EXEC_OPTIONS):
                return arg, self.args[n + 1:]
        return None, ()


_PAM_EXEC_FLAGS = ("debug", "expose_authtok", "seteuid", "quiet", "quiet_log", "stdout")
_PAM_EXEC_OPTIONS = ("log=", "type=")


def parse_rules(lines: list[str]) -> list[Rule]:
    """Every rule of ``lines``, comments dropped (no continuation lines: none in the files we edit)."""
    out = []
    for index, line in enumerate(lines):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        if body.startswith("@include"):
            tokens = body.split()
            out.append(Rule(index, "@include", "", tokens[1] if len(tokens) > 1 else "", ()))
            continue
        match = re.match(r"(\S+)\s+(\[[^\]]*\]|\S+)\s*(.*)$", body)
        if match is None:
            out.append(Rule(index, body, "", "", ()))
            continue
        tokens = match.group(3).split()
        out.append(Rule(index, match.group(1), match.group(2), tokens[0] if tokens else "", tuple(tokens[1:])))
    return out


def _auth_rules(lines: list[str]) -> list[Rule]:
    return [rule for rule in parse_rules(lines) if rule.is_auth]


def is_ours(rule: Rule, helpers: tuple[str, ...] = ()) -> bool:
    """Ours by module and program (pam_exec running faceid-helper, or one of ``helpers``), never by a comment."""
    program, _ = rule.program()
    return program is not None and (os.path.basename(program) == HELPER_NAME or program in helpers)


def is_report(rule: Rule) -> bool:
    return PASSWORD_FLAG in rule.program()[1]


def _is_skip(rule: Rule) -> bool:
    return rule.module_name == "pam_permit.so" and rule.control == SKIP_CONTROL and not rule.args


def enabled_in(text: str, helpers: tuple[str, ...] = ()) -> bool:
    return any(is_ours(rule, helpers) for rule in parse_rules(text.splitlines()))


def services_with_face_auth(pam_dir: Path = PAM_DIR) -> list[str]:
    found = []
    for path in sorted(pam_dir.iterdir()) if pam_dir.is_dir() else []:
        try:
            if path.is_file() and enabled_in(path.read_text(errors="replace")):
                found.append(path.name)
        except OSError:
            continue
    return found


def services_reaching_face(pam_dir: Path = PAM_DIR) -> list[str]:
    """Services whose auth stack, includes and substacks followed, runs the face line (common-* files are what
    services include, not services themselves)."""
    found = []
    for path in sorted(pam_dir.iterdir()) if pam_dir.is_dir() else []:
        if path.name.startswith("common-") or not path.is_file():
            continue
        if any(is_ours(rule) and not is_report(rule) for rule in _flat_auth(path.name, pam_dir)):
            found.append(path.name)
    return found


_PASSWORD_MODULES = ("pam_unix.so", "pam_unix2.so", "pam_sss.so", "pam_ldap.so", "pam_krb5.so", "pam_winbind.so")


def _is_password_rule(rule: Rule) -> bool:
    """The first rule that asks for the password: pam_unix and friends, or an included auth stack."""
    if not rule.is_auth:
        return False
    return rule.type == "@include" or rule.control in ("include", "substack") or rule.module_name in _PASSWORD_MODULES


def _success_action(rule: Rule) -> str | int:
    """What libpam does when ``rule`` succeeds: 'ok', 'done', a jump, or another action word."""
    simple = {"required": "ok", "requisite": "ok", "optional": "ok", "sufficient": "done"}
    if rule.control in simple:
        return simple[rule.control]
    pairs = dict(pair.split("=", 1) for pair in rule.control.strip("[]").split() if "=" in pair)
    action = pairs.get("success", pairs.get("default", "bad"))
    return int(action) if action.isdigit() else action


_FAILS = re.compile(r"(^|\s|\[)\w+=(bad|die)\b|^(required|requisite)$")


def _flat_auth(name: str, pam_dir: Path, seen: tuple[str, ...] = ()) -> list[Rule]:
    """The auth rules of service ``name`` with includes and substacks inlined (unreadable files count as none)."""
    if name in seen or "/" in name:
        return []
    try:
        lines = (pam_dir / name).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[Rule] = []
    for rule in _auth_rules(lines):
        if rule.inlines or rule.control == "substack":
            out += _flat_auth(rule.module, pam_dir, seen + (name,))
        else:
            out.append(rule)
    return out


def _other_requirements(name: str, pam_dir: Path) -> list[str]:
    """Modules besides the password that the included stack ``name`` requires (its pam_deny/pam_permit aside):
    a face match skips the whole stack, so it would skip them (a token, pam_nologin, pam_faillock)."""
    skip = _PASSWORD_MODULES + ("pam_deny.so", "pam_permit.so")
    return [rule.module_name for rule in _flat_auth(name, pam_dir)
            if rule.module_name not in skip and _FAILS.search(rule.control.strip("[]"))]


def _as_substack(line: str, rule: Rule) -> str:
    """``@include X`` / ``auth include X`` as ``auth substack X``: one module for the jump of the skip line."""
    if rule.type == "@include":
        return f"auth\tsubstack\t{rule.module}"
    return re.sub(r"\binclude\b", "substack", line, count=1)


def face_lines(rule: Rule, line: str, helper: str, pam_dir: Path = PAM_DIR,
               how: FaceStart = FaceStart()) -> tuple[list[str], str | None]:
    """The lines to put before the password rule, and its replacement (None: kept).

    A face match takes the route a right password takes, and only that one:
    a password rule that jumps N on success gets a face line jumping N+1; one
    that ends the stack on success (sufficient) a face line that does too;
    one that just succeeds (required, requisite, an included stack) a face
    line whose success counts like the password's and a pam_permit line that
    then skips exactly the password rule. An included stack is made a
    substack so that it is exactly one module to skip, whatever the included
    file holds or will hold.
    """
    if rule.inlines or rule.control == "substack":
        others = _other_requirements(rule.module, pam_dir)
        if others:
            raise PamConfError(f"the included {rule.module} also requires {', '.join(others)}, which a face match "
                               f"would skip with it: enable face auth in {rule.module} itself, or use pam-auth-update")
        replacement = _as_substack(line, rule) if rule.inlines else None
        return [face_line(helper, "[success=ok default=1]", how), skip_line(line if replacement else None)], replacement
    action = _success_action(rule)
    if action == "ok":
        return [face_line(helper, "[success=ok default=1]", how), skip_line()], None
    if action == "done":
        return [face_line(helper, "[success=done default=ignore]", how)], None
    if isinstance(action, int):
        return [face_line(helper, f"[success={action + 1} default=ignore]", how)], None
    raise PamConfError(f"{line.strip()!r}: on success it does {action!r}, not a jump, ok or done: "
                       "add the face line by hand")


def insert_line(text: str, helper: str, pam_dir: Path = PAM_DIR, how: FaceStart = FaceStart()) -> str:
    """``text`` with the face line(s) before the first password rule; jumps over that point are lengthened."""
    lines = text.splitlines()
    auth = _auth_rules(lines)
    rank = next((n for n, rule in enumerate(auth) if _is_password_rule(rule)), None)
    if rank is None:
        raise PamConfError("no password line (pam_unix, @include common-auth, include …) to put face auth "
                           "before; add the line by hand")
    rule = auth[rank]
    new_lines, replacement = face_lines(rule, lines[rule.index], helper, pam_dir, how)
    if replacement is not None:
        if _jumped_into(auth, rank, rank):
            raise PamConfError(f"a rule jumps over {lines[rule.index].strip()!r}, which counts as many modules as "
                               "the included file holds: add the face line by hand")
        lines[rule.index] = replacement
    return _insert_rules(lines, rule.index, rank, new_lines)


def insert_password_line(text: str, helper: str) -> str:
    """``text`` with the password-used lines after its last auth rule and after its last account rule."""
    lines = text.splitlines()
    auth = _auth_rules(lines)
    if not auth:
        raise PamConfError("no auth rule to put the password-used line after; add the line by hand")
    lines = _insert_rules(lines, auth[-1].index + 1, len(auth), [password_line(helper)]).splitlines()
    account = [rule for rule in parse_rules(lines) if rule.is_account]
    if account:  # without an account stack no use is ever confirmed: the safe side (face refused sooner)
        lines.insert(account[-1].index + 1, password_line(helper, "account"))
    return "\n".join(lines) + "\n"


def insert_lines(text: str, helper: str, pam_dir: Path = PAM_DIR, how: FaceStart = FaceStart()) -> str:
    """Both: face auth standing in for the password module, the password-used report after the last auth rule."""
    return insert_password_line(insert_line(text, helper, pam_dir, how), helper)


def _shift_jumps(lines: list[str], auth: list[Rule], rank: int, delta: int, check_inlined: bool) -> None:
    """Lengthen (or shorten) by ``delta`` the jumps of rules before ``rank`` that reach it or beyond.

    With ``check_inlined``, a jump over an included stack is refused: its
    length in modules depends on another file.
    """
    for n, rule in enumerate(auth[:rank]):
        if not rule.control.startswith("["):
            continue
        line = lines[rule.index]

        def shift(match: re.Match[str], n: int = n, line: str = line) -> str:
            jump = int(match.group(2))
            if n + jump < rank:
                return match.group(0)
            if check_inlined and any(r.inlines for r in auth[n + 1:n + jump + 1]):
                raise PamConfError(f"rule {line.strip()!r} jumps over an included stack: add the face line by hand")
            return f"{match.group(1)}={jump + delta}"

        head, bracket, tail = line.partition("[")
        inner, close, rest = tail.partition("]")
        lines[rule.index] = head + bracket + re.sub(r"([\w-]+)=(\d+)", shift, inner) + close + rest


def _jumped_into(auth: list[Rule], before: int, rank: int) -> bool:
    """Does one of the first ``before`` auth rules jump into or past the ``rank``-th one (not just onto it)?"""
    return any(n + int(jump) >= rank for n, rule in enumerate(auth[:before]) if rule.control.startswith("[")
               for jump in re.findall(r"[\w-]+=(\d+)", rule.control))


def _insert_rules(lines: list[str], target: int, rank: int, new_lines: list[str]) -> str:
    """``lines`` with ``new_lines`` inserted at line index ``target``, where the ``rank``-th auth rule was."""
    _shift_jumps(lines, _auth_rules(lines), rank, len(new_lines), check_inlined=True)
    lines[target:target] = new_lines
    return "\n".join(lines) + "\n"


def _drop_rule(lines: list[str], rank: int) -> None:
    auth = _auth_rules(lines)
    _shift_jumps(lines, auth, rank, -1, check_inlined=False)
    del lines[auth[rank].index]


def _was(line: str) -> str | None:
    """The original password line a skip line notes (it was an include made a substack), if any."""
    _, _, note = line.partition(f"# {SKIP_NOTE}; it was ")
    try:
        was = json.loads(note) if note else None
    except ValueError:
        return None
    return was if isinstance(was, str) and "\n" not in was else None


def remove_lines(text: str, helpers: tuple[str, ...] = ()) -> str:
    """``text`` without our lines, jumps that crossed them shortened, a substack made of an include put back."""
    lines = text.splitlines()
    while True:
        auth = _auth_rules(lines)
        rank = next((n for n, rule in enumerate(auth) if is_ours(rule, helpers)), None)
        if rank is None:
            ours = {rule.index for rule in parse_rules(lines) if rule.is_account and is_ours(rule, helpers)}
            return "".join(f"{line}\n" for n, line in enumerate(lines) if n not in ours)
        drop = [rank]
        nxt = auth[rank + 1] if rank + 1 < len(auth) else None
        if nxt is not None and not is_report(auth[rank]) and _is_skip(nxt):
            drop.insert(0, rank + 1)
            was = _was(lines[nxt.index])
            wrapped = auth[rank + 2] if rank + 2 < len(auth) else None
            if was is not None and wrapped is not None and wrapped.control == "substack" \
                    and not _jumped_into(auth, rank, rank + 2):  # a jump written for the substack stays right
                original = parse_rules([was])
                if original and original[0].inlines and original[0].module == wrapped.module:
                    lines[wrapped.index] = was
        for n in drop:
            _drop_rule(lines, n)


def with_programs(text: str, face: str, report: str, helpers: tuple[str, ...] = ()) -> str:
    """``text`` with the program of our face lines replaced by ``face`` and of our report lines by ``report``
    (the proof's stand-ins); other lines as they are."""
    lines = text.splitlines()
    for rule in parse_rules(lines):
        if not is_ours(rule, helpers):
            continue
        if rule.module_name == "pam_python.so":
            args = [f"helper={face}" if arg.startswith("helper=") else arg for arg in rule.args]
        else:
            _, program_args = rule.program()
            options = rule.args[:len(rule.args) - len(program_args) - 1]
            args = [*options, report if is_report(rule) else face]
        lines[rule.index] = f"{rule.type}\t{rule.control}\t{rule.module} {' '.join(args)}"
    return "\n".join(lines) + "\n"


def _write_like(path: Path, text: str | bytes, like: Path | None = None) -> None:
    """Replace ``path`` atomically, keeping its owner and mode (or those of ``like``)."""
    st = (like or path).stat()
    data = text if isinstance(text, bytes) else text.encode("utf-8")
    atomic.write_bytes(path, data, st.st_mode & 0o7777, (st.st_uid, st.st_gid))


def backup(path: Path, backup_dir: Path = BACKUP_DIR) -> Path:
    """A timestamped copy outside /etc/pam.d (every file there is a service)."""
    backup_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    copy = backup_dir / f"{path.name}.{stamp}"
    shutil.copy2(path, copy)
    return copy


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
                 how: FaceStart = FaceStart()) -> Change:
    """Add or remove our lines in one service file; the new text is proven in a private copy before it is written."""
    path = _service_path(service)
    text = path.read_text()
    helpers = (helper,)
    was_on = enabled_in(text, helpers)
    if not enable and not was_on:
        return Change(service, "unchanged", "face auth already off")
    try:
        # Enabling again brings lines of an older version (or another helper path) up to date.
        new = insert_lines(remove_lines(text, helpers), helper, how=how) if enable else remove_lines(text, helpers)
        if new == text:
            return Change(service, "unchanged", "face auth already on")
        with pamproof.private_copy() as copy:
            before = (service,) if enable and not was_on else ()
            detail = pamproof.prove(copy, [service], before=before, writes={service: new}, helpers=helpers)
    except PamConfError as exc:
        raise PamConfError(f"{path}: {exc}; left as it was") from None
    if path.read_text() != text:
        raise PamConfError(f"{path} changed while the change was proven; left as it was: try again")
    saved = backup(path, backup_dir)
    _write_like(path, new)
    action = "disabled" if not enable else "updated" if was_on else "enabled"
    return Change(service, action, detail, saved)


def pam_auth_update_available() -> bool:
    return shutil.which("pam-auth-update") is not None and PROFILE.is_file()


def toggle_profile(enable: bool, backup_dir: Path = BACKUP_DIR) -> Change:
    """pam-auth-update --enable/--disable faceid and faceid-password, run and proven in a private copy of
    /etc/pam.d and /var/lib/pam; the files it changed there then replace the live ones."""
    flag = "--enable" if enable else "--disable"
    names = [PROFILE_NAME] + ([PASSWORD_PROFILE_NAME] if PASSWORD_PROFILE.is_file() else [])
    command = ["pam-auth-update", "--package", flag, *names]
    with pamproof.private_copy((PAM_DIR, VAR_LIB_PAM)) as copy:
        try:
            detail = pamproof.prove(copy, ["common-auth"], before=("common-auth",) if enable else (),
                                    command=command)
        except PamConfError as exc:
            raise PamConfError(f"{exc}; the common-* files are as they were") from None
        common_auth = copy.copy_of(PAM_DIR / "common-auth")
        if enabled_in(common_auth.read_text() if common_auth.is_file() else "") != enable:
            raise PamConfError(f"pam-auth-update ran but common-auth {'lacks' if enable else 'still has'} the face "
                               "line (local edits? run pam-auth-update by hand); the common-* files are as they were")
        changed = copy.changed(lambda live: live.parent == VAR_LIB_PAM or live.name.startswith("common-"))
        moved = [str(live) for live in changed if not copy.unchanged_since(live)]
        if moved:
            raise PamConfError(f"{', '.join(moved)} changed while the change was proven; the common-* files are as "
                               "they were: try again")
        for live, content in changed.items():
            if live.exists():
                backup(live, backup_dir)
            _write_like(live, content, like=copy.copy_of(live))
    return Change("common-auth", "enabled" if enable else "disabled", f"via pam-auth-update; {detail}", None)


CHECK_SERVICE = "faceid-password-check"
"""The service a password is checked with, in a private copy only: common-auth without our face lines."""


def check_password(user: str, uid: int, password: str) -> tuple[bool, str]:
    """Is ``password`` ``user``'s login password? Asked of the real password modules (common-auth, our face
    lines taken out, in a private copy of /etc/pam.d) so that a face at the camera can never stand in for it."""
    with pamproof.private_copy() as copy:
        pam_copy = copy.mounts[0][0]
        common = pam_copy / "common-auth"
        if common.is_file():
            common.write_text(remove_lines(common.read_text()))
        (pam_copy / CHECK_SERVICE).write_text("auth include common-auth\naccount required pam_permit.so\n")
        wrap = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind "$1" /etc/pam.d && shift && exec "$@"', "sh", str(pam_copy))
        return pamproof._authenticate(CHECK_SERVICE, user, uid, password, wrap)
