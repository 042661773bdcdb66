"""The config's sections as typed NamedTuples: ``cfg.auth.timeout`` is a float to mypy and to a reader.

Generated from SCHEMA (pam_faceid/common/config.py) by tools/generate.py: do not edit; tests/test_docs.py
fails when it is stale. config.py adds the read-only behaviour and ``as_dict`` at run time.
"""

from typing import Any, NamedTuple


class CameraSection(NamedTuple):
    """camera: Where frames come from and how they are captured."""

    device: str
    width: int
    height: int
    fps: int
    force_mjpeg: bool
    exposure: int
    rotate: int
    dark_threshold: float

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class AuthSection(NamedTuple):
    """auth: How one authentication attempt runs and decides."""

    enabled: bool
    timeout: float
    threshold: float | str
    min_matching_frames: int
    detection_notice: bool
    services: tuple[str, ...]
    abort_if_ssh: bool
    abort_if_lid_closed: bool
    require_password_after: float

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class ModelSection(NamedTuple):
    """model: The face embedding model."""

    path: str
    backend: str

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class DaemonSection(NamedTuple):
    """daemon: The root daemon (faceidd), its socket and its limits."""

    socket: str
    state_dir: str
    max_sessions: int
    max_frames_per_session: int
    max_message_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class LockoutSection(NamedTuple):
    """lockout: Face authentication pauses after repeated failures (the password always works)."""

    max_failures: int
    window: int
    duration: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class LivenessSection(NamedTuple):
    """liveness: Checks against photos and screens held up to the camera."""

    mode: str

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class SnapshotsSection(NamedTuple):
    """snapshots: Frames kept from recent attempts, written out by `faceid snapshot`."""

    enabled: bool
    keep: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class EnrollSection(NamedTuple):
    """enroll: Defaults for `faceid enroll`."""

    keep_images: bool
    frames: int

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class LoggingSection(NamedTuple):
    """logging: Log verbosity of faceidd (stderr, the journal); the PAM helper always logs one line per attempt."""

    level: str

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


class Sections:
    """Config's attributes, one per section (annotations only: Config fills them)."""

    camera: CameraSection
    auth: AuthSection
    model: ModelSection
    daemon: DaemonSection
    lockout: LockoutSection
    liveness: LivenessSection
    snapshots: SnapshotsSection
    enroll: EnrollSection
    logging: LoggingSection
