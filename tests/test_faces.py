"""Detection, selection and alignment on real photographs."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from pam_faceid.vision import faces
from pam_faceid.vision.embedder import Embedder, ModelError, default_input, default_model_dir
from pam_faceid.vision.faces import DetectorError, FaceDetector, FacePipeline, FaceRefused, align
from pam_faceid.common.images import read_image as load_image
from faces_support import OTHER_PERSON, PERSON, images_of


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


def test_detects_one_face_with_eyes_above_mouth(detector):
    image = load_image(images_of(PERSON)[0])
    found = detector.detect(image)
    assert found, "no face found in an LFW portrait"
    lm = found[0].landmarks
    assert lm[0, 0] < lm[1, 0], "first eye landmark should be on the image's left"
    assert lm[:2, 1].max() < lm[2, 1] < lm[3:, 1].min(), "eyes above nose above mouth"


def test_alignment_puts_landmarks_on_the_template(detector):
    image = load_image(images_of(PERSON)[1])
    face = FacePipeline(policy="centre", detector=detector).find(image)
    crop = align(image, face)
    spec = default_input()
    assert crop.shape == (spec.size, spec.size, 3) == (150, 150, 3) and crop.dtype == np.uint8
    moved = cv2.transform(face.landmarks[None], faces.similarity_matrix(face.landmarks))[0]
    assert np.abs(moved - spec.template).max() < 6.0
    again = detector.detect(crop)
    assert again and np.abs(again[0].landmarks - spec.template).max() < 8.0


def _model_copy(tmp_path, **change):
    """The bundled model folder with model.json's "input" changed."""
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["input"].update(change)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_crops_follow_the_models_template(detector, tmp_path):
    """The template is the model's: a model.json with another template gives other crops, by the same code."""
    image = load_image(images_of(PERSON)[1])
    shipped = Embedder()
    moved_up = (shipped.input.template - [0, 10]).tolist()
    other = Embedder(_model_copy(tmp_path, template=moved_up))
    face = FacePipeline(policy="centre", detector=detector).find(image)
    a, b = align(image, face, shipped.input), align(image, face, other.input)
    assert a.shape == b.shape == (150, 150, 3)
    assert np.abs(a[10:].astype(int) - b[:-10].astype(int)).mean() < np.abs(a.astype(int) - b.astype(int)).mean() / 3
    crop, _ = FacePipeline(policy="centre", detector=detector, spec=other.input).process(image)
    assert np.array_equal(crop, b)


def test_a_crop_of_another_size_is_refused_by_the_model():
    with pytest.raises(ModelError, match="the model takes 150x150x3"):
        Embedder().embed(np.zeros((1, 112, 112, 3), np.uint8))


@pytest.mark.parametrize("change, message", [
    ({"template": [[1, 2]]}, "template is not five points"),
    ({"size": 7}, "input size 7"),
    ({"channels": "YUV"}, "channels 'YUV'"),
    ({"scale": 0}, "scale"),
])
def test_a_bad_input_spec_is_a_clear_model_error(tmp_path, change, message):
    with pytest.raises(ModelError, match=message) as err:
        Embedder(_model_copy(tmp_path, **change))
    assert "\n" not in str(err.value)


def test_a_model_json_without_input_spec_is_refused(tmp_path):
    """A model folder from before the input spec (the MobileNet era) cannot be used with guessed crops."""
    folder = tmp_path / "model"
    shutil.copytree(default_model_dir(), folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["input"] = "112x112 BGR crop aligned to the ArcFace 5-point template"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match='no "input" object'):
        Embedder(folder)


def test_same_code_aligns_greyscale_frames(detector):
    grey = cv2.cvtColor(load_image(images_of(PERSON)[2]), cv2.COLOR_BGR2GRAY)
    crop, reason = FacePipeline(detector=detector).process(grey)
    assert reason is None and crop.shape == (150, 150, 3)


def test_refusals_name_their_reason(detector):
    pipeline = FacePipeline(detector=detector, dark_threshold=10.0)
    blank = np.full((240, 320, 3), 128, np.uint8)
    assert pipeline.process(blank) == (None, "no_face")

    portrait = load_image(images_of(PERSON)[0])
    dark = (portrait * 0.05).astype(np.uint8)
    assert pipeline.process(dark) == (None, "too_dark")

    tiny = np.full((480, 640, 3), 90, np.uint8)
    small = cv2.resize(portrait, (80, 80))
    tiny[200:280, 280:360] = small
    found = detector.detect(tiny)
    if found:  # a 20-px face may be missed altogether, which is a no_face refusal instead
        assert pipeline.process(tiny)[1] == "face_too_small"
    else:
        assert pipeline.process(tiny)[1] == "no_face"

    other = load_image(images_of(OTHER_PERSON)[0])
    pair = np.hstack([portrait, cv2.resize(other, portrait.shape[1::-1])])
    assert pipeline.process(pair) == (None, "several_faces")
    with pytest.raises(FaceRefused) as refused:
        pipeline.find(pair)
    assert str(refused.value) == "several faces: make sure only your face is in view"


def test_centre_policy_prefers_the_centred_person(detector):
    portrait = load_image(images_of(PERSON)[0])
    other = cv2.resize(load_image(images_of(OTHER_PERSON)[0]), None, fx=1.6, fy=1.6)
    canvas = np.full((other.shape[0], other.shape[1] + portrait.shape[1] * 2, 3), 100, np.uint8)
    canvas[:, : other.shape[1]] = other
    x0 = (canvas.shape[1] - portrait.shape[1]) // 2 + portrait.shape[1] // 2
    canvas[: portrait.shape[0], x0: x0 + portrait.shape[1]] = portrait
    centre = FacePipeline(policy="centre", detector=detector).find(canvas)
    largest = faces.select_face(detector.detect(canvas), canvas, policy="largest", similar_ratio=10)
    assert centre.centre[0] > other.shape[1] > largest.centre[0]


def test_detector_checksum_is_enforced(tmp_path):
    tampered = tmp_path / faces.YUNET_FILE
    shutil.copyfile(faces.detector_path(), tampered)
    with open(tampered, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DetectorError, match="sha256"):
        FaceDetector(model_path=tampered)
    with pytest.raises(DetectorError, match="reinstall"):
        FaceDetector(model_path=tmp_path / "missing.onnx")


def test_flip_sums_each_crop_with_its_mirror_image_once(detector):
    """Embedder.embed's flip is the one flip-and-normalise: mirror-symmetric, and what faceid evaluate --flip uses."""
    from pam_faceid.cli.evaluate import make_embed

    image = load_image(images_of(PERSON)[1])
    embedder = Embedder()
    crop, _ = FacePipeline(policy="centre", detector=detector, spec=embedder.input).process(image)
    crops = np.stack([crop, np.ascontiguousarray(crop[:, ::-1])])
    plain, flipped = embedder.embed(crops, flip=False), embedder.embed(crops, flip=True)
    assert np.allclose(flipped[0], flipped[1], atol=1e-5) and not np.allclose(plain[0], plain[1], atol=1e-3)
    assert np.allclose(np.linalg.norm(flipped, axis=1), 1, atol=1e-5)
    assert np.array_equal(embedder.embed(crops), plain if not embedder.flip else flipped)
    embed, _ = make_embed(None, "onnx", True)
    assert np.allclose(embed(image), flipped[0], atol=1e-6)
