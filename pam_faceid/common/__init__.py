"""Shared contracts: what every process reads the same way.

The configuration (one schema), the wire protocol between faceid-helper and
faceidd, the enrolment store, image decoding, reading /proc and the one atomic writer. Nothing
here imports any other part of pam_faceid, so the PAM helper can use all of it
without loading the vision runtime.
"""
