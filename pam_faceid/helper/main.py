"""faceid-helper: the program pam_exec runs; looks at the camera and asks faceidd whether it sees the user.

``faceid pam enable`` puts it in a PAM service before the password module, with
the control that makes a match take the password module's route (pamconf)::

    auth [success=2 default=ignore] pam_exec.so quiet stdout seteuid /opt/pam_faceid/bin/faceid-helper

or the pam_python prompt module (pam_prompt) runs it as its face child.

An optional ``--config FILE`` after the path selects another config (else
$FACEID_CONFIG, else /etc/pam_faceid/config.yaml). pam_exec passes the
request in PAM_USER, PAM_SERVICE, PAM_RHOST, PAM_TTY (no PATH, no HOME).

With ``--password-used``, on a line after the password module and one after the last account rule::

    auth    [default=ignore] pam_exec.so quiet seteuid /opt/pam_faceid/bin/faceid-helper --password-used
    account [default=ignore] pam_exec.so quiet seteuid /opt/pam_faceid/bin/faceid-helper --password-used

it only tells the daemon that the password may have authenticated PAM_USER
(for ``auth.require_password_after``); it looks at no camera and prints
nothing. Both lines are needed: the auth line also runs after a wrong password
in a substack or ``required`` stack, and the account stack also runs when
sudo's cached credentials skipped authentication. The daemon records a use
only when the account report follows the auth report of the same PAM
application (protocol: ``password_used``).

Two options only the pam_python module (pam_prompt) passes, each a pipe:
``--authtok-fd FD``: after a live face match at a greeter, write the user's
TPM-sealed login password there (hand_keyring; see common.sealed);
``--reseal-fd FD``: on a ``password`` line, read the new password from it
and reseal (reseal_keyring).

Fail safe, fail fast: every problem (no such user, a caller asking for
another user, face auth disabled, a remote session, a closed lid, no daemon
within 1 s, no camera, a bad config,
any bug) exits non-zero at once with the reason in the journal (syslog
AUTHPRIV, ident faceid-helper), and PAM falls through to the password. Exit 0
only when the daemon's verdict is ``match``.

Imports only config, caller, camera and protocol and the standard library: never
torch, onnxruntime or the face model, so it starts fast. OpenCV (and numpy)
load only for a source that needs decoding (a V4L2 camera, a video), in a
thread while the daemon is asked; an image folder's JPEG files go out as
they are, without them.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import pwd
import signal
import stat
import sys
import syslog
import threading
import time
from typing import Any, Mapping, NoReturn

from pam_faceid.helper import caller
from pam_faceid.common import protocol
from pam_faceid.camera import CameraError, FrameSource, sends_as_is
from pam_faceid.common.config import ConfigError, load_config, service_allowed

EXIT_MATCH = 0
EXIT_NOT_RECOGNISED = 1
"""The daemon's verdict was not match (any other protocol.RESULTS: no_match, not_live, locked_out, ...)."""
EXIT_CONFIG = 2
"""Bad or unreadable config, or not run by PAM (no PAM_USER)."""
EXIT_SKIPPED = 3
"""Face auth does not apply here: unknown user, disabled, remote session, lid closed."""
EXIT_NO_DAEMON = 4
"""faceidd not running or not answering within DAEMON_TIMEOUT."""
EXIT_NO_CAMERA = 5
EXIT_INTERNAL = 6
"""An unexpected error or the helper ran out of time: a bug, logged as one line."""

DAEMON_TIMEOUT = 1.0
"""Seconds the daemon has to accept and answer hello before PAM falls through."""
LID_DIR = "/proc/acpi/button/lid"
"""ACPI lists each lid as a folder here (LID0, ...) holding a ``state`` file."""

NOTICE_LOOKING = "Looking for your face…"
NOTICE_MATCH = "Face recognised."
NOTICE_NO_MATCH = "Face not recognised: enter your password."


class Abort(Exception):
    """Stop now with exit ``code``; the message is the reason logged."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


def _stderr_is_private() -> bool:
    """False when stderr is the same pipe as stdout, as pam_exec's ``stdout`` option makes it.

    Then anything written to stderr would be shown to the person at the
    prompt, and they must see no more than the verdict.
    """
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return not ((out.st_dev, out.st_ino) == (err.st_dev, err.st_ino) and stat.S_ISFIFO(out.st_mode))


def log(priority: int, message: str) -> None:
    """One line to syslog (AUTHPRIV, the journal) and to stderr when stderr is not shown to the user."""
    try:
        syslog.syslog(priority, message)
    except Exception:
        pass
    if _stderr_is_private():
        try:
            print(f"faceid-helper: {message}", file=sys.stderr, flush=True)
        except Exception:
            pass


def notice(enabled: bool, text: str) -> None:
    """A state line for the person at the prompt (pam_exec ``stdout`` shows our stdout)."""
    if enabled:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except Exception:
            pass


def lid_closed(lid_dir: str | None = None) -> bool:
    """True when every lid ACPI reports in ``lid_dir`` (default LID_DIR) says "closed" (no lid, as on desktops: False)."""
    lid_dir = lid_dir or LID_DIR
    try:
        lids = os.listdir(lid_dir)
    except OSError:
        return False
    states = []
    for lid in lids:
        try:
            with open(os.path.join(lid_dir, lid, "state")) as fh:
                states.append(fh.read().lower())
        except OSError:
            continue
    return bool(states) and all("closed" in s for s in states)


def _arm_watchdog(seconds: float) -> None:
    """Never hang PAM: SIGALRM logs and exits; faulthandler's C thread exits even if Python is stuck in C."""
    def on_alarm(_signum: int, _frame: Any) -> None:
        log(syslog.LOG_ERR, f"gave up after {seconds:.0f} s: took too long")
        os._exit(EXIT_INTERNAL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds + 1.0, exit=True, file=_devnull())


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGTERM when the PAM application dies (sudo killed at its prompt): no root helper outlives its login.

    Set after exec and the uid changes, which clear it; a parent already gone
    (re-parented before the call) ends the run at once.
    """
    parent = os.getppid()
    try:
        import ctypes  # 1 ms; only here, where it is needed

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent or parent == 1:
        raise Abort(EXIT_INTERNAL, "the PAM application is gone: nothing to answer")


_DEVNULL: Any = None


def _devnull() -> Any:
    global _DEVNULL
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")
    return _DEVNULL


def _preload_opencv() -> None:
    """Import cv2 (most of the start-up of a decoding source) while the main thread talks to the daemon."""
    try:
        import cv2  # noqa: F401
    except Exception:
        pass


def _open_session(socket_path: str, hello: dict[str, str]) -> tuple[protocol.Client, protocol.Message]:
    """Connect and say hello; the daemon must answer within DAEMON_TIMEOUT in all."""
    deadline = time.monotonic() + DAEMON_TIMEOUT
    try:
        client = protocol.Client(socket_path, DAEMON_TIMEOUT)
        answer = client.request("hello", hello, timeout=max(0.05, deadline - time.monotonic()))
    except protocol.DaemonError as exc:
        raise Abort(EXIT_NO_DAEMON, str(exc)) from None
    return client, answer


def authenticate(env: Mapping[str, str], config_path: str | None, authtok_fd: int | None = None) -> int:
    """The whole helper run; returns the exit code or raises Abort.

    With ``authtok_fd`` (the pam_python module's pipe), a live face match at a
    greeter also hands the user's TPM-sealed login password on through it
    (hand_keyring).
    """
    user = env.get("PAM_USER", "")
    if not user:
        raise Abort(EXIT_CONFIG, "PAM_USER is not set: run me from pam_exec")
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise Abort(EXIT_SKIPPED, f"user {user!r} does not exist") from None
    caller_pid = os.getppid()  # the PAM application (sudo, su, a greeter): pam_exec forks and runs us
    why = caller.requester_problem(user, uid, env, caller_pid)
    if why:
        raise Abort(EXIT_SKIPPED, f"{why}: skipped (a face proves only the person asking)")
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise Abort(EXIT_CONFIG, f"config: {exc}") from None
    _arm_watchdog(cfg.auth.timeout + 3.0)
    if not cfg.auth.enabled:
        raise Abort(EXIT_SKIPPED, "face authentication is disabled (auth.enabled: false)")
    service = env.get("PAM_SERVICE", "")
    if not service_allowed(service, cfg.auth.services):
        raise Abort(EXIT_SKIPPED, f"service {service or '(none)'} is not in auth.services: skipped (a face stands in "
                                  "for a password only at this machine's seat)")
    rhost = env.get("PAM_RHOST", "")
    if rhost:
        raise Abort(EXIT_SKIPPED, f"PAM_RHOST={rhost}: a network peer, not the person at the camera: skipped")
    if cfg.auth.abort_if_ssh:
        why = caller.remote_reason(env, caller_pid)
        if why:
            raise Abort(EXIT_SKIPPED, f"{why}: skipped (auth.abort_if_ssh)")
    if cfg.auth.abort_if_lid_closed and lid_closed():
        raise Abort(EXIT_SKIPPED, "laptop lid is closed: skipped (auth.abort_if_lid_closed)")

    preload = None
    if not sends_as_is(cfg.camera.device, cfg.camera.rotate):
        preload = threading.Thread(target=_preload_opencv, name="preload", daemon=True)
        preload.start()
    try:
        hello = protocol.hello_fields(user, service, env.get("PAM_TTY", ""), rhost)
        client, answer = _open_session(cfg.daemon.socket, hello)
        with client:
            if answer.type == "verdict":
                return _finish(answer, user, service, False)
            if answer.type != "ready":
                raise Abort(EXIT_INTERNAL, f"daemon answered hello with {answer.type}")
            timeout = float(answer.get("timeout") or cfg.auth.timeout)
            verdicts: list[protocol.Message] = []
            code = _stream(client, cfg, timeout, user, service, verdicts)
        if code == EXIT_MATCH and authtok_fd is not None and verdicts:
            hand_keyring(cfg.daemon.state_dir, user, service, verdicts[-1], authtok_fd)
        return code
    finally:
        if preload is not None:
            preload.join(timeout=3.0)  # never exit with an import half done in another thread


def _stream(client: protocol.Client, cfg: Any, timeout: float, user: str, service: str,
            verdicts: list[protocol.Message]) -> int:
    """Send frames lock-step until the daemon's verdict, the end of the source or the timeout."""
    shown = cfg.auth.detection_notice
    deadline = time.monotonic() + timeout
    try:
        source = FrameSource.from_config(cfg.camera)
    except CameraError as exc:
        raise Abort(EXIT_NO_CAMERA, f"camera: {exc}") from None
    notice(shown, NOTICE_LOOKING)
    try:
        with source:
            for jpeg in source.jpeg_frames(timeout=timeout):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                client.send("frame", payload=jpeg, timeout=left + 1.0)
                answer = client.recv(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
                if answer.type == "verdict":
                    verdicts.append(answer)
                    return _finish(answer, user, service, shown)
                if answer.type != "progress":
                    raise Abort(EXIT_INTERNAL, f"daemon answered a frame with {answer.type}")
        client.send("end", timeout=1.0)
        answer = client.recv(timeout=1.0)
    except protocol.DaemonError as exc:
        notice(shown, NOTICE_NO_MATCH)
        raise Abort(EXIT_NO_DAEMON, str(exc)) from None
    if answer.type != "verdict":
        raise Abort(EXIT_INTERNAL, f"daemon answered end with {answer.type}")
    verdicts.append(answer)
    return _finish(answer, user, service, shown)


def _finish(answer: protocol.Message, user: str, service: str, shown: bool) -> int:
    result = answer.get("result")
    score = answer.get("score")
    detail = (f"user={user} service={service or '-'} verdict={result} frames={answer.get('frames')} "
              f"score={'-' if score is None else score}")
    if answer.get("reason"):
        detail += f" reason={answer.get('reason')}"
    if result == "match":
        log(syslog.LOG_NOTICE, detail)
        notice(shown, NOTICE_MATCH)
        return EXIT_MATCH
    log(syslog.LOG_INFO, detail)
    notice(shown, NOTICE_NO_MATCH)
    return EXIT_NOT_RECOGNISED


def hand_keyring(state_dir: str, user: str, service: str, verdict: protocol.Message, fd: int) -> bool:
    """Unseal ``user``'s login password and write it to the pipe ``fd``; True when handed on.

    Only a root helper (real and effective uid), at a greeter (sealed.SERVICES),
    after a match whose liveness check passed ("live": not "off", not
    skipped), into a pipe. Every refusal is logged without the secret and
    changes nothing else: the face login stands, the keyring stays locked.
    """
    from pam_faceid.common import sealed

    why = None
    if os.getuid() != 0 or os.geteuid() != 0:
        why = "not run by root"
    elif service not in sealed.SERVICES:
        why = f"service {service or '-'} is not a greeter ({', '.join(sorted(sealed.SERVICES))})"
    elif verdict.get("liveness") != "live":
        why = f"liveness was {verdict.get('liveness') or 'not checked'}, not live"
    else:
        try:
            why = None if stat.S_ISFIFO(os.fstat(fd).st_mode) else f"fd {fd} is not a pipe"
        except OSError:
            why = f"fd {fd} is not open"
    if why:
        log(syslog.LOG_INFO, f"user={user} service={service or '-'}: keyring not unlocked: {why}")
        return False
    secret = bytearray()
    try:
        record = sealed.load(state_dir, user)
        if record is None:
            return False
        if sealed.stale(record, user):
            sealed.remove(state_dir, user)
            log(syslog.LOG_WARNING, f"user={user}: the password changed since it was sealed: sealed secret dropped "
                                    "(faceid keyring enroll to seal the new one)")
            return False
        secret = sealed.unseal(record, sealed.work_folder(state_dir))
        os.write(fd, secret)
    except (sealed.SealError, OSError) as exc:
        log(syslog.LOG_WARNING, f"user={user} service={service}: keyring not unlocked: {exc}")
        return False
    finally:
        sealed.wipe(secret)
        try:
            os.close(fd)
        except OSError:
            pass
    log(syslog.LOG_NOTICE, f"user={user} service={service}: sealed keyring password handed to PAM")
    return True


def reseal_keyring(env: Mapping[str, str], config_path: str | None, fd: int) -> int:
    """After a password change (pam_python's chauthtok): seal the new password, read from the pipe ``fd``, in
    place of PAM_USER's record. Root only; the record is dropped when the shadow hash did not change (no new
    password was set, so what came cannot be trusted) or the TPM fails."""
    from pam_faceid.common import sealed

    user = env.get("PAM_USER", "")
    if not user or env.get("PAM_TYPE") != "password":
        raise Abort(EXIT_CONFIG, "--reseal-fd belongs on a password line run by pam_python")
    if os.getuid() != 0 or os.geteuid() != 0:
        raise Abort(EXIT_SKIPPED, "not run by root: nothing resealed")
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise Abort(EXIT_CONFIG, f"config: {exc}") from None
    state_dir = cfg.daemon.state_dir
    secret = bytearray()
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise Abort(EXIT_CONFIG, f"fd {fd} is not a pipe")
        record = sealed.load(state_dir, user)
        if record is None:
            return EXIT_MATCH
        if not sealed.stale(record, user):
            sealed.remove(state_dir, user)
            raise Abort(EXIT_SKIPPED, f"user={user}: password unchanged after chauthtok: sealed secret dropped")
        secret = sealed.read_secret(fd)
        sealed.store(state_dir, user, sealed.seal(secret, str(record.get("tcti") or sealed.DEFAULT_TCTI), user,
                                                  sealed.work_folder(state_dir)))
    except (sealed.SealError, OSError) as exc:
        sealed.remove(state_dir, user)
        raise Abort(EXIT_INTERNAL, f"user={user}: keyring reseal failed, sealed secret dropped: {exc}") from None
    finally:
        sealed.wipe(secret)
    log(syslog.LOG_NOTICE, f"user={user}: sealed keyring password resealed after a password change")
    return EXIT_MATCH


PASSWORD_TIMEOUT = 0.5
"""Seconds the daemon has to take a password_used report: it must never slow a password login."""


def report_password(env: Mapping[str, str], config_path: str | None) -> int:
    """Tell the daemon the password authenticated PAM_USER; 0 when it recorded that, never a reason to fail PAM."""
    user = env.get("PAM_USER", "")
    if not user:
        raise Abort(EXIT_CONFIG, "PAM_USER is not set: run me from pam_exec")
    stage = env.get("PAM_TYPE", "auth")
    if stage not in ("auth", "account"):
        raise Abort(EXIT_CONFIG, f"--password-used belongs on an auth and an account line, not {stage}")
    if os.geteuid() != 0:
        raise Abort(EXIT_SKIPPED, "password use is reported from root PAM stacks only (faceidd believes no other)")
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        raise Abort(EXIT_CONFIG, f"config: {exc}") from None
    if not cfg.auth.enabled:
        raise Abort(EXIT_SKIPPED, "face authentication is disabled (auth.enabled: false)")
    service = env.get("PAM_SERVICE", "")
    try:
        with protocol.Client(cfg.daemon.socket, PASSWORD_TIMEOUT) as client:
            answer = client.request("password_used", {"user": user, "service": service, "stage": stage},
                                    timeout=PASSWORD_TIMEOUT)
    except protocol.DaemonError as exc:
        raise Abort(EXIT_NO_DAEMON, f"password use of {user} not recorded: {exc}") from None
    if answer.get("recorded") is True:
        log(syslog.LOG_INFO, f"user={user} service={service or '-'} stage={stage}: password use recorded")
        return EXIT_MATCH
    log(syslog.LOG_INFO, f"user={user} service={service or '-'} stage={stage}: password use not recorded: "
                         f"{answer.get('reason')}")
    return EXIT_NOT_RECOGNISED


def _help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter at a fixed width: sizing it to the terminal imports shutil, 3 ms of every login."""
    return argparse.HelpFormatter(prog, width=100)


def main(argv: list[str] | None = None) -> int:
    """The whole helper run; the exit code is what pam_exec turns into success or fall-through (see run())."""
    syslog.openlog("faceid-helper", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    try:
        parser = argparse.ArgumentParser(prog="faceid-helper", description="PAM helper of pam_faceid (run by "
                                         "pam_exec; PAM_USER etc. come from the environment).",
                                         formatter_class=_help_formatter)
        parser.add_argument("--config", help="config file (default: $FACEID_CONFIG or /etc/pam_faceid/config.yaml)")
        parser.add_argument("--authtok-fd", type=int, metavar="FD",
                            help="a pipe from the pam_python module: after a live face match at a greeter, write the "
                                 "user's TPM-sealed login password to it (faceid keyring enroll)")
        parser.add_argument("--reseal-fd", type=int, metavar="FD",
                            help="a pipe from pam_python's chauthtok: the new password, to reseal the user's keyring "
                                 "password with")
        parser.add_argument("--password-used", action="store_true",
                            help="only tell faceidd the password authenticated PAM_USER (a line after the password "
                                 "module, for auth.require_password_after)")
        args = parser.parse_args(argv)
        _arm_watchdog(10.0)
        _die_with_parent()
        if args.password_used:
            return report_password(os.environ, args.config)
        if args.reseal_fd is not None:
            return reseal_keyring(os.environ, args.config, args.reseal_fd)
        return authenticate(os.environ, args.config, args.authtok_fd)
    except Abort as abort:
        log(syslog.LOG_WARNING if abort.code == EXIT_INTERNAL else syslog.LOG_INFO, str(abort))
        return abort.code
    except SystemExit:
        raise
    except BaseException as exc:
        log(syslog.LOG_ERR, f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return EXIT_INTERNAL


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without the interpreter's teardown (a tenth of a login here).

    Nothing is left to clean up that the kernel does not: the syslog lines
    are sent, the socket is closed, the preload thread joined; stdout
    (pam_exec's notices) is flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def run() -> NoReturn:
    """Console script ``faceid-helper``: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


if __name__ == "__main__":
    run()
