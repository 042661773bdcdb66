"""faceidd: the root daemon that holds the model and the enrolments and answers "is this the user?".

Why a daemon: loading the model and every enrolment once keeps each PAM call
under a second, and keeps biometric templates readable by root only while a
screen locker running as the user can still ask. The PAM helper streams
frames over the Unix socket (protocol.py); the daemon decides.

Modules, each importing only those below it (setup.cfg's daemon contract):

- ``server``: serving (systemd, the listener, connections, slots, signals,
  status/reload) and the security model; faceidd's ``main``.
- ``session``: one authentication session and a password_used report:
  who may ask, lockout accounting, the audit lines, snapshots.
- ``engine``: the model and the enrolments, loaded as one State.
- ``decision``: the pure verdict of a session from its frames' scores.
- ``lockout``, ``snapshots``, ``journal``: the state and the logs the
  sessions keep.
"""
