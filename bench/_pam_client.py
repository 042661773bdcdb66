"""A PAM application for auth_latency.py: one pam_authenticate per line read on stdin, timed.

Run in a clean environment (pam_exec's helper looks at its caller's
environment for SSH_* variables). Prints one JSON line per attempt.
"""

from __future__ import annotations

import json
import sys
import time

import pam


def main() -> int:
    service, user = sys.argv[1], sys.argv[2]
    client = pam.pam()
    for _line in sys.stdin:
        started = time.monotonic()
        ok = client.authenticate(user, "", service=service, resetcreds=False)
        seconds = time.monotonic() - started
        print(json.dumps({"ok": bool(ok), "seconds": seconds, "messages": client.messages,
                          "reason": client.reason}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
