"""What a newcomer reads: usage of the command given, progress, what was measured, which config and daemon.

Each test runs the installed ``faceid`` as a person would and reads what it printed (issue 23's newcomer list).
"""

from __future__ import annotations

import os
import re
import subprocess

import pexpect
import pytest

from cli_support import FACEID, REPO, faceid, require_root, write_config

SAMPLES = REPO / "pam_faceid" / "data" / "samples"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"}
    return subprocess.run([FACEID, *args], capture_output=True, text=True, timeout=120, env={**environ, **(env or {})})


def test_an_unknown_option_prints_the_usage_of_the_command_it_was_given_to():
    done = _run("test", "root", "--bogus")
    assert done.returncode == 2, done
    assert done.stderr.startswith("usage: faceid test "), done.stderr
    assert done.stderr.rstrip().endswith("faceid test: error: unrecognized arguments: --bogus"), done.stderr


def test_evaluate_help_names_the_folds_the_code_uses():
    text = " ".join(_run("evaluate", "--help").stdout.split())
    assert "10-fold" not in text
    assert "accuracy over the folds the pairs file declares, each at the threshold fitted on the others" in text


def test_evaluate_shows_progress_on_a_terminal_and_says_it_measured_speed_only(tmp_path):
    """On a terminal tqdm draws a bar while faces are embedded; without --pairs or --enroll the run says so."""
    child = pexpect.spawn(FACEID, ["evaluate", str(SAMPLES)], dimensions=(24, 120), encoding="utf-8", timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"})
    child.expect(r"embedding: +\d+%\|")
    child.expect(r"2/2 \[")
    child.expect("faces per second")
    child.expect("measured speed only .*add --pairs PAIRS .* or --enroll K")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    piped = _run("evaluate", str(SAMPLES))
    assert "embedding:" not in piped.stderr  # no bar when nobody watches


def test_a_missing_config_file_exits_2_as_the_readme_table_says(tmp_path):
    done = _run("--config", str(tmp_path / "typo.yaml"), "status")
    assert done.returncode == 2 and done.stderr.strip() == f"faceid status: {tmp_path / 'typo.yaml'}: no such config file"
    table = (REPO / "docs" / "exit-codes.md").read_text()
    assert re.search(r"\| 2 \| bad arguments or bad input \(a missing file", table)


def test_status_shows_the_held_out_validation_figures_on_their_own_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"daemon:\n  socket: {tmp_path / 'faceidd.sock'}\n  state_dir: {tmp_path / 'state'}\n")
    config.chmod(0o644)
    shown = _run("--config", str(config), "status").stdout
    lines = [line.strip() for line in shown.splitlines()]
    validation = [line for line in lines if line.startswith("on validation, held-out identities")]
    assert len(validation) == 1, shown
    assert re.search(r"auc=0\.99\d*, tar_at_far_1e-3=0\.6\d*$", validation[0]), validation[0]
    assert any(line.startswith("on dev pairs ") for line in lines), shown


def test_in_a_dev_checkout_a_command_without_config_says_which_config_and_daemon_it_uses():
    done = _run("status")
    note = next((line for line in done.stderr.splitlines() if line.startswith("faceid: note: ")), "")
    assert "using the system config /etc/pam_faceid/config.yaml" in note, done.stderr
    assert "daemon's socket /run/pam_faceid/faceidd.sock" in note, note
    assert f"sudo {FACEID} dev-daemon --dir DIR" in note or "not this checkout's dev daemon: add --config " in note
    explicit = _run("--config", "/nonexistent/config.yaml", "status")
    assert "note:" not in explicit.stderr  # asked for by name: nothing to point out


def test_dev_daemon_refuses_a_camera_path_it_cannot_read_and_its_help_example_exists(tmp_path):
    require_root()
    for camera, why in ((tmp_path / "absent", "no such device, file or folder"),):
        done = _run("dev-daemon", "--dir", str(tmp_path / "dev"), "--camera", str(camera))
        assert done.returncode == 2 and done.stderr.strip() == f"faceid dev-daemon: --camera {camera}: {why}", done
    helped = _run("dev-daemon", "--help").stdout
    example = re.search(r"--camera (\S+)", helped.split("examples:")[1])
    assert example and (REPO / example.group(1)).is_dir(), helped


def test_dev_daemon_warns_about_a_stored_camera_it_cannot_read(tmp_path):
    """An existing DIR/config.yaml with a relative camera.device: the start says so (faceidd would not find it)."""
    require_root()
    folder = tmp_path / "dev"
    folder.mkdir()
    (folder / "config.yaml").write_text("camera:\n  device: samples/person\n")
    (folder / "config.yaml").chmod(0o644)
    child = pexpect.spawn(FACEID, ["dev-daemon", "--dir", str(folder)], encoding="utf-8", timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "FACEID_CONFIG"})
    try:
        child.expect(r"camera: samples/person: WARNING: not an absolute path .*config camera\.device PATH")
    finally:
        child.kill(2)
        child.expect(pexpect.EOF)


def test_daemon_down_hint_names_the_command_that_brings_back_this_configs_daemon(tmp_path):
    require_root()
    config = write_config(tmp_path, SAMPLES / "sample_person")
    down = faceid(config, "test", "root", "--from", str(SAMPLES / "sample_person"))
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1, down
    assert down.stderr.strip().endswith(f"(start it: sudo {FACEID} dev-daemon --dir {tmp_path})"), down.stderr
    other = tmp_path / "etc"
    other.mkdir()
    config = write_config(other, SAMPLES / "sample_person", daemon={"socket": str(tmp_path / "faceidd.sock")})
    down = faceid(config, "test", "root", "--from", str(SAMPLES / "sample_person"))
    assert "start it: sudo systemctl start faceidd" in down.stderr, down.stderr


@pytest.mark.parametrize("command", ["evaluate", "train-base", "convert"])
def test_readme_commands_use_the_dev_install_paths(command):
    """The dev install puts nothing on the PATH: the README's commands are .venv/bin/faceid and .venv/bin/python."""
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    bare = re.findall(rf"^\s*(?:sudo )?(faceid {command}|python -m pam_faceid\.model\.{command})\b", text, re.M)
    assert bare == [], bare
