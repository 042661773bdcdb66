"""The PAM side: what runs inside a login, sudo or screen-locker authentication.

``main`` is faceid-helper (pam_exec's child): it takes frames and asks
faceidd. ``caller`` decides whether this caller may use the face at all.
``pam_prompt`` is the pam_python module that races the face against a typed
password; it imports nothing of pam_faceid. None of this imports the vision
runtime beyond the camera, torch or onnxruntime (tests/test_layers.py).
"""
