"""Faults: kill -9 mid-enrolment and mid-login, a full disk, a read-only state folder, a missing or corrupt
model, a service manager that stops reading. Nothing stored is damaged, PAM falls through to the password
fast, and the next daemon start serves again.
"""

from __future__ import annotations

import time

from faceidd_util import daemon_dir, faceidd  # noqa: F401

from pam_faceid import protocol


def test_a_manager_that_stops_reading_notifications_cannot_hang_reload_or_stop(faceidd):
    """The harness reads NOTIFY_SOCKET only until READY=1; its queue (10 datagrams) then fills up.

    sd_notify used to block forever on the full queue: the 6th reload hung
    holding the reload lock, and SIGTERM could no longer stop the daemon.
    """
    d = faceidd()
    d.start()
    for _ in range(8):
        started = time.monotonic()
        assert protocol.request_reload(d.socket, timeout=5)["ok"]
        assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 3.0
