"""faceidd's log: sd-daemon priority prefixes on stderr, and audit lines also to syslog's AUTHPRIV.

journald reads a leading ``<3>`` on a stderr line as that line's priority
(sd-daemon(3)) and files unprefixed lines at INFO, so without the prefix
``journalctl -p err -u faceidd`` finds nothing. journald adds the ident and
pid itself, so the line carries neither. Audit lines (who tried to
authenticate and how it ended, lockouts, password use, refused requests about
another user) also go to AUTHPRIV, as the helper's do, so they reach
/var/log/auth.log and whatever else collects authentication records.
"""

from __future__ import annotations

import logging
import os
import sys
import syslog

AUDIT_LOGGER = "faceidd.audit"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level."""
    if levelno >= logging.CRITICAL:
        return syslog.LOG_CRIT
    if levelno >= logging.ERROR:
        return syslog.LOG_ERR
    if levelno >= logging.WARNING:
        return syslog.LOG_WARNING
    if levelno >= logging.INFO:
        return syslog.LOG_INFO
    return syslog.LOG_DEBUG


class PriorityFormatter(logging.Formatter):
    """Prefix every line (a traceback's too) with ``<N>``, so journald files it at the record's level."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


class AuthprivHandler(logging.Handler):
    """Send records to syslog under the ident and AUTHPRIV facility that ``setup`` opened."""

    def emit(self, record: logging.LogRecord) -> None:
        syslog.syslog(priority(record.levelno), self.format(record))


def _stderr_is_journal() -> bool:
    """True when stderr is the journal's stream (systemd sets $JOURNAL_STREAM to its device:inode)."""
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def _not_audit(record: logging.LogRecord) -> bool:
    return not record.name.startswith(AUDIT_LOGGER)


def setup(ident: str) -> logging.Logger:
    """Log to stderr with priority prefixes; return the audit logger, which also writes to AUTHPRIV.

    The audit logger stays at INFO whatever logging.level says: an admin who
    quiets the daemon keeps the authentication record. Under systemd the
    audit lines already reach the journal through syslog, so stderr skips
    them there rather than filing each twice.
    """
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(PriorityFormatter("%(message)s"))
    if _stderr_is_journal():
        stream.addFilter(_not_audit)
    root = logging.getLogger()
    root.addHandler(stream)
    root.setLevel(logging.INFO)
    syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.setLevel(logging.INFO)
    audit.addHandler(AuthprivHandler())
    return audit
