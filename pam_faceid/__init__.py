"""pam_faceid: face unlock for Linux through PAM.

Data flows one way: camera -> faces -> embedder -> decision. The subpackages
are the roles, and their import direction is a contract the tests check
(tests/test_layers.py, import-linter), each layer importing only those below:

- ``cli``: faceid, the admin commands, one module each;
- ``model`` (building and measuring models) and ``pamstack`` (editing /etc/pam.d);
- ``daemon`` (faceidd) and ``helper`` (the PAM side), which never import each other;
- ``vision``: faces, embedder, liveness;
- ``camera``: frame sources (V4L2, video files, image folders), all the helper may see of vision;
- ``common``: the shared contracts: config, protocol, store (and per-user heads), images, atomic writes.

The helper imports only ``common`` and ``camera``, so it never pulls
numpy, onnxruntime or torch at start-up.
"""

__version__ = "0.1.0"


def source_commit() -> str:
    """The git commit of this source tree, for a model's or a threshold's provenance ("unknown" outside git)."""
    import subprocess
    from pathlib import Path

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
