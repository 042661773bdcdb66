"""The config schema, its strict loader, set_value and 'faceid config', on real files."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from pam_faceid.common import config as C
from pam_faceid.common import scaffold
from pam_faceid.common.config import ConfigError, load_config, set_value

REPO = Path(__file__).resolve().parents[1]
FACEID = scaffold.script("faceid")

# The keys the design contract (notes/DESIGN.md) names; adding one means updating both.
CONTRACT_KEYS = {
    "camera.device", "camera.width", "camera.height", "camera.fps", "camera.force_mjpeg", "camera.exposure",
    "camera.rotate", "camera.dark_threshold",
    "auth.enabled", "auth.timeout", "auth.threshold", "auth.min_matching_frames", "auth.detection_notice",
    "auth.services", "auth.abort_if_ssh", "auth.abort_if_lid_closed", "auth.require_password_after",
    "model.path", "model.backend",
    "daemon.socket", "daemon.state_dir", "daemon.max_sessions", "daemon.max_frames_per_session",
    "daemon.max_message_bytes",
    "lockout.max_failures", "lockout.window", "lockout.duration",
    "liveness.mode", "snapshots.enabled", "snapshots.keep", "enroll.keep_images", "enroll.frames",
    "logging.level",
}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(C.ENV_VAR, raising=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir(mode=0o755)
    path.chmod(0o755)
    return path


def write(folder: Path, text: str, name: str = "config.yaml", mode: int = 0o644) -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)
    return path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------- schema

def test_schema_has_exactly_the_contract_keys() -> None:
    assert [k.name for k in C.SCHEMA] == list(C.KEYS)
    assert set(C.KEYS) == CONTRACT_KEYS
    assert {k.section for k in C.SCHEMA} == set(C.SECTIONS)


@pytest.mark.parametrize("key", C.SCHEMA, ids=lambda k: k.name)
def test_every_default_is_valid_and_documented(key: C.Key) -> None:
    assert C.validate_value(key, key.default) == key.default
    assert key.doc and "\n" not in key.doc and "|" not in key.doc
    if key.type in (int, float, C.FLOAT_OR_AUTO) and key.choices is None:
        assert key.min is not None and key.max is not None


def test_contract_defaults() -> None:
    cfg = C.defaults()
    assert cfg.camera.device == "/dev/video0" and cfg.camera.rotate == 0 and cfg.camera.dark_threshold == 10.0
    assert cfg.auth.timeout == 4.0 and cfg.auth.threshold == "auto" and cfg.auth.min_matching_frames == 2
    assert cfg.model.backend == "onnx" and cfg.model.path == ""
    assert cfg.daemon.socket == "/run/pam_faceid/faceidd.sock" and cfg.daemon.max_message_bytes == 2097152
    assert (cfg.lockout.max_failures, cfg.lockout.window, cfg.lockout.duration) == (5, 600, 300)
    assert cfg.liveness.mode == "basic" and cfg.logging.level == "info"


# ---------------------------------------------------------------- generated documents (drift)

def test_shipped_config_yaml_matches_schema() -> None:
    shipped = (REPO / "config" / "config.yaml").read_text()
    assert shipped == C.render_yaml(), "config/config.yaml drifted: run tools/generate.py"
    assert load_config(str(REPO / "config" / "config.yaml"), check_permissions=False) == C.defaults()
    for key in C.SCHEMA:
        assert key.doc[1:] in shipped and key.allowed() in shipped


def test_documented_notices_are_the_ones_the_helper_prints() -> None:
    from pam_faceid.helper import main as helper

    doc = C.KEYS["auth.detection_notice"].doc
    assert all(f"'{text}'" in doc for text in (helper.NOTICE_LOOKING, helper.NOTICE_MATCH, helper.NOTICE_NO_MATCH))


# ---------------------------------------------------------------- loading

def test_missing_default_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "DEFAULT_PATH", str(tmp_path / "absent" / "config.yaml"))
    cfg = load_config()
    assert cfg == C.defaults() and not cfg.from_file and cfg.path == str(tmp_path / "absent" / "config.yaml")


def test_env_overrides_default_and_argument_overrides_env(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = write(folder, "auth:\n  timeout: 2.5\n", "env.yaml")
    arg_file = write(folder, "auth:\n  timeout: 7\n", "arg.yaml")
    monkeypatch.setattr(C, "DEFAULT_PATH", str(folder / "absent.yaml"))
    monkeypatch.setenv(C.ENV_VAR, str(env_file))
    assert load_config().auth.timeout == 2.5
    cfg = load_config(str(arg_file))
    assert cfg.auth.timeout == 7.0 and isinstance(cfg.auth.timeout, float) and cfg.path == str(arg_file)


def test_missing_env_file_is_an_error(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(C.ENV_VAR, str(folder / "typo.yaml"))
    with pytest.raises(ConfigError, match=r"typo\.yaml: no such config file$"):
        load_config()


def test_missing_explicit_file_is_an_error(folder: Path) -> None:
    assert error_of(folder / "nope.yaml") == f"{folder / 'nope.yaml'}: no such config file"


def test_values_sections_and_access(folder: Path) -> None:
    path = write(folder, "camera:\n  device: /srv/frames\n  rotate: 90\nauth:\n  threshold: 0.42\n"
                         "liveness:\n  mode: off\nsnapshots:\n")
    cfg = load_config(str(path))
    assert cfg.from_file and cfg.camera.device == "/srv/frames" and cfg.camera.rotate == 90
    assert cfg.auth.threshold == 0.42 and cfg.get("auth.threshold") == 0.42
    assert cfg.liveness.mode == "off"  # YAML 1.1 would have made this False
    assert cfg.camera.width == 640 and cfg.snapshots.keep == 5
    assert cfg.as_dict()["camera"]["rotate"] == 90 and cfg.camera.as_dict()["device"] == "/srv/frames"
    with pytest.raises(AttributeError, match=r"^config section 'auth' has no key 'timout'$"):
        _ = cfg.auth.timout
    with pytest.raises(AttributeError, match=r"^config has no section 'nosection'$"):
        _ = cfg.nosection
    with pytest.raises(KeyError):
        cfg.get("auth.nope")
    with pytest.raises(AttributeError, match="read-only"):
        cfg.auth.timeout = 1
    assert cfg.camera == load_config(str(path)).camera and cfg.camera != C.defaults().camera
    assert cfg.auth != tuple(cfg.auth)  # a section equals only the same section


# The exact types a loaded value may have: bool is an int to isinstance, 3 from YAML is no float.
EXACT_TYPES = {bool: {bool}, int: {int}, float: {float}, str: {str}, C.FLOAT_OR_AUTO: {float, str},
               C.SERVICE_LIST: {tuple}}


def assert_schema_types(cfg: C.Config) -> None:
    """Every value has its key's type, exactly, and is the field of its section's NamedTuple."""
    for key in C.SCHEMA:
        section = getattr(cfg, key.section)
        value = getattr(section, key.field)
        assert cfg.get(key.name) is value
        assert type(value) in EXACT_TYPES[key.type], f"{key.name} = {value!r} is a {type(value).__name__}"
        assert isinstance(value, type(section).__annotations__[key.field])
        if key.type == C.FLOAT_OR_AUTO and isinstance(value, str):
            assert value == "auto"


def test_each_section_is_a_namedtuple_generated_from_the_schema() -> None:
    cfg = C.defaults()
    for name in C.SECTIONS:
        keys = [k for k in C.SCHEMA if k.section == name]
        section = getattr(cfg, name)
        assert isinstance(section, tuple) and type(section) is C.SECTION_TYPES[name]
        assert section._fields == tuple(k.field for k in keys)
        assert type(section).__annotations__ == {k.field: k.value_type for k in keys}
        assert section.as_dict() == {k.field: k.default for k in keys}
    assert C.SECTION_TYPES["auth"].__annotations__["threshold"] == float | str


def test_defaults_have_their_schema_types(folder: Path) -> None:
    assert_schema_types(C.defaults())
    assert_schema_types(load_config(str(write(folder, ""))))
    assert_schema_types(load_config(str(REPO / "config" / "config.yaml"), check_permissions=False))


def test_whole_numbers_for_float_keys_load_as_floats(folder: Path) -> None:
    floats = [k for k in C.SCHEMA if k.type in (float, C.FLOAT_OR_AUTO)]
    assert {k.name for k in floats} >= {"auth.timeout", "auth.threshold", "camera.dark_threshold"}
    wanted = {k.name: round((k.min + k.max) / 2) for k in floats}
    text = "".join(f"{section}:\n" + "".join(f"  {k.field}: {wanted[k.name]}\n" for k in floats if k.section == section)
                   for section in {k.section: None for k in floats})
    assert "timeout: 15\n" in text  # whole numbers, as an admin writes them
    cfg = load_config(str(write(folder, text)))
    assert_schema_types(cfg)
    assert {name: cfg.get(name) for name in wanted} == wanted
    set_cfg = set_value(str(folder / "config.yaml"), "auth.timeout", "3")
    assert set_cfg.auth.timeout == 3.0 and type(set_cfg.auth.timeout) is float
    assert_schema_types(set_cfg)
    assert_schema_types(load_config(str(folder / "config.yaml")))


@pytest.mark.parametrize("text", ["", "# only comments\n", "auth:\n", "auth: ~\n"])
def test_empty_file_or_section_means_defaults(folder: Path, text: str) -> None:
    assert load_config(str(write(folder, text))) == C.defaults()


ERRORS = [
    # (yaml, the expected text after "<path>: ")
    ("auth:\n  timout: 3\n", "auth.timout = 3: unknown key; did you mean auth.timeout?"),
    ("autth:\n  timeout: 3\n", "autth: unknown section; did you mean auth?"),
    ("auth:\n  enabled: yes\n", "auth.enabled = yes: must be true or false"),
    ("auth:\n  enabled: 1\n", "auth.enabled = 1: must be true or false"),
    ("camera:\n  width: 640.0\n", "camera.width = 640.0: must be a whole number from 16 to 7680"),
    ("camera:\n  width: '640'\n", "camera.width = \"640\": must be a whole number from 16 to 7680"),
    ("camera:\n  width: true\n", "camera.width = true: must be a whole number from 16 to 7680"),
    ("auth:\n  timeout: fast\n", "auth.timeout = fast: must be a number from 0.5 to 30"),
    ("auth:\n  timeout: -1\n", "auth.timeout = -1: must be a number from 0.5 to 30"),
    ("auth:\n  timeout: .nan\n", "auth.timeout = nan: must be a number from 0.5 to 30"),
    ("camera:\n  fps: 0\n", "camera.fps = 0: must be a whole number from 1 to 240"),
    ("auth:\n  threshold: 1.5\n", "auth.threshold = 1.5: must be auto or a number from -1 to 1"),
    ("auth:\n  threshold: high\n", "auth.threshold = high: must be auto or a number from -1 to 1"),
    ("camera:\n  rotate: 45\n", "camera.rotate = 45: must be one of 0, 90, 180, 270"),
    ("model:\n  backend: tensorflow\n", "model.backend = tensorflow: must be one of onnx, torch"),
    ("liveness:\n  mode: false\n", "liveness.mode = false: must be one of off, basic, strict"),
    # the hand-made cues' keys are gone with them (docs/liveness.md): named, not a crash
    ("liveness:\n  blink: true\n", "liveness.blink = true: unknown key; did you mean liveness.mode? "
                                    "(liveness keys: mode)"),
    ("logging:\n  level: verbose\n", "logging.level = verbose: must be one of debug, info, warning, error"),
    ("model:\n  path: models/x\n", "model.path = models/x: must be empty or an absolute path"),
    ("daemon:\n  socket: ''\n", 'daemon.socket = "": must be an absolute path'),
    ("camera:\n  device: 0\n", "camera.device = 0: must be non-empty text"),
    ("auth: 5\n", "auth = 5: must be a mapping of keys (enabled, timeout,"),
    ("auth:\n  timeout: [1, 2]\n", "auth.timeout = a list: must be a number from 0.5 to 30"),
    ("auth:\n  services: [sudo, vsftpd]\n", "auth.services = a list: vsftpd: a network service, where a face"),
    ("auth:\n  services: [sudo, 's*']\n", "auth.services = a list: \"s*\" is not a service name; must be a list of "
     "PAM service names"),
    ("auth:\n  services: sudo\n", "auth.services = sudo: must be a list of PAM service names"),
    ("auth:\n  timeout: 3\n  timeout: 4\n", "invalid YAML at line 3, column 3: duplicate key 'timeout'"),
    ("auth:\n  timeout: [1,\n", "invalid YAML at line 3, column 1:"),
    ("auth:\n\ttimeout: 3\n", "invalid YAML at line 2, column 1:"),
    ("- auth\n- camera\n", "the document is a list: must be a mapping of sections (camera, auth,"),
    ("just text\n", "the document is \"just text\": must be a mapping of sections"),
    ("a: 1\n---\nb: 2\n", "invalid YAML at line 2, column 1: but found another document"),
    ("auth:\n  min_matching_frames: 10\ndaemon:\n  max_frames_per_session: 5\n",
     "auth.min_matching_frames = 10: must not exceed daemon.max_frames_per_session (5)"),
]


@pytest.mark.parametrize("text, expected", ERRORS, ids=[e[1].split(":")[0] for e in ERRORS])
def test_each_error_is_one_line_naming_file_key_value_and_rule(folder: Path, text: str, expected: str) -> None:
    path = write(folder, text)
    message = error_of(path)
    assert message.startswith(f"{path}: {expected}"), message


def test_the_documented_example_message(folder: Path) -> None:
    path = write(folder, "auth:\n  timeout: -1\n")
    assert error_of(path) == f"{path}: auth.timeout = -1: must be a number from 0.5 to 30"


def test_not_utf8_and_not_a_file(folder: Path) -> None:
    path = folder / "config.yaml"
    path.write_bytes(b"auth:\n  timeout: \xff\n")
    path.chmod(0o644)
    assert "not UTF-8 text" in error_of(path)
    sub = folder / "dir.yaml"
    sub.mkdir(mode=0o755)
    assert error_of(sub) == f"{sub}: not a regular file"
    fifo = folder / "fifo.yaml"
    os.mkfifo(fifo, 0o644)
    assert error_of(fifo) == f"{fifo}: not a regular file"  # and no hang waiting for a writer


def test_unreadable_file(folder: Path) -> None:
    path = write(folder, "auth: {}\n", mode=0o644)
    os.symlink(folder / "gone.yaml", folder / "dangling.yaml")
    assert error_of(folder / "dangling.yaml") == f"{folder / 'dangling.yaml'}: cannot read config: " \
                                                  "No such file or directory"
    assert load_config(str(path)) == C.defaults()


# ---------------------------------------------------------------- StrictModes

@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_group_or_other_writable_file_is_refused(folder: Path, mode: int) -> None:
    path = write(folder, "auth:\n  timeout: 3\n", mode=mode)
    message = error_of(path)
    assert f"config file is writable by group or others (mode {mode:04o})" in message
    assert message.endswith(f"run: chmod go-w {path}")
    assert load_config(str(path), check_permissions=False).auth.timeout == 3.0


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_group_or_other_writable_folder_is_refused(folder: Path, mode: int) -> None:
    path = write(folder, "auth:\n  timeout: 3\n")
    folder.chmod(mode)
    message = error_of(path)
    assert f"config folder {folder} is writable by group or others (mode {mode:04o})" in message
    assert message.endswith(f"run: chmod go-w {folder}")
    assert load_config(str(path), check_permissions=False).auth.timeout == 3.0


def test_symlinked_file_checks_the_target_folder_too(folder: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    target = write(loose, "auth:\n  timeout: 3\n")
    os.symlink(target, folder / "config.yaml")
    assert f"config folder {loose} is writable by group or others" in error_of(folder / "config.yaml")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_file_or_folder_owned_by_another_user_is_refused(folder: Path) -> None:
    path = write(folder, "auth:\n  timeout: 3\n")
    os.chown(path, 65534, 65534)
    message = error_of(path)
    assert "config file is owned by nobody, not root" in message and message.endswith(f"run: chown root: {path}")
    os.chown(path, 0, 0)
    os.chown(folder, 65534, 65534)
    assert f"config folder {folder} is owned by nobody, not root" in error_of(path)


# ---------------------------------------------------------------- set_value

def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, st.st_mtime_ns


def test_set_value_round_trip_keeps_comments_and_other_keys(folder: Path) -> None:
    path = write(folder, "# my laptop\ncamera:\n  device: /dev/video2  # the IR camera\n"
                         "auth:\n  timeout: 3.0  # quick\n  abort_if_ssh: false\n")
    cfg = set_value(str(path), "auth.timeout", "6")
    assert cfg.auth.timeout == 6.0 and cfg.path == str(path)
    text = path.read_text()
    assert text == ("# my laptop\ncamera:\n  device: /dev/video2  # the IR camera\n"
                    "auth:\n  timeout: 6.0  # quick\n  abort_if_ssh: false\n")
    set_value(str(path), "auth.threshold", "0.35")
    set_value(str(path), "liveness.mode", "off")
    set_value(str(path), "camera.force_mjpeg", "yes")
    set_value(str(path), "auth.threshold", "1e-5")
    cfg = load_config(str(path))
    assert cfg.auth.threshold == 1e-5 and cfg.liveness.mode == "off" and cfg.camera.force_mjpeg is True
    assert cfg.camera.device == "/dev/video2" and cfg.auth.abort_if_ssh is False and cfg.auth.timeout == 6.0
    new = set_value(str(path), "auth.threshold", "auto")
    assert new.auth.threshold == "auto" and new == load_config(str(path))
    assert "# the IR camera" in path.read_text() and "# my laptop" in path.read_text()
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and (os.geteuid() != 0 or st.st_uid == 0)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]  # no temp files left


def test_set_value_adds_keys_and_sections(folder: Path) -> None:
    path = write(folder, "auth:\n  timeout: 3.0\nsnapshots:\nenroll: {}  # none yet\nlockout: ~\n")
    set_value(str(path), "auth.enabled", "false")
    set_value(str(path), "snapshots.keep", "9")
    set_value(str(path), "enroll.frames", "7")
    set_value(str(path), "lockout.window", "60")
    assert path.read_text() == ("auth:\n  timeout: 3.0\n  enabled: false\nsnapshots:\n  keep: 9\n"
                                "enroll:     # none yet\n  frames: 7\nlockout:\n  window: 60\n")
    set_value(str(path), "model.path", "/opt/model dir")
    set_value(str(path), "logging.level", "debug")
    cfg = load_config(str(path))
    assert (cfg.auth.timeout, cfg.auth.enabled, cfg.snapshots.keep) == (3.0, False, 9)
    assert (cfg.enroll.frames, cfg.lockout.window) == (7, 60)
    assert cfg.model.path == "/opt/model dir" and cfg.logging.level == "debug"


def test_set_value_keeps_the_files_indentation_and_writes_values_every_reader_reads_alike(folder: Path) -> None:
    """ruamel.yaml keeps the layout; values are written as the generated file writes them."""
    path = write(folder, "# four spaces here\nauth:\n    timeout: 3.0    # quick\nliveness:\n    mode: basic\n")
    set_value(str(path), "liveness.mode", "off")
    set_value(str(path), "auth.threshold", "1e-5")
    set_value(str(path), "model.path", "")
    assert path.read_text() == ('# four spaces here\nauth:\n    timeout: 3.0    # quick\n    threshold: 1.0e-05\n'
                                'liveness:\n    mode: "off"\nmodel:\n    path: ""\n')
    assert yaml.safe_load(path.read_text())["liveness"]["mode"] == "off"  # a YAML 1.1 reader too
    assert load_config(str(path)).auth.threshold == 1e-5


def test_set_value_creates_documented_file(folder: Path) -> None:
    path = folder / "sub" / "config.yaml"
    cfg = set_value(str(path), "camera.rotate", "180")
    assert cfg.camera.rotate == 180
    assert path.read_text() == C.render_yaml().replace("  rotate: 0\n", "  rotate: 180\n")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755


@pytest.mark.parametrize("key, value, expected", [
    ("auth.timeout", "-1", "auth.timeout = -1: must be a number from 0.5 to 30"),
    ("auth.timeout", "soon", "auth.timeout = soon: must be a number from 0.5 to 30"),
    ("camera.width", "640.5", "camera.width = 640.5: must be a whole number from 16 to 7680"),
    ("auth.enabled", "maybe", "auth.enabled = maybe: must be true or false"),
    ("model.backend", "tf", "model.backend = tf: must be one of onnx, torch"),
    ("auth.threshold", "nan", "auth.threshold = nan: must be auto or a number from -1 to 1"),
    ("auth.timout", "3", "auth.timout: unknown key; did you mean auth.timeout?"),
    ("daemon.max_frames_per_session", "1",
     "daemon.max_frames_per_session = 1: must be at least auth.min_matching_frames (2)"),
])
def test_invalid_set_leaves_the_file_byte_identical(folder: Path, key: str, value: str, expected: str) -> None:
    path = write(folder, "# keep me\nauth:\n  timeout: 3.0\n")
    before = snapshot(path)
    with pytest.raises(ConfigError) as info:
        set_value(str(path), key, value)
    assert str(info.value).startswith(f"{path}: {expected}") and "\n" not in str(info.value)
    assert snapshot(path) == before
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml"]


def test_set_refuses_to_rewrite_a_broken_or_loose_file(folder: Path) -> None:
    path = write(folder, "auth:\n  timout: 3.0\n")
    before = snapshot(path)
    with pytest.raises(ConfigError, match="unknown key"):
        set_value(str(path), "auth.timeout", "5")
    assert snapshot(path) == before
    path.write_text("auth:\n  timeout: 3.0\n")
    path.chmod(0o666)
    before = snapshot(path)
    with pytest.raises(ConfigError, match="chmod go-w"):
        set_value(str(path), "auth.timeout", "5")
    assert snapshot(path) == before


def test_set_value_on_a_symlink_updates_the_target(folder: Path) -> None:
    real = write(folder, "auth:\n  timeout: 3.0\n", "real.yaml")
    os.symlink("real.yaml", folder / "config.yaml")
    set_value(str(folder / "config.yaml"), "auth.timeout", "5")
    assert (folder / "config.yaml").is_symlink() and load_config(str(real)).auth.timeout == 5.0


def test_concurrent_sets_lose_nothing(folder: Path) -> None:
    path = write(folder, C.render_yaml())
    keys = ["camera.width", "camera.height"]

    def worker(key: str) -> None:
        for n in range(20, 40):
            set_value(str(path), key, str(n))

    threads = [threading.Thread(target=worker, args=(k,)) for k in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cfg = load_config(str(path))
    assert (cfg.camera.width, cfg.camera.height) == (39, 39)


def test_import_stays_light() -> None:
    code = ("import sys, pam_faceid.common.config; heavy = {'numpy', 'torch', 'cv2', 'onnxruntime', 'ruamel', 'dataclasses', 'inspect'};"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- faceid config (subprocess)

def faceid(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != C.ENV_VAR}
    return subprocess.run([str(FACEID), "--config", str(config_path), "config", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert result.returncode == code, result
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("faceid config: ") and text in lines[0], result.stderr


def test_cli_lists_gets_and_sets(folder: Path) -> None:
    path = write(folder, "auth:\n  timeout: 3.0\nliveness:\n  mode: off\n")
    listing = faceid(path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0] == f"# {path}" and len(lines) == 1 + len(C.SCHEMA)
    assert "auth.timeout = 3.0" in lines and "liveness.mode = off" in lines and "model.path = \"\"" in lines
    assert faceid(path, "auth.timeout").stdout == "3.0\n"
    assert faceid(path, "auth").stdout.splitlines()[1] == "auth.timeout = 3.0"

    result = faceid(path, "auth.timeout", "5")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"auth.timeout = 5.0 (was 3.0) in {path}"
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 1  # at most the reload note
    assert load_config(str(path)).auth.timeout == 5.0
    assert faceid(path, "auth.timeout").stdout == "5.0\n"


def test_cli_bad_value_is_one_line_and_changes_nothing(folder: Path) -> None:
    path = write(folder, "auth:\n  timeout: 3.0\n")
    before = snapshot(path)
    assert_one_line_error(faceid(path, "auth.timeout", "-1"), 2,
                          f"{path}: auth.timeout = -1: must be a number from 0.5 to 30")
    assert_one_line_error(faceid(path, "camera.rotate", "45"), 2, "must be one of 0, 90, 180, 270")
    assert_one_line_error(faceid(path, "auth.timout", "3"), 2, "auth.timout: unknown key; did you mean auth.timeout?")
    assert_one_line_error(faceid(path, "auth.timout"), 2, "unknown key")
    assert snapshot(path) == before


def test_cli_broken_or_missing_file_is_one_line_and_exit_2(folder: Path) -> None:
    """Exit 2, bad input, as the README's exit-code table says for a missing file or a bad config value."""
    path = write(folder, "auth:\n  timeout: [1,\n")
    assert_one_line_error(faceid(path), 2, f"{path}: invalid YAML at line 3")
    path.write_text("auth:\n  timeout: 3\n")
    path.chmod(0o664)
    assert_one_line_error(faceid(path, "auth.timeout"), 2, f"run: chmod go-w {path}")
    assert_one_line_error(faceid(folder / "absent.yaml"), 2, "absent.yaml: no such config file")
    for command in (("status",), ("list",), ("test", "root")):
        other = subprocess.run([str(FACEID), "--config", str(folder / "absent.yaml"), *command], capture_output=True,
                               text=True, timeout=60)
        assert other.returncode == 2 and other.stderr.strip().endswith("absent.yaml: no such config file"), other


def test_cli_help_has_an_example() -> None:
    result = subprocess.run([str(FACEID), "config", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "faceid config auth.timeout 3" in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give folders to another user")
def test_daemon_socket_must_lie_in_folders_only_root_can_change(folder: Path, tmp_path: Path) -> None:
    """Another user who can write the socket's folder could put a socket of its own there for the helper to use."""
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)
    path = write(folder, f"daemon:\n  socket: {run / 'faceid' / 'faceidd.sock'}\n")
    assert load_config(str(path)).daemon.socket.endswith("faceidd.sock")  # a folder faceidd will create is fine
    (run / "faceid").mkdir(mode=0o755)
    os.chown(run / "faceid", 65534, 65534)
    message = error_of(path)
    assert "daemon.socket = " in message and f"folder {run / 'faceid'} must be owned by root" in message
    assert "(it is uid 65534, mode 0755)" in message
    os.chown(run / "faceid", 0, 0)
    (run / "faceid").chmod(0o1777)  # sticky is not enough for the socket's own folder
    assert "not writable by others (it is uid 0, mode 1777)" in error_of(path)
    (run / "faceid").chmod(0o755)
    run.chmod(0o777)  # nor is a loose folder above it, which lets the socket's folder be swapped
    assert f"folder {run} must be owned by root" in error_of(path)
    run.chmod(0o1777)  # a sticky folder above (like /tmp) keeps root's entries root's
    assert load_config(str(path)).daemon.socket.endswith("faceidd.sock")
    assert load_config(str(path), check_permissions=False)


def test_a_camera_path_another_user_can_write_is_refused(folder: Path, tmp_path: Path) -> None:
    """camera.device naming a folder (or video) a user owns or can write: that user could show the helper any
    face. The loader refuses it, as it refuses such a config or socket folder; `faceid config` too."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make files of another owner")
    planted = tmp_path / "planted"
    planted.mkdir()
    tmp_path.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    os.chown(planted, nobody.pw_uid, nobody.pw_gid)
    message = error_of(write(folder, f"camera:\n  device: {planted}\n"))
    assert f"camera.device = {planted}: folder {planted} must be owned by root and not writable by others (it is uid " \
           f"{nobody.pw_uid}" in message
    os.chown(planted, 0, 0)
    planted.chmod(0o777)
    assert "mode 0777" in error_of(write(folder, f"camera:\n  device: {planted}\n"))
    video = planted / "clip.avi"
    planted.chmod(0o755)
    video.write_bytes(b"")
    video.chmod(0o666)
    assert f"{video} must be owned by root and not writable by others" in error_of(
        write(folder, f"camera:\n  device: {video}\n"))
    with pytest.raises(ConfigError, match="camera.device = .*: .* must be owned by root"):
        set_value(str(write(folder, "")), "camera.device", str(video))
    video.chmod(0o644)
    assert load_config(str(write(folder, f"camera:\n  device: {video}\n"))).camera.device == str(video)
    assert load_config(str(write(folder, "camera:\n  device: /dev/video9\n"))).camera.device == "/dev/video9"
