#!/usr/bin/python3
"""faceid-session-check: a LightDM session that records who it runs as and whether the login keyring is unlocked.

    faceid-session-check.py --out DIR

Writes DIR/session-PID.json and exits (ending the session):
``id`` (the output of /usr/bin/id), ``uid``, a few session variables, and
``keyring``: the login collection's ``Locked`` property read over the
Secret Service (D-Bus), the only trustworthy sign (PAM's return code and
gnome-keyring's log say "unlocked" even after a wrong password). When the
collection is unlocked, the item with attribute ``faceid-check=1`` is looked
up with ``secret-tool`` and its value recorded; when there is none and
DIR/store-value exists, that value is stored first (the first, password
login creates it). A locked collection is never asked to unlock: that would
pop up a prompt. Runs as the user on the system Python with python3-gi.
"""

import argparse
import json
import os
import subprocess
import sys

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

SECRETS = "org.freedesktop.secrets"
LOGIN = "/org/freedesktop/secrets/collection/login"
ATTRIBUTE = ("faceid-check", "1")
ENV_KEYS = ("DISPLAY", "XDG_SEAT", "XDG_SESSION_TYPE", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "HOME")


def login_locked() -> dict:
    """{"locked": bool} from the Secret Service, or {"locked": None, "error": why}."""
    if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):  # never autolaunch a bus nothing would stop
        return {"locked": None, "error": "no session bus (DBUS_SESSION_BUS_ADDRESS unset)"}
    try:
        bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
        reply = bus.call_sync(SECRETS, LOGIN, "org.freedesktop.DBus.Properties", "Get",
                              GLib.Variant("(ss)", ("org.freedesktop.Secret.Collection", "Locked")),
                              GLib.VariantType("(v)"), Gio.DBusCallFlags.NONE, 10000, None)
    except GLib.Error as exc:
        return {"locked": None, "error": exc.message}
    return {"locked": bool(reply.unpack()[0])}


def secret_tool(*args: str, value: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["secret-tool", *args, *ATTRIBUTE], input=value, capture_output=True, text=True,
                          timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description="record the session's user and login keyring state, then exit")
    parser.add_argument("--out", required=True, help="folder the record is written to (writable by the user)")
    args = parser.parse_args()
    record: dict = {"uid": os.getuid(), "id": subprocess.run(["/usr/bin/id"], capture_output=True, text=True).stdout,
                    "env": {key: os.environ.get(key) for key in ENV_KEYS}}
    keyring = login_locked()
    if keyring.get("locked") is False:
        found = secret_tool("lookup")
        store = os.path.join(args.out, "store-value")
        if found.returncode != 0 and os.path.isfile(store):
            with open(store, encoding="utf-8") as fh:
                secret_tool("store", "--label=faceid check", value=fh.read().strip())
            keyring["stored"] = True
            found = secret_tool("lookup")
        keyring["lookup"] = found.stdout if found.returncode == 0 else None
    record["keyring"] = keyring
    path = os.path.join(args.out, f"session-{os.getpid()}.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    os.rename(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
