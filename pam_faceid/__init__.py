"""pam_faceid: face unlock for Linux through PAM.

Data flows one way: camera -> faces -> embedder -> decision (daemon). The PAM
helper imports only config, camera and protocol, so it never pulls torch.
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
