"""faceid calibrate on real faces: threshold at the FAR target, FAR/FRR, PNG plot, cached bank, --apply."""

from __future__ import annotations

import yaml

from cli_support import faceid
from faces_support import PERSON


def test_calibrate_user_with_negative_bank_plot_and_apply(cli_env, temp_user, person_images, shared_faces, tmp_path):
    config, _camera = cli_env
    user = temp_user.name
    assert faceid(config, "enroll", user, "--from", *map(str, person_images(PERSON)[:6])).returncode == 0
    png = tmp_path / "cal.png"
    done = faceid(config, "calibrate", user, "--far", "1e-2", "--negatives", str(shared_faces / "train" / "lfw"),
                  "--limit", "150", "--plot", str(png), "--apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "negative bank: " in done.stdout and "scores for " + user in done.stdout
    line = next(text for text in done.stdout.splitlines() if text.startswith("threshold for FAR <= 0.01"))
    threshold = float(line.split(":")[1].split()[0])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load(config.read_text())["auth"]["threshold"] == round(threshold, 4)
    cached = faceid(config, "calibrate", user, "--far", "1e-2")
    assert cached.returncode == 0 and line in cached.stdout, cached.stdout + cached.stderr


def test_calibrate_mistakes(cli_env, temp_user, person_images):
    config, _camera = cli_env
    assert faceid(config, "calibrate", "--far", "2").returncode == 2
    nobody = faceid(config, "calibrate")
    assert nobody.returncode == 1 and "nobody is enrolled" in nobody.stderr
    assert faceid(config, "enroll", temp_user.name, "--from", str(person_images(PERSON)[0])).returncode == 0
    one = faceid(config, "calibrate", temp_user.name)
    assert one.returncode == 1 and "needs at least 2" in one.stderr
