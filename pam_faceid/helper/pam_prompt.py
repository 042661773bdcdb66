"""pam_faceid's PAM module for pam_python: the face check and a typed password race at the prompt.

Loaded by Debian's libpam-python, one line before the password module::

    auth [success=done abort=die default=ignore] pam_python.so <this file> helper=<faceid-helper> \
        [config=FILE] [start=enter] [timeout=SECONDS]

(one line in the file; ``faceid pam enable --start race|enter`` writes it).

pam_exec cannot do this: its child has no terminal and no conversation.
This module owns both. It starts faceid-helper as the face child (so every
check of the helper applies, and this file imports nothing of pam_faceid:
pam_python runs the system Python in isolated mode, without the venv) and,
when the caller's terminal is there, reads the password with echo off while
the camera looks:

- a face match ends the prompt: PAM_SUCCESS, no key pressed;
- Enter after a typed password stops the face child at once, sets
  PAM_AUTHTOK and returns PAM_IGNORE, so the password module (pam_unix uses
  an existing PAM_AUTHTOK) checks it;
- Enter on an empty prompt starts the face check (again); ``start=enter``
  (intent mode) starts it only then: a script running sudo gets no face;
- Ctrl-C, Ctrl-D on an empty prompt or no key for ``timeout`` seconds after
  the face check failed: PAM_ABORT (``abort=die`` ends the stack).

Without a terminal (greeters, screen lockers, polkit agents, ``sudo -S``, a
background job) the helper's lines go through the PAM conversation
(PAM_TEXT_INFO, PAM_ERROR_MSG) and the password module asks afterwards; with
``start=enter`` the module first asks "Password, or Enter for face:"
through the conversation.

Run by root (a greeter), the face child also gets a pipe on fd 3: after a
live match at a greeter the helper writes the user's TPM-sealed login
password there and it becomes PAM_AUTHTOK, so pam_gnome_keyring unlocks the
login keyring (``faceid keyring``). On a ``password`` line
(``pam_sm_chauthtok``) the new password goes to the helper through a pipe,
which reseals it.

Every failure (no helper, a bad helper owner, any Python error) returns
PAM_IGNORE or lets pam_python return PAM_SERVICE_ERR, both ignored by the
line: the password prompt follows. The password is never logged and never
passed to the helper; the bytes typed are zeroed after use (the copy handed
to PAM as PAM_AUTHTOK is a Python string, which cannot be wiped).
"""

from __future__ import annotations

import os
import select
import stat
import syslog
import termios
import time

PROMPT = "Password: "
PROMPT_ENTER = "Password, or Enter for face: "
NO_MATCH_NOTICE = "Face not recognised: enter your password."
"""The helper's line when the face check failed (helper.NOTICE_NO_MATCH): shown as PAM_ERROR_MSG."""
PASSWORD_TIMEOUT = 300.0
"""Seconds the prompt waits for a key once no face check runs (sudo's passwd_timeout is 5 minutes)."""
FIRST_LINE_WAIT = 0.25
"""Seconds the race waits for the helper's "Looking for your face…" line, to show it above the prompt."""
LAST_LINE_WAIT = 0.05
"""Seconds to wait for the helper's exit after a line, so the verdict line and the result come together."""
MODE_CHECK = 0.05
"""Seconds between checks that the terminal is still in the prompt's mode (a shell's fg restores its own)."""
STOP_GRACE = 0.2
"""Seconds a stopped face child has to die of SIGTERM before SIGKILL."""
SIGKILL, SIGTERM = 9, 15
"""Numbers, not the signal module: importing it installs a SIGINT handler inside su or sudo."""
CHILD_ENV = ("PAM_USER", "PAM_RUSER", "PAM_SERVICE", "PAM_TTY", "PAM_RHOST")
CTRL_C, CTRL_D, CTRL_U, BACKSPACE, DELETE = 0x03, 0x04, 0x15, 0x08, 0x7F
AUTHTOK_FD = 3
"""The helper's fd for the sealed keyring password (faceid-helper --authtok-fd)."""
MAX_TYPED = 4096
"""Bytes of a typed password kept; keys past it are dropped (PAM's own limit, PAM_MAX_RESP_SIZE, is 512)."""


class Abort(Exception):
    """The person cancelled (Ctrl-C, Ctrl-D) or the prompt timed out: the stack ends."""


def log(pamh, text: str) -> None:
    """One line to syslog AUTHPRIV; the ident is put back after (this runs inside sudo, su, login…)."""
    try:
        syslog.openlog("faceid-prompt", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_INFO, f"user={_item(pamh, 'user') or '-'} service={_item(pamh, 'service') or '-'}: "
                                       f"{text}")
        syslog.closelog()
    except Exception:
        pass


def _item(pamh, name: str) -> str:
    try:
        return getattr(pamh, name) or ""
    except Exception:
        return ""


def parse_args(args: list[str]) -> dict[str, str]:
    """``key=value`` words of the PAM line; helper= is required, start= is race or enter."""
    opts = {"start": "race", "timeout": str(PASSWORD_TIMEOUT)}
    for word in args:
        key, sep, value = word.partition("=")
        if not sep or key not in ("helper", "config", "start", "timeout"):
            raise ValueError(f"unknown argument {word!r}")
        opts[key] = value
    if not opts.get("helper"):
        raise ValueError("no helper= argument")
    if opts["start"] not in ("race", "enter"):
        raise ValueError(f"start={opts['start']}: use race or enter")
    float(opts["timeout"])
    return opts


def unsafe_path(path: str) -> str | None:
    """Why root must not run ``path``: a part not owned by root or writable by others; None when safe."""
    real = os.path.realpath(path)
    part = real
    while True:
        try:
            st = os.stat(part)
        except OSError as exc:
            return f"{part}: {exc.strerror}"
        if st.st_uid != 0:
            return f"{part} is owned by uid {st.st_uid}, not root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{part} is writable by group or others"
        if part == "/":
            return None
        part = os.path.dirname(part)


def ready(fds: list[int], timeout: float | None) -> list[int]:
    """The fds of ``fds`` readable (or hung up) within ``timeout`` seconds (None: no limit); poll, not
    select, since a greeter's fds may be numbered past select's 1024."""
    if not fds:
        time.sleep(timeout or 0)
        return []
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(None if timeout is None else max(0, int(timeout * 1000)))]


# ---------------------------------------------------------------- the face child

class FaceCheck:
    """faceid-helper as a child: its own session and process group, stdout a pipe of notice lines."""

    def __init__(self, helper: str, config: str | None, env: dict[str, str]):
        argv = [helper] + (["--config", config] if config else [])
        read_end, write_end = os.pipe()
        # Root only (a greeter, not sudo: its real uid is the user's): a pipe on fd 3 for the sealed keyring password.
        self.authtok = None
        authtok_write = None
        if os.getuid() == 0 and os.geteuid() == 0:
            self.authtok, authtok_write = os.pipe()
            argv += ["--authtok-fd", str(AUTHTOK_FD)]
        pid = os.fork()
        if pid == 0:
            _exec_child(argv, env, write_end, authtok_write)
        os.close(write_end)
        if authtok_write is not None:
            os.close(authtok_write)
        self.pid = pid
        self.out = read_end
        self.pidfd = os.pidfd_open(pid)
        self.buffer = b""
        self.eof = False
        self.code: int | None = None

    def fds(self) -> list[int]:
        if self.code is not None:
            return []
        return [self.pidfd] if self.eof else [self.out, self.pidfd]

    def lines(self) -> list[str]:
        """Whole lines the helper printed since the last call (non-blocking)."""
        while self.out >= 0 and not self.eof and ready([self.out], 0):
            chunk = os.read(self.out, 4096)
            self.eof = not chunk
            self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        return [line.decode("utf-8", "replace").strip() for line in done if line.strip()]

    def poll(self) -> int | None:
        """The exit code once the child ended (a signal or a lost child: 128+), else None."""
        if self.code is None and ready([self.pidfd], 0):
            self.code = self._reap()
        return self.code

    def _reap(self) -> int:
        try:
            info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED)
        except ChildProcessError:
            return 128  # reaped by the application: no verdict, so no match
        if info is None:
            return 128
        return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status

    def stop(self) -> None:
        """SIGTERM to the child's group, SIGKILL after STOP_GRACE; reaped either way."""
        if self.code is None:
            for signum in (SIGTERM, SIGKILL):
                try:
                    os.killpg(self.pid, signum)
                except ProcessLookupError:
                    pass
                if ready([self.pidfd], STOP_GRACE):
                    break
            self.code = self._reap()
        self.close()

    def take_authtok(self, pamh) -> None:
        """After a match: the sealed login password the helper wrote, if any, becomes PAM_AUTHTOK (for
        pam_gnome_keyring); the bytes read are zeroed (the string handed to PAM cannot be)."""
        if self.authtok is None or self.code != 0:
            return
        secret = bytearray(MAX_TYPED + 1)
        view = memoryview(secret)
        size = 0
        try:
            while size < len(secret) and ready([self.authtok], 0):
                got = os.readv(self.authtok, [view[size:]])  # straight into the buffer: no bytes copy left behind
                if not got:
                    break
                size += got
            if 0 < size <= MAX_TYPED:
                pamh.authtok = str(view[:size], "utf-8", "surrogateescape")
                log(pamh, "sealed keyring password set as PAM_AUTHTOK")
        finally:
            view.release()
            secret[:] = bytes(len(secret))

    def close(self) -> None:
        for fd in (self.out, self.pidfd, self.authtok):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.out = self.pidfd = -1
        self.authtok = None


def _exec_child(argv: list[str], env: dict[str, str], out: int, authtok: int | None = None) -> None:
    """In the forked child: a clean process as pam_exec's seteuid makes it, then exec the helper."""
    try:
        os.setsid()
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(null, 2)
        if authtok is not None:
            os.dup2(authtok, AUTHTOK_FD)
            os.set_inheritable(AUTHTOK_FD, True)  # dup2 onto itself leaves the pipe's close-on-exec set
        os.closerange(AUTHTOK_FD + (authtok is not None), 65536)
        gid, uid = os.getegid(), os.geteuid()
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        import signal  # only here: in the parent it would change the application's Ctrl-C

        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for signum in (signal.SIGPIPE, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                       signal.SIGCHLD, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        os.execve(argv[0], argv, env)
    finally:
        os._exit(127)


def child_env(pamh) -> dict[str, str]:
    """What pam_exec would pass: the PAM items as PAM_* variables, and PAM_TYPE."""
    values = {"PAM_USER": _item(pamh, "user"), "PAM_RUSER": _item(pamh, "ruser"),
              "PAM_SERVICE": _item(pamh, "service"), "PAM_TTY": _item(pamh, "tty"),
              "PAM_RHOST": _item(pamh, "rhost")}
    env = {name: values[name] for name in CHILD_ENV if values[name]}
    env["PAM_TYPE"] = "auth"
    return env


# ---------------------------------------------------------------- the terminal

def caller_terminal(pamh) -> int | None:
    """An fd on the caller's controlling terminal when the prompt is ours to take, else None.

    All must hold: PAM_TTY names that terminal, stdin is it (``sudo -S``
    reads a pipe), no X display item (greeters), and this process group is in
    the foreground (a background job leaves the terminal alone).
    """
    if _item(pamh, "xdisplay"):
        return None
    tty = _item(pamh, "tty")
    if not tty:
        return None
    path = tty if tty.startswith("/") else f"/dev/{tty}"
    try:
        with open("/proc/self/stat", "rb") as fh:
            controlling = int(fh.read().rpartition(b")")[2].split()[4])
        wanted = os.stat(path).st_rdev
        stdin = os.fstat(0)
    except (OSError, ValueError, IndexError):
        return None
    if not controlling or wanted != controlling or not stat.S_ISCHR(stdin.st_mode) or stdin.st_rdev != controlling:
        return None
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


class TerminalGuard:
    """A forked watcher that puts the terminal's mode back if this process dies before it can (sudo SIGKILLed at
    the prompt would otherwise leave echo off); released at the prompt's normal end."""

    def __init__(self, fd: int, saved: list):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            _guard_child(fd, saved, read_end, write_end)
        os.close(read_end)
        self.pid, self.pipe = pid, write_end

    def release(self) -> None:
        try:
            os.write(self.pipe, b"x")
        except OSError:
            pass
        os.close(self.pipe)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass  # reaped by the application's own SIGCHLD handler


def _guard_child(fd: int, saved: list, read_end: int, write_end: int) -> None:
    """In the forked guard: only the terminal and the pipe open; at EOF without the release byte, restore."""
    try:
        os.close(write_end)
        import signal  # only here: in the parent it would change the application's Ctrl-C

        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP,
                       signal.SIGTTIN, signal.SIGTTOU):  # SIGTTOU ignored: it may restore from the background
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        low, high = sorted((fd, read_end))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 65536)
        while True:
            try:
                released = os.read(read_end, 1)
                break
            except InterruptedError:
                continue
        if not released:
            termios.tcsetattr(fd, termios.TCSANOW, saved)
    finally:
        os._exit(0)


class Prompt:
    """Echo, line editing and signal keys off for the prompt; the old settings come back in every case.

    A stop and ``fg`` (job control) brings the shell's settings back while
    the prompt goes on: keep_mode() notices and puts ours back. A process
    killed outright cannot restore anything: TerminalGuard does it then.
    """

    QUIET = termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN

    def __init__(self, fd: int):
        self.fd = fd
        self.saved = termios.tcgetattr(fd)
        self.mode = termios.tcgetattr(fd)
        self.guard: TerminalGuard | None = None

    def __enter__(self) -> "Prompt":
        self.mode[3] &= ~self.QUIET
        self.mode[6][termios.VMIN] = 1
        self.mode[6][termios.VTIME] = 0
        self.guard = TerminalGuard(self.fd, self.saved)
        termios.tcsetattr(self.fd, termios.TCSANOW, self.mode)  # TCSANOW: keys typed ahead are kept
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
        finally:
            if self.guard is not None:
                self.guard.release()

    def keep_mode(self) -> bool:
        """Put the prompt's mode back if another process changed it (a shell resuming us); True when it did."""
        if not termios.tcgetattr(self.fd)[3] & self.QUIET:
            return False
        termios.tcsetattr(self.fd, termios.TCSANOW, self.mode)
        return True

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode("utf-8", "replace"))


def _drop_last_char(typed: bytearray) -> None:
    """Backspace: remove one UTF-8 character (its continuation bytes too)."""
    while typed:
        last = typed.pop()
        if last & 0xC0 != 0x80:
            break


def terminal_auth(pamh, fd: int, opts: dict[str, str], env: dict[str, str]) -> int:
    """The race at the terminal; returns the PAM code (see the module docstring)."""
    typed = bytearray()
    face: FaceCheck | None = None
    timeout = float(opts["timeout"])
    prompt_text = PROMPT_ENTER if opts["start"] == "enter" else PROMPT
    with Prompt(fd) as prompt:
        try:
            if opts["start"] == "race":
                face = FaceCheck(opts["helper"], opts.get("config"), env)
                ready(face.fds(), FIRST_LINE_WAIT)  # keys typed meanwhile wait unechoed
                prompt.write("".join(f"{line}\n" for line in face.lines()))
            prompt.write(prompt_text)
            idle_since = time.monotonic()
            while True:
                if prompt.keep_mode():
                    prompt.write(f"\n{prompt_text}")
                if face is not None:
                    lines = "".join(f"{line}\n" for line in face.lines())
                    if lines:  # the verdict line comes just before the exit: no prompt drawn between them
                        ready(face.fds()[-1:], LAST_LINE_WAIT)
                    code = face.poll()
                    lines += "".join(f"{line}\n" for line in face.lines())
                    if code == 0:
                        prompt.write(f"\n{lines}")
                        log(pamh, "face recognised at the prompt")
                        face.take_authtok(pamh)
                        return pamh.PAM_SUCCESS
                    if code is not None:
                        face.close()
                        face = None
                        prompt_text = PROMPT
                        idle_since = time.monotonic()
                    if lines:
                        prompt.write(f"\n{lines}{prompt_text}")
                left = None if face is not None else idle_since + timeout - time.monotonic()
                if left is not None and left <= 0:
                    prompt.write("\n")
                    raise Abort(f"no password typed within {timeout:.0f} s")
                wait = MODE_CHECK if left is None else min(left, MODE_CHECK)
                if fd not in ready([fd] + (face.fds() if face is not None else []), wait):
                    continue
                key = os.read(fd, 1)
                idle_since = time.monotonic()
                if not key or key[0] == CTRL_C or (key[0] == CTRL_D and not typed):
                    prompt.write("\n")
                    raise Abort("cancelled at the prompt" if key else "the terminal closed")
                byte = key[0]
                if byte in (0x0A, 0x0D):
                    if typed:
                        if face is not None:
                            face.stop()
                            face = None
                            log(pamh, "password typed: face check stopped")
                        prompt.write("\n")
                        pamh.authtok = typed.decode("utf-8", "surrogateescape")
                        return pamh.PAM_IGNORE
                    if face is None:
                        face = FaceCheck(opts["helper"], opts.get("config"), env)
                        prompt_text = PROMPT
                elif byte in (BACKSPACE, DELETE):
                    _drop_last_char(typed)
                elif byte == CTRL_U:
                    typed[:] = bytes(len(typed))
                    del typed[:]
                elif (byte >= 0x20 or byte == 0x09) and len(typed) < MAX_TYPED:
                    typed += key
        finally:
            typed[:] = bytes(len(typed))
            if face is not None:
                face.stop()


# ---------------------------------------------------------------- no terminal: the conversation

def say(pamh, text: str) -> None:
    """A line for a graphical prompt (PAM_ERROR_MSG for the failure notice, PAM_TEXT_INFO otherwise)."""
    style = pamh.PAM_ERROR_MSG if text == NO_MATCH_NOTICE else pamh.PAM_TEXT_INFO
    try:
        pamh.conversation(pamh.Message(style, text))
    except Exception:
        pass


def conversation_auth(pamh, opts: dict[str, str], env: dict[str, str]) -> int:
    """Face check with its lines through the conversation; ``start=enter`` asks first (empty answer: face)."""
    if opts["start"] == "enter":
        try:
            reply = pamh.conversation(pamh.Message(pamh.PAM_PROMPT_ECHO_OFF, PROMPT_ENTER))
        except pamh.exception as exc:
            log(pamh, f"conversation failed: {exc}")
            return pamh.PAM_IGNORE
        if reply.resp:
            pamh.authtok = reply.resp
            return pamh.PAM_IGNORE
    face = FaceCheck(opts["helper"], opts.get("config"), env)
    try:
        while face.poll() is None:
            ready(face.fds(), 1.0)
            for line in face.lines():
                say(pamh, line)
        for line in face.lines():
            say(pamh, line)
        face.take_authtok(pamh)
    finally:
        face.stop()
    return pamh.PAM_SUCCESS if face.code == 0 else pamh.PAM_IGNORE


# ---------------------------------------------------------------- PAM entry points

def pam_sm_authenticate(pamh, flags, argv):
    """Face or password, whichever comes first; any failure falls through to the password module."""
    try:
        opts = parse_args(list(argv[1:]))
        if os.geteuid() == 0:
            why = unsafe_path(opts["helper"])
            if why:
                log(pamh, f"not running the helper: {why}")
                return pamh.PAM_IGNORE
        if not _item(pamh, "user"):
            pamh.get_user(None)
        env = child_env(pamh)
        fd = caller_terminal(pamh)
        if fd is None:
            return conversation_auth(pamh, opts, env)
        try:
            return terminal_auth(pamh, fd, opts, env)
        finally:
            os.close(fd)
    except Abort as why:
        log(pamh, str(why))
        return pamh.PAM_ABORT
    except Exception as exc:
        log(pamh, f"falling through to the password: {type(exc).__name__}: {exc}")
        return pamh.PAM_IGNORE


def pam_sm_setcred(pamh, flags, argv):
    return pamh.PAM_IGNORE


PAM_UPDATE_AUTHTOK = 0x2000
RESEAL_WAIT = 15.0
"""Seconds the password change waits for the helper to reseal (the TPM takes about 0.1 s)."""


def pam_sm_chauthtok(pamh, flags, argv):
    """On a ``password`` line after the password module: once it changed the password, the helper reseals the
    user's TPM-sealed keyring password (faceid keyring) with the new one, through a pipe. Never fails the change."""
    try:
        if not flags & getattr(pamh, "PAM_UPDATE_AUTHTOK", PAM_UPDATE_AUTHTOK) or os.geteuid() != 0:
            return pamh.PAM_IGNORE
        opts = parse_args(list(argv[1:]))
        why = unsafe_path(opts["helper"])
        if why:
            log(pamh, f"not running the helper: {why}")
            return pamh.PAM_IGNORE
        new = pamh.authtok
        if not new:
            return pamh.PAM_IGNORE
        env = child_env(pamh)
        env["PAM_TYPE"] = "password"
        secret = bytearray(new.encode("utf-8", "surrogateescape"))
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, secret)
        finally:
            secret[:] = bytes(len(secret))
            os.close(write_end)
        argv_child = [opts["helper"]] + (["--config", opts["config"]] if opts.get("config") else []) + \
            ["--reseal-fd", str(AUTHTOK_FD)]
        null = os.open(os.devnull, os.O_WRONLY)
        pid = os.fork()
        if pid == 0:
            _exec_child(argv_child, env, null, read_end)
        os.close(read_end)
        os.close(null)
        pidfd = os.pidfd_open(pid)
        try:
            if not ready([pidfd], RESEAL_WAIT):
                os.kill(pid, SIGKILL)
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
        finally:
            os.close(pidfd)
    except Exception as exc:
        log(pamh, f"keyring reseal skipped: {type(exc).__name__}: {exc}")
    return pamh.PAM_IGNORE
