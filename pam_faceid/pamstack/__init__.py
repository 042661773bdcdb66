"""Editing the host's PAM stack: the face line in /etc/pam.d, proven before it is written.

``pamconf`` reads and writes the service files; ``pamproof`` replays a change
in a private mount namespace before it lands. Used by ``faceid pam`` and the
demo, never at authentication time.
"""
