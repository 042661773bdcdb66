#!/usr/bin/python3
"""faceid-greeter: a headless LightDM greeter that shows face login working through the real PAM stack.

It has no window: it is a reference and a check, not a login screen. It
reads login requests from a folder and writes what LightDM and PAM did as
JSON lines, so a script (the test suite, or an admin checking a setup) can
see the whole conversation of a real login:

    faceid-greeter.py --control DIR

- DIR/requests/NAME.json: ``{"user": U, "password": P (optional), "session": S (optional)}``;
  taken in name order, deleted once read (DIR/requests must be writable by the greeter user).
- DIR/events.jsonl: one line per event, each with ``pid``, ``t`` (CLOCK_MONOTONIC seconds, comparable
  between processes) and ``request``: ``connected``, ``authenticate``, ``message`` (text, type),
  ``prompt`` (text, type), ``answered``, ``cancelled`` (a prompt with no password to give),
  ``complete`` (authenticated), ``session-starting``, ``session-failed`` (error).

A prompt is answered with the request's password; with none, the login is
cancelled (the face did not do it). The password is never written to the
events. LightDM restarts the greeter after each session, and the new one
takes the next request. Runs on the system Python (``/usr/bin/python3``)
with python3-gi and gir1.2-lightdm-1.
"""

import argparse
import json
import os
import sys
import time

import gi

gi.require_version("LightDM", "1")
from gi.repository import GLib, LightDM  # noqa: E402

POLL_MS = 20
"""How often the requests folder is looked at while idle."""


class Greeter:
    """One LightDM greeter process: takes requests one at a time and records every signal."""

    def __init__(self, control: str) -> None:
        self.control = control
        self.requests = os.path.join(control, "requests")
        self.events = open(os.path.join(control, "events.jsonl"), "a", encoding="utf-8")
        self.request: dict = {}
        self.name = ""
        self.busy = False
        self.loop = GLib.MainLoop()
        self.greeter = LightDM.Greeter()
        self.greeter.connect("show-message", self.on_message)
        self.greeter.connect("show-prompt", self.on_prompt)
        self.greeter.connect("authentication-complete", self.on_complete)

    def event(self, kind: str, **fields: object) -> None:
        record = {"event": kind, "pid": os.getpid(), "t": time.monotonic(), "request": self.name, **fields}
        self.events.write(json.dumps(record) + "\n")
        self.events.flush()

    def run(self) -> None:
        self.greeter.connect_to_daemon_sync()
        self.event("connected", default_session=self.greeter.get_default_session_hint())
        GLib.timeout_add(POLL_MS, self.poll)
        self.loop.run()

    def poll(self) -> bool:
        """Take the next request when idle; keep polling."""
        if self.busy:
            return True
        try:
            names = sorted(n for n in os.listdir(self.requests) if n.endswith(".json"))
        except OSError:
            return True
        if not names:
            return True
        path = os.path.join(self.requests, names[0])
        try:
            with open(path, encoding="utf-8") as fh:
                self.request = json.load(fh)
        except (OSError, ValueError):
            return True  # being written: next time
        os.unlink(path)
        self.name = names[0][:-len(".json")]
        self.busy = True
        self.event("authenticate", user=self.request.get("user"))
        self.greeter.authenticate(self.request.get("user"))
        return True

    def on_message(self, _greeter: LightDM.Greeter, text: str, kind: LightDM.MessageType) -> None:
        self.event("message", text=text, type=kind.value_nick)

    def on_prompt(self, _greeter: LightDM.Greeter, text: str, kind: LightDM.PromptType) -> None:
        self.event("prompt", text=text, type=kind.value_nick)
        password = self.request.get("password")
        if password is None:
            self.event("cancelled")
            self.greeter.cancel_authentication()
            self.busy = False
            return
        self.greeter.respond(password)
        self.event("answered")

    def on_complete(self, _greeter: LightDM.Greeter) -> None:
        ok = bool(self.greeter.get_is_authenticated())
        self.event("complete", authenticated=ok)
        if not ok:
            self.busy = False
            return
        session = self.request.get("session") or self.greeter.get_default_session_hint()
        self.event("session-starting", session=session)
        try:
            self.greeter.start_session_sync(session)
        except GLib.Error as exc:
            self.event("session-failed", error=exc.message)
            self.busy = False


def main() -> int:
    parser = argparse.ArgumentParser(description="headless LightDM greeter driven by request files (see the docstring)")
    parser.add_argument("--control", required=True, help="folder holding requests/ and events.jsonl")
    args = parser.parse_args()
    Greeter(args.control).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
