"""The one configuration schema, its strict loader and its generated documents.

Everything about a setting lives in ``SCHEMA``: the loader validates against it,
and the shipped ``config/config.yaml`` and the README's reference table are
generated from it (``python -m pam_faceid.common.config yaml|markdown|update``), so the
three cannot drift apart. The PAM helper imports this module, so it uses only
the standard library and PyYAML.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from typing import Any, NamedTuple

import yaml

DEFAULT_PATH = "/etc/pam_faceid/config.yaml"
ENV_VAR = "FACEID_CONFIG"
MAX_FILE_BYTES = 1 << 20  # a config is a few KiB; refuse anything absurd before parsing it
README_START = "<!-- config-reference:start -->"
README_END = "<!-- config-reference:end -->"

FLOAT_OR_AUTO = "float_or_auto"
SERVICE_LIST = "service_list"
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$|^[A-Za-z0-9_.+-]{3,}\*$")
NETWORK_SERVICES = frozenset({"sshd", "vsftpd", "proftpd", "pure-ftpd", "ftp", "samba", "smbd", "cups", "dovecot",
                              "imap", "pop3", "smtp", "exim", "postfix", "xrdp-sesman", "ppp", "openvpn", "radiusd",
                              "httpd", "apache2", "nginx", "cockpit", "webmin", "rsync", "other"})
"""Services that serve a network peer, never the person at this machine's camera: refused in auth.services."""
SEAT_SERVICES = ("sudo", "sudo-i", "su", "su-l", "login", "gdm-password", "lightdm", "sddm", "kde", "polkit-1",
                 "gnome-screensaver", "cinnamon-screensaver", "mate-screensaver", "xfce4-screensaver",
                 "xscreensaver", "kscreenlocker", "i3lock", "swaylock", "hyprlock")
"""The shipped auth.services: what a person at this machine's seat uses (sudo, su, login, greeters, lockers, polkit)."""


class ConfigError(Exception):
    """A config problem, as one line: file, key, value and what is allowed."""


class Key(NamedTuple):
    """One setting: where it lives, its type, default, allowed values and meaning.

    A NamedTuple, not a dataclass: the PAM helper loads this module, and
    dataclasses (with inspect) would be a tenth of its start-up.
    """

    name: str  # "section.key"
    type: Any  # bool | int | float | str | FLOAT_OR_AUTO | SERVICE_LIST
    default: Any
    doc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nonempty: bool = False  # str: refuse ""
    absolute: bool = False  # str: must be an absolute path ("" too, unless nonempty)

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def value_type(self) -> Any:
        """The type of this key's loaded value: its section's field type."""
        if self.type == SERVICE_LIST:
            return tuple
        return float | str if self.type == FLOAT_OR_AUTO else self.type

    @property
    def type_name(self) -> str:
        if self.type == FLOAT_OR_AUTO:
            return "float or auto"
        if self.type == SERVICE_LIST:
            return "list of PAM service names"
        return self.type.__name__

    def allowed(self) -> str:
        """What the key accepts, worded to follow "must be"."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        if self.type is int:
            return f"a whole number from {_num(self.min)} to {_num(self.max)}"
        if self.type is float:
            return f"a number from {_num(self.min)} to {_num(self.max)}"
        if self.type == FLOAT_OR_AUTO:
            return f"auto or a number from {_num(self.min)} to {_num(self.max)}"
        if self.type == SERVICE_LIST:
            return ("a list of PAM service names (letters, digits, . _ + -; a name of 3 or more ending in * matches "
                    f"that prefix), none of them a network service ({', '.join(sorted(NETWORK_SERVICES))})")
        if self.absolute:
            return "an absolute path" if self.nonempty else "empty or an absolute path"
        return "non-empty text" if self.nonempty else "text"


SECTIONS: dict[str, str] = {
    "camera": "Where frames come from and how they are captured.",
    "auth": "How one authentication attempt runs and decides.",
    "model": "The face embedding model.",
    "daemon": "The root daemon (faceidd), its socket and its limits.",
    "lockout": "Face authentication pauses after repeated failures (the password always works).",
    "liveness": "Checks against photos and screens held up to the camera.",
    "snapshots": "Frames kept from recent attempts, written out by `faceid snapshot`.",
    "enroll": "Defaults for `faceid enroll`.",
    "logging": "Log verbosity of faceidd (stderr, the journal); the PAM helper always logs one line per attempt.",
}

SCHEMA: list[Key] = [
    Key("camera.device", str, "/dev/video0", nonempty=True,
        doc="V4L2 device (/dev/videoN), a video file, or a folder of images read in name order"),
    Key("camera.width", int, 640, min=16, max=7680, doc="capture width in pixels"),
    Key("camera.height", int, 480, min=16, max=4320, doc="capture height in pixels"),
    Key("camera.fps", int, 30, min=1, max=240, doc="capture frames per second"),
    Key("camera.force_mjpeg", bool, False, doc="ask a V4L2 camera for MJPG frames (faster on USB webcams)"),
    Key("camera.exposure", int, -1, min=-1, max=10000,
        doc="V4L2 absolute exposure; -1 leaves the camera on auto exposure"),
    Key("camera.rotate", int, 0, choices=(0, 90, 180, 270), doc="rotate frames clockwise by this many degrees"),
    Key("camera.dark_threshold", float, 10.0, min=0, max=100,
        doc="skip frames whose mean brightness is under this percent (IR emitter still off); faceidd "
            "refuses them too, as too_dark"),
    Key("auth.enabled", bool, True, doc="when false, the helper steps aside at once and PAM asks for the password"),
    Key("auth.timeout", float, 4.0, min=0.5, max=30, doc="seconds to look for a matching face before giving up"),
    Key("auth.threshold", FLOAT_OR_AUTO, "auto", min=-1, max=1,
        doc="cosine similarity needed to match; auto uses the model's shipped threshold"),
    Key("auth.min_matching_frames", int, 2, min=1, max=60,
        doc="frames that must match before the user is accepted"),
    Key("auth.detection_notice", bool, True,
        doc="show 'Looking for your face…', then 'Face recognised.' or 'Face not recognised: enter your password.'"),
    Key("auth.services", SERVICE_LIST, SEAT_SERVICES,
        doc="the PAM services where a face may stand in for the password: those a person at this machine's seat "
            "uses; every other service (network daemons, ones installed later) gets the password, with a logged line"),
    Key("auth.abort_if_ssh", bool, True,
        doc="skip face authentication in SSH and other remote sessions (a set PAM_RHOST is always remote)"),
    Key("auth.abort_if_lid_closed", bool, True, doc="skip face authentication when the laptop lid is closed"),
    Key("auth.require_password_after", float, 0.0, min=0, max=8760,
        doc="hours after the last password login when face authentication is refused until the password is "
            "used again (as Face ID asks for the passcode after 48 hours); 0 turns this off"),
    Key("model.path", str, "", absolute=True,
        doc="folder with embedder.onnx and model.json; empty uses the model bundled with the package"),
    Key("model.backend", str, "onnx", choices=("onnx", "torch"),
        doc="runtime for the embedder; torch needs the train extra and starts slower"),
    Key("daemon.socket", str, "/run/pam_faceid/faceidd.sock", nonempty=True, absolute=True,
        doc="Unix socket the daemon listens on"),
    Key("daemon.state_dir", str, "/var/lib/pam_faceid", nonempty=True, absolute=True,
        doc="folder for enrolments, per-user models, lockouts and snapshots (root only)"),
    Key("daemon.max_sessions", int, 8, min=1, max=256, doc="authentication sessions served at the same time"),
    Key("daemon.max_frames_per_session", int, 60, min=1, max=1000,
        doc="frames one session may send before it is refused"),
    Key("daemon.max_message_bytes", int, 2097152, min=1024, max=67108864,
        doc="largest protocol message accepted, in bytes"),
    Key("lockout.max_failures", int, 5, min=1, max=1000,
        doc="failed face attempts within the window that lock face authentication for a user"),
    Key("lockout.window", int, 600, min=1, max=86400, doc="seconds over which failures are counted"),
    Key("lockout.duration", int, 300, min=1, max=86400, doc="seconds face authentication stays locked"),
    Key("liveness.mode", str, "basic", choices=("off", "basic", "strict"),
        doc="how hard to check that a live face, not a print, screen or mask, is in front of the camera: "
            "basic needs the anti-spoofing model's mean P(real) of 2 matched frames >= 0.5, strict of 5 >= 0.55"),
    Key("snapshots.enabled", bool, False, doc="keep the frames of recent attempts in the state folder"),
    Key("snapshots.keep", int, 5, min=1, max=100, doc="number of recent attempts whose frames are kept"),
    Key("enroll.keep_images", bool, False, doc="also store the raw enrolment images, not only the embeddings"),
    Key("enroll.frames", int, 5, min=1, max=50, doc="good frames captured per enrolment"),
    Key("logging.level", str, "info", choices=("debug", "info", "warning", "error"),
        doc="lowest level of faceidd's messages logged; its audit lines are logged at any level"),
]

KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}


def _num(x: float | None) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


_PLAIN = re.compile(r"^[A-Za-z0-9_/.][A-Za-z0-9_/.+:@=,-]*$")


def format_value(value: Any) -> str:
    """Write a value as YAML would read it back (true, 4.0, /dev/video0, "")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # YAML needs the dot: 1e-05 would read back as text
            return f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        if _PLAIN.match(value) and _scalar_type(value) is str:
            return value
        import json

        return json.dumps(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, tuple):  # a loaded list (auth.services), written back in YAML's flow style
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return type(value).__name__


def _shown(value: Any) -> str:
    """A bad value for an error message: bounded, and quoted only where our loader would not read it as text."""
    if isinstance(value, str) and _PLAIN.match(value) and _scalar_type(value, _Loader) is str:
        text = value
    else:
        text = format_value(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------- YAML reading

class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader with YAML 1.2 booleans and no duplicate keys; libyaml's parser when PyYAML has it.

    YAML 1.1 reads ``off``/``no``/``yes`` as booleans, so ``liveness.mode: off``
    would arrive as False; here only true/false are booleans. The C parser
    reads the config in a seventh of the time, which the PAM helper waits for.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable key: the constructor below reports it
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _scalar_type(text: str, loader: type = yaml.SafeLoader) -> type:
    """The type a loader (YAML 1.1 by default) gives a plain scalar; text like ``off`` gets quoted for every reader."""
    for tag, rx in loader.yaml_implicit_resolvers.get(text[:1], []):
        if rx.match(text):
            return {"tag:yaml.org,2002:bool": bool, "tag:yaml.org,2002:int": int,
                    "tag:yaml.org,2002:float": float, "tag:yaml.org,2002:null": type(None)}.get(tag, object)
    return str


def _yaml_error(path: str, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{path}: invalid YAML{where}: {problem}")


def _parse_text(path: str, text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


# ---------------------------------------------------------------- validation

def _error(path: str | None, key: str, value: Any, what: str, raw: str | None = None) -> ConfigError:
    """The one-line message; ``raw`` is text the user typed, shown as typed."""
    prefix = f"{path}: " if path else ""
    shown = _shown(value) if raw is None else (raw if len(raw) <= 80 else raw[:77] + "...")
    return ConfigError(f"{prefix}{key} = {shown}: {what}")


def _suggest(name: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def validate_value(key: Key, value: Any, path: str | None = None, raw: str | None = None) -> Any:
    """Check one value against its key and return it normalised (ints become floats for float keys)."""
    original = value

    def bad() -> ConfigError:
        return _error(path, key.name, original, "must be " + key.allowed(), raw)

    def in_range(number: float) -> bool:
        return (key.min is None or number >= key.min) and (key.max is None or number <= key.max)

    kind = key.type
    if kind == FLOAT_OR_AUTO:
        if value == "auto":
            return value
        kind = float
    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        if key.choices is None and not in_range(value):
            raise bad()
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
        if math.isnan(value) or not in_range(value):
            raise bad()
    elif kind == SERVICE_LIST:
        if not isinstance(value, (list, tuple)):
            raise bad()
        wrong = next((item for item in value if not (isinstance(item, str) and _SERVICE_NAME.match(item))), None)
        if wrong is not None or not value:
            what = f"{_shown(wrong)} is not a service name" if wrong is not None else "the list is empty"
            raise _error(path, key.name, original, f"{what}; must be {key.allowed()}", raw)
        network = sorted(name for name in NETWORK_SERVICES if service_allowed(name, value))
        if network:
            raise _error(path, key.name, original, f"{', '.join(network)}: a network service, where a face at this "
                         "camera proves nothing about the peer; remove it", raw)
        value = tuple(dict.fromkeys(value))
    elif kind is str:
        if not isinstance(value, str):
            raise bad()
        if key.nonempty and not value:
            raise bad()
        if key.absolute and value and not os.path.isabs(value):
            raise bad()
        if "\0" in value:
            raise bad()
    if key.choices is not None and value not in key.choices:
        raise bad()
    return value


def service_allowed(service: str, services: tuple[str, ...] | list[str]) -> bool:
    """Is PAM service ``service`` one of ``services`` (an entry ending in * matches that prefix)?"""
    return any(service == entry or (entry.endswith("*") and service.startswith(entry[:-1])) for entry in services)


def _check_cross(path: str | None, values: dict[str, dict[str, Any]], changed: str | None = None) -> None:
    """Rules that involve two keys; the message names ``changed`` when that is the key being set."""
    need = values["auth"]["min_matching_frames"]
    cap = values["daemon"]["max_frames_per_session"]
    if need > cap:
        if changed == "daemon.max_frames_per_session":
            raise _error(path, changed, cap, f"must be at least auth.min_matching_frames ({need})")
        raise _error(path, "auth.min_matching_frames", need,
                     f"must not exceed daemon.max_frames_per_session ({cap})")


def _defaults() -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for key in SCHEMA:
        values[key.section][key.field] = key.default
    return values


def _validate_document(path: str, data: Any) -> dict[str, dict[str, Any]]:
    values = _defaults()
    if data is None:
        return values
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the document is {_shown(data)}: must be a mapping of sections "
                          f"({', '.join(SECTIONS)})")
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"{path}: {_shown(section)}: unknown section{_suggest(str(section), list(SECTIONS))}"
                              f" (sections: {', '.join(SECTIONS)})")
        if body is None:
            continue  # a section whose keys are all commented out
        fields = [k.field for k in SCHEMA if k.section == section]
        if not isinstance(body, dict):
            raise _error(path, section, body, f"must be a mapping of keys ({', '.join(fields)})")
        for field, value in body.items():
            name = f"{section}.{field}"
            key = KEYS.get(name) if isinstance(field, str) else None
            if key is None:
                raise _error(path, name, value, f"unknown key{_suggest(name, list(KEYS))}"
                             f" ({section} keys: {', '.join(fields)})")
            values[section][field] = validate_value(key, value, path)
    _check_cross(path, values)
    return values


# ---------------------------------------------------------------- permissions

def _check_owner_mode(path: str, target: str, st: os.stat_result) -> None:
    """StrictModes, as sshd: only root (or the running user) may be able to change the config."""
    what = "config file" if target == path else f"config folder {target}"
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        try:
            import pwd

            owner = pwd.getpwuid(st.st_uid).pw_name
        except (KeyError, ImportError):
            owner = str(st.st_uid)
        raise ConfigError(f"{path}: {what} is owned by {owner}, not root, refused; run: chown root: {target}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(st.st_mode)
        raise ConfigError(f"{path}: {what} is writable by group or others (mode {mode:04o}), refused; "
                          f"run: chmod go-w {target}")


def _check_folders(path: str) -> None:
    folders = {os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.realpath(path))}
    for folder in sorted(folders):
        try:
            st = os.stat(folder)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot check config folder {folder}: {exc.strerror}") from None
        _check_owner_mode(path, folder, st)


def _check_root_chain(path: str | None, name: str, value: str, start: str, strict_first: bool) -> None:
    """``start`` (or the nearest part of it that exists) and every folder above it: root's, and not writable by
    others; a folder above may be writable when sticky (/tmp), the first one found only when not ``strict_first``."""
    folder, first = start, True
    while True:
        try:
            st = os.stat(folder)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise _error(path, name, value, f"cannot check folder {folder}: {exc.strerror}")
        if st is not None:
            writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            sticky = st.st_mode & stat.S_ISVTX and stat.S_ISDIR(st.st_mode)
            if st.st_uid != 0 or (writable and ((first and strict_first) or not sticky)):
                kind = "folder " if stat.S_ISDIR(st.st_mode) else ""
                raise _error(path, name, value,
                             f"{kind}{folder} must be owned by root and not writable by others "
                             f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})")
            first = False
        parent = os.path.dirname(folder)
        if parent == folder:
            return
        folder = parent


def check_socket_folder(path: str | None, socket_path: str) -> None:
    """daemon.socket must lie in folders only root can change: no one else may put a socket in its place.

    The socket's folder (or the nearest one that exists: faceidd creates the
    rest) must be root's and not writable by group or others; every folder
    above it root's, and not writable by others unless sticky (/tmp).
    """
    _check_root_chain(path, "daemon.socket", socket_path, os.path.dirname(os.path.abspath(socket_path)), True)


def check_camera_path(path: str | None, device: str) -> None:
    """camera.device must be what only root can change: a user who could write the folder or video the helper
    reads could show it any face. A camera device node is root's, and may be writable by its group (video)."""
    for where in dict.fromkeys((os.path.abspath(device), os.path.realpath(device))):
        try:
            st = os.stat(where)
        except OSError:
            st = None
        if st is not None and stat.S_ISCHR(st.st_mode):
            if st.st_uid != 0:
                raise _error(path, "camera.device", device, f"{where} must be owned by root (it is uid {st.st_uid})")
            where = os.path.dirname(where)
        _check_root_chain(path, "camera.device", device, where, True)


# ---------------------------------------------------------------- the Config object

class Section:
    """What every section's generated NamedTuple adds: as_dict, read-only errors that name the key.

    Equality needs the same section, not only equal tuples.
    """

    __slots__ = ()
    _section: str  # the section's name, set on each generated class

    def __getattr__(self, field: str) -> Any:
        raise AttributeError(f"config section {self._section!r} has no key {field!r}")

    def __setattr__(self, field: str, value: Any) -> None:
        raise AttributeError("config values are read-only; use set_value() to change the file")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = tuple.__hash__

    def as_dict(self) -> dict[str, Any]:
        return self._asdict()


def _section_types() -> dict[str, type]:
    """One NamedTuple class per section, its fields and their types read from SCHEMA (cfg.auth: AuthSection).

    A NamedTuple, like Key, because the PAM helper imports this module; the
    loader guarantees every value has its field's type (ints never bool,
    floats always float).
    """
    types: dict[str, type] = {}
    for section in SECTIONS:
        fields = [(key.field, key.value_type) for key in SCHEMA if key.section == section]
        name = f"{section.title()}Section"
        fields_type = NamedTuple(f"_{name}Fields", fields)
        types[section] = type(name, (Section, fields_type), {
            "__slots__": (), "__module__": __name__, "__annotations__": dict(fields), "_section": section})
    return types


SECTION_TYPES: dict[str, type] = _section_types()


class Config:
    """Validated settings: one section NamedTuple per attribute, plus where they came from."""

    def __init__(self, values: dict[str, dict[str, Any]], path: str, from_file: bool):
        self.path = path
        self.from_file = from_file  # False when the default file is absent and all values are defaults
        self._sections = {name: SECTION_TYPES[name](**values[name]) for name in SECTIONS}

    def __getattr__(self, section: str) -> Section:
        sections = self.__dict__.get("_sections", {})
        try:
            return sections[section]
        except KeyError:
            raise AttributeError(f"config has no section {section!r}") from None

    def get(self, name: str) -> Any:
        """A value by its dotted name; KeyError for a name not in the schema."""
        if name not in KEYS:
            raise KeyError(name)
        key = KEYS[name]
        return getattr(self._sections[key.section], key.field)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {name: body.as_dict() for name, body in self._sections.items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._sections == other._sections

    def __repr__(self) -> str:
        return f"Config(path={self.path!r}, from_file={self.from_file})"


def defaults(path: str = DEFAULT_PATH) -> Config:
    """All defaults, as used when the default config file does not exist."""
    return Config(_defaults(), path, from_file=False)


def resolve_path(path: str | None = None) -> tuple[str, bool]:
    """The config file to read and whether it was asked for explicitly (--config or $FACEID_CONFIG)."""
    if path:
        return path, True
    env = os.environ.get(ENV_VAR)
    if env:
        return env, True
    return DEFAULT_PATH, False


def _read(path: str, check_permissions: bool) -> str:
    """Read the file through one descriptor so the checked file is the read file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # a FIFO must not hang us
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ConfigError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if check_permissions:
            _check_owner_mode(path, path, st)
            _check_folders(path)
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: config file larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_config(path: str | None = None, *, check_permissions: bool = True) -> Config:
    """Load and validate the config; raise ConfigError (one line) on any problem.

    Path: ``path``, else $FACEID_CONFIG, else DEFAULT_PATH. Only a missing file
    at the default path means "all defaults"; a missing file that was asked for
    is an error, so a typo in --config cannot silently drop the admin's settings.
    """
    path, explicit = resolve_path(path)
    if not explicit and not os.path.lexists(path):
        return defaults(path)
    if explicit and not os.path.lexists(path):
        raise ConfigError(f"{path}: no such config file")
    text = _read(path, check_permissions)
    values = _validate_document(path, _parse_text(path, text))
    if check_permissions:
        check_socket_folder(path, values["daemon"]["socket"])
        check_camera_path(path, values["camera"]["device"])
    return Config(values, path, from_file=True)


# ---------------------------------------------------------------- changing one key

def parse_value(name: str, text: str, path: str | None = None) -> Any:
    """Turn a command-line string into a valid value for key ``name``."""
    key = KEYS.get(name)
    if key is None:
        raise _unknown_key(name, path)
    kind = key.type
    value: Any = text
    try:
        if kind is bool:
            lowered = text.strip().lower()
            words = {"true": True, "yes": True, "on": True, "1": True,
                     "false": False, "no": False, "off": False, "0": False}
            value = words[lowered] if lowered in words else text
        elif kind is int:
            value = int(text.strip(), 10)
        elif kind is float:
            value = float(text)
        elif kind == FLOAT_OR_AUTO:
            value = "auto" if text.strip() == "auto" else float(text)
        elif kind == SERVICE_LIST:
            value = [word for word in re.split(r"[\s,]+", text.strip().strip("[]")) if word]
    except ValueError:
        raise _error(path, name, text, "must be " + key.allowed(), text) from None
    return validate_value(key, value, path, raw=text)


def _unknown_key(name: str, path: str | None) -> ConfigError:
    prefix = f"{path}: " if path else ""
    return ConfigError(f"{prefix}{name}: unknown key{_suggest(name, list(KEYS))} (see 'faceid config' for all keys)")


def _round_trip() -> Any:
    """ruamel.yaml's round-trip editor, writing new values as ``format_value`` does.

    Imported here, not at the top: only ``faceid config`` edits the file, and
    the PAM helper, which imports this module, must not pay for ruamel.
    Floats keep their dot (``1.0e-05``: YAML 1.1 readers take ``1e-05`` for
    text) and text a YAML 1.1 reader would take for a boolean (``off``) is
    quoted, as in the generated file.
    """
    from ruamel.yaml import YAML

    editor = YAML()  # round-trip: comments, order, quotes and flow style are kept
    editor.preserve_quotes = True
    editor.width = 1 << 16  # never fold a long line the admin wrote

    def float_node(representer: Any, value: float) -> Any:
        return representer.represent_scalar("tag:yaml.org,2002:float", format_value(value))

    def str_node(representer: Any, value: str) -> Any:
        style = None if format_value(value) == value else '"'
        return representer.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    editor.representer.add_representer(float, float_node)
    editor.representer.add_representer(str, str_node)
    return editor


def _edit_text(text: str, key: Key, value: Any) -> str | None:
    """Change one key in the YAML text, keeping comments and layout; None if the document is no mapping."""
    import io

    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.util import load_yaml_guess_indent

    if yaml.load(text, Loader=_Loader) is None:  # noqa: S506 - nothing to edit, perhaps only comments: append
        sep = "" if text.endswith("\n") or not text else "\n"
        return text + sep + f"{key.section}:\n  {key.field}: {format_value(value)}\n"
    editor = _round_trip()
    try:
        _, indent, _ = load_yaml_guess_indent(text)
        editor.indent(mapping=indent or 2)
        root = editor.load(text)
    except YAMLError:
        return None
    if not isinstance(root, CommentedMap):
        return None
    if isinstance(value, tuple):
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    body = root.get(key.section)
    if body is None:  # absent, or "section:" / "section: ~" with every key commented out
        root[key.section] = CommentedMap([(key.field, value)])
    elif isinstance(body, CommentedMap):
        if not body:
            body.fa.set_block_style()  # "section: {}" becomes a block like the others
        body[key.field] = value
    else:
        return None
    out = io.StringIO()
    editor.dump(root, out)
    return out.getvalue()


def _write_atomic(path: str, text: str) -> None:
    """Replace the file (0644, root's when run as root) so readers see the old or the new file, never half of one.

    A symlinked config is updated at its target, so the link stays.
    """
    from pam_faceid.common import atomic

    owner = (0, 0) if os.geteuid() == 0 else None
    atomic.write_bytes(os.path.realpath(path), text.encode("utf-8"), 0o644, owner)


def set_value(path: str | None, name: str, value_string: str, *, check_permissions: bool = True) -> Config:
    """Validate ``value_string`` for key ``name`` and write it into the config file atomically.

    The other keys, comments and layout stay as they were. Nothing is written
    unless the whole resulting file loads cleanly; a missing file is created
    from the documented template first.
    """
    import fcntl

    path, _ = resolve_path(path)
    key = KEYS.get(name)
    if key is None:
        raise _unknown_key(name, path)
    value = parse_value(name, value_string, path)
    folder = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(folder):
        try:
            os.makedirs(folder, mode=0o755)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create folder {folder}: {exc.strerror}") from None
    lock_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # two concurrent 'faceid config' runs must not lose a change
        if os.path.lexists(path):
            text = _read(path, check_permissions)
            current = _validate_document(path, _parse_text(path, text))
        else:
            if check_permissions:
                _check_folders(path)
            text = render_yaml()
            current = _defaults()
        expected = {section: dict(body) for section, body in current.items()}
        expected[key.section][key.field] = value
        _check_cross(path, expected, changed=name)
        if check_permissions and name == "daemon.socket":
            check_socket_folder(path, value)
        if check_permissions and name == "camera.device":
            check_camera_path(path, value)
        new_text = _edit_text(text, key, value)
        if new_text is None or _validate_document(path, _parse_text(path, new_text)) != expected:
            raise ConfigError(f"{path}: cannot change {name} in place (unusual YAML layout); "
                              f"edit the file by hand: {name}: {format_value(value)}")
        try:
            _write_atomic(path, new_text)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write config: {exc.strerror}") from None
    finally:
        os.close(lock_fd)
    return Config(expected, path, from_file=True)


# ---------------------------------------------------------------- generated documents

def render_yaml() -> str:
    """The shipped config/config.yaml: every key at its default, documented."""
    lines = [
        "# pam_faceid configuration (default location: /etc/pam_faceid/config.yaml).",
        "# Generated from SCHEMA in pam_faceid/common/config.py by: python -m pam_faceid.common.config yaml",
        "# Every key is shown at its default. Unknown keys and bad values are refused with one line",
        "# naming the key; the file and its folder must not be writable by anyone but root.",
        "# Change a key safely with: sudo faceid config KEY VALUE",
    ]
    for section, doc in SECTIONS.items():
        lines += ["", f"# {doc}", f"{section}:"]
        for key in (k for k in SCHEMA if k.section == section):
            doc = f"  # {key.doc[0].upper()}{key.doc[1:]}."
            allowed = f"Allowed: {key.allowed()}."
            if len(doc) + 1 + len(allowed) <= 110:
                lines.append(f"{doc} {allowed}")
            else:
                lines += [doc, f"  # {allowed}"]
            lines.append(f"  {key.field}: {format_value(key.default)}")
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """The README's configuration reference: one table row per key."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"The configuration file is `{DEFAULT_PATH}` (`--config FILE` or `${ENV_VAR}` choose another).",
        "A missing default file means every key takes its default. Unknown keys, wrong types and",
        "out-of-range values are refused with one line naming the file, key, value and what is allowed.",
        "The file and its folder must be owned by root and not writable by group or others.",
        "Change a key with `sudo faceid config KEY VALUE` (validated, written atomically, daemon reloaded).",
        "",
        "| Key | Type | Default | Allowed | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in SCHEMA:
        default = format_value(key.default)
        lines.append(f"| `{key.name}` | {key.type_name} | `{cell(default)}` | {cell(key.allowed())} "
                     f"| {cell(key.doc)} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str) -> str:
    """Replace the reference between the README markers (creating a minimal README if empty)."""
    if not text.strip():
        text = f"# pam_faceid\n\n## Configuration reference\n\n{README_START}\n{README_END}\n"
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ConfigError(f"README has no {README_START} ... {README_END} markers")
    return text[:start + len(README_START)] + "\n" + render_markdown() + text[end:]


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_generated(root: str | None = None) -> list[str]:
    """Write config/config.yaml and the README table from the schema; return the files changed."""
    root = root or _repo_root()
    changed = []
    targets = [(os.path.join(root, "config", "config.yaml"), lambda _old: render_yaml()),
               (os.path.join(root, "README.md"), update_readme)]
    for target, render in targets:
        old = open(target, encoding="utf-8").read() if os.path.exists(target) else ""
        new = render(old)
        if new != old:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as handle:
                handle.write(new)
            changed.append(target)
    return changed


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pam_faceid.common.config",
        description="Print or write the documents generated from the config schema.",
        epilog="example: python -m pam_faceid.common.config update   # after changing SCHEMA",
    )
    parser.add_argument("what", choices=["yaml", "markdown", "update"],
                        help="yaml: the shipped config.yaml; markdown: the README table; "
                             "update: write both into the repository")
    args = parser.parse_args(argv)
    if args.what == "yaml":
        sys.stdout.write(render_yaml())
    elif args.what == "markdown":
        sys.stdout.write(render_markdown())
    else:
        try:
            changed = write_generated()
        except ConfigError as exc:
            print(f"python -m pam_faceid.common.config: {exc}", file=sys.stderr)
            return 1
        for target in changed:
            print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
