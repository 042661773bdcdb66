"""The face model's speed, memory and accuracy through onnxruntime and torch, beside dlib's (Howdy's) model.

Each backend runs in its own fresh process, so its resident memory is its
own: the process imports its libraries, loads detector, landmarks and
embedder, embeds one face, and its RSS is read then (what a login process
holding the model costs). Then, on one core:

- embedding only: ms per face (median over every face of 3 passes after a
  warm-up pass) and faces per second (median over the passes), on the same
  photos for all three: our aligned crop (the model's size) -> unit vector (flip-sum
  included when the model uses it); dlib: face chip + ResNet from its
  5 landmarks (``compute_face_descriptor``, what Howdy calls per face);
- end to end per photo: detection + landmarks + alignment + embedding
  (YuNet for ours; for dlib HOG upsampling once on the CLAHE grey image,
  as Howdy runs it).

Accuracy is dev pairs accuracy through ``pam_faceid.model.evaluate.evaluate`` with
one embed function per backend: ours is `faceid evaluate`'s own path; dlib's
is its own detector and landmarks as Howdy runs them (CLAHE grey, HOG
upsampling once; of several faces the one nearest the centre, as LFW centres
its subject), its descriptor normalised so similarity is the same cosine.
dlib holds the GIL, so its accuracy embeddings are computed by 2 processes
first; timing figures never come from those.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import (DEFAULT_OUT, DEV_LFW, DEV_PAIRS, PYTHON, default_model, machine, median,
                           proc_memory, require_faces, require_model, save_json)

BACKENDS = ("onnx", "torch", "dlib")
LABELS = {"onnx": "pam_faceid model, onnxruntime", "torch": "pam_faceid model, torch",
          "dlib": "dlib ResNet (Howdy's model)"}
SPEED_FACES = 100
PASSES = 3


def image_key(image: np.ndarray) -> str:
    """A content key for an image as evaluate() hands it to ``embed``, so pair scores can be looked up."""
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).hexdigest()


def quick_pairs(pairs: Path, per_block: int, out: Path) -> Path:
    """A pairs file with the first ``per_block`` pairs of every same/different half-fold (same format)."""
    lines = pairs.read_text().splitlines()
    folds, size = (int(x) for x in lines[0].split()[:2])
    body = lines[1:]
    kept = [line for b in range(2 * folds) for line in body[b * size:b * size + min(per_block, size)]]
    out.write_text(f"{folds} {min(per_block, size)}\n" + "\n".join(kept) + "\n")
    return out


def pair_keys(root: Path, pairs: Path) -> list[tuple[str | None, str | None, bool, int]]:
    """(key1, key2, same, fold) of every pair, with the image keys evaluate's loader gives."""
    from pam_faceid.model.evaluate import load_image, pair_image_index, parse_pairs, scan_dataset

    index = pair_image_index(scan_dataset(root))
    cache: dict[Path, str] = {}

    def key(path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in cache:
            cache[path] = image_key(load_image(path))
        return cache[path]

    return [(key(index.get((p.name1, p.index1))), key(index.get((p.name2, p.index2))), p.same, p.fold)
            for p in parse_pairs(pairs).pairs]


# ---------------------------------------------------------------- per-backend pipelines (run in the worker)

class Ours:
    """The shipped model on `faceid evaluate`'s path, through onnxruntime or torch."""

    def __init__(self, model: Path, backend: str):
        from pam_faceid.cli.evaluate import make_embed
        from pam_faceid.vision.faces import FacePipeline

        self.embed_image, self.embedder = make_embed(str(model), backend, False)
        self.pipeline = FacePipeline(policy="centre", min_size=20, spec=self.embedder.input)

    def prepare(self, image: np.ndarray):
        crop, _reason = self.pipeline.process(image)
        return crop

    def embed_prepared(self, crop: np.ndarray) -> np.ndarray:
        return self.embedder.embed_one(crop)


class Dlib:
    """dlib's HOG detector, 5-point predictor and ResNet descriptor, run as Howdy runs them."""

    def __init__(self) -> None:
        import cv2

        import _howdy_attempt as howdy

        self.cv2 = cv2
        self.detector, self.predictor, self.encoder = howdy.load_models()
        self.clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))

    def _shape(self, image: np.ndarray):
        grey = self.clahe.apply(self.cv2.cvtColor(image, self.cv2.COLOR_BGR2GRAY))
        boxes = list(self.detector(grey, 1))
        if not boxes:
            return None, None
        h, w = grey.shape
        box = min(boxes, key=lambda b: ((b.left() + b.right() - w) ** 2 + (b.top() + b.bottom() - h) ** 2))
        rgb = self.cv2.cvtColor(image, self.cv2.COLOR_BGR2RGB)
        return rgb, self.predictor(rgb, box)

    def prepare(self, image: np.ndarray):
        rgb, shape = self._shape(image)
        return None if shape is None else (rgb, shape)

    def embed_prepared(self, prepared) -> np.ndarray:
        rgb, shape = prepared
        vector = np.asarray(self.encoder.compute_face_descriptor(rgb, shape, 1), np.float32)
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        from pam_faceid.model.evaluate import NoFace

        prepared = self.prepare(image)
        if prepared is None:
            raise NoFace("no_face")
        return self.embed_prepared(prepared)


_pool_dlib: Dlib | None = None


def _dlib_pool_init() -> None:
    global _pool_dlib
    _pool_dlib = Dlib()


def _dlib_pool_embed(path: str) -> tuple[str, list[float] | None]:
    from pam_faceid.model.evaluate import ImageError, load_image

    try:
        image = load_image(path)
    except ImageError:
        return "", None
    assert _pool_dlib is not None
    prepared = _pool_dlib.prepare(image)
    vector = None if prepared is None else _pool_dlib.embed_prepared(prepared).tolist()
    return image_key(image), vector


def worker(backend: str, model: Path, speed_list: Path, pairs: Path, keys_file: Path, out: Path) -> None:
    """One backend, alone in this process: memory, speed, then accuracy; writes a JSON result."""
    import cv2

    started = time.monotonic()
    cv2.setNumThreads(1)
    from pam_faceid.model.evaluate import NoFace, evaluate, load_image

    pipeline = Dlib() if backend == "dlib" else Ours(model, backend)
    paths = [Path(p) for p in json.loads(speed_list.read_text())]
    first = load_image(paths[0])
    prepared = pipeline.prepare(first)
    pipeline.embed_prepared(prepared)
    load_seconds = time.monotonic() - started
    memory = proc_memory(__import__("os").getpid())

    images = [load_image(p) for p in paths]
    prepared = [pipeline.prepare(image) for image in images]
    faces = [p for p in prepared if p is not None]
    per_face, rates = [], []
    for n in range(PASSES + 1):
        pass_started = time.perf_counter()
        times = []
        for item in faces:
            t = time.perf_counter()
            pipeline.embed_prepared(item)
            times.append(time.perf_counter() - t)
        if n:  # pass 0 warms caches up
            per_face += times
            rates.append(len(faces) / (time.perf_counter() - pass_started))
    end_to_end = []
    for n in range(2):
        for image in images:
            t = time.perf_counter()
            item = pipeline.prepare(image)
            if item is not None:
                pipeline.embed_prepared(item)
            if n:
                end_to_end.append(time.perf_counter() - t)
    del images, prepared, faces

    vectors: dict[str, np.ndarray] = {}
    if backend == "dlib":
        from multiprocessing import get_context

        from pam_faceid.model.evaluate import pair_image_index, parse_pairs, scan_dataset

        index = pair_image_index(scan_dataset(DEV_LFW))
        todo = sorted({str(index[k]) for p in parse_pairs(pairs).pairs
                       for k in ((p.name1, p.index1), (p.name2, p.index2)) if k in index})
        with get_context("fork").Pool(2, initializer=_dlib_pool_init) as pool:
            computed = dict(pool.imap_unordered(_dlib_pool_embed, todo, chunksize=8))

        def embed(image: np.ndarray) -> np.ndarray:
            vector = computed.get(image_key(image))
            if vector is None:
                raise NoFace("no_face")
            vectors[image_key(image)] = np.asarray(vector, np.float32)
            return vectors[image_key(image)]
        workers = 1
    else:
        def embed(image: np.ndarray) -> np.ndarray:
            vector = pipeline.embed_image(image)
            vectors[image_key(image)] = vector
            return vector
        workers = 2
    result = evaluate(DEV_LFW, embed, pairs=pairs, workers=workers)
    scores, labels = [], []
    for key1, key2, same, _fold in json.loads(keys_file.read_text()):
        if key1 is None or key2 is None:
            continue
        a, b = vectors.get(key1), vectors.get(key2)
        scores.append(float(np.dot(a, b)) if a is not None and b is not None else -1.0)
        labels.append(bool(same))
    out.write_text(json.dumps({
        "backend": backend,
        "load_seconds": load_seconds,
        "memory": memory,
        "faces_timed": len(per_face) // PASSES,
        "ms_per_face": 1000 * median(per_face),
        "faces_per_second": median(rates),
        "end_to_end_ms_per_photo": 1000 * median(end_to_end),
        "accuracy": {k: result.get(k) for k in ("accuracy", "accuracy_std", "auc", "eer", "tar_at_far_1e-2",
                                                 "tar_at_far_1e-3", "pairs", "pairs_scored", "pairs_no_face",
                                                 "no_face", "images")},
        "threshold": getattr(getattr(pipeline, "embedder", None), "threshold", None),
        "scores": scores,
        "labels": labels,
    }))


# ---------------------------------------------------------------- the parent

def speed_photos(pairs: Path, count: int) -> list[str]:
    """The first ``count`` pair photos in which both YuNet and HOG find a face: the same faces for every backend."""
    from pam_faceid.model.evaluate import load_image, pair_image_index, parse_pairs, scan_dataset

    index = pair_image_index(scan_dataset(DEV_LFW))
    ours, theirs = Ours.__new__(Ours), Dlib()
    from pam_faceid.vision.faces import FacePipeline

    ours.pipeline = FacePipeline(policy="centre", min_size=20)
    chosen: list[str] = []
    for pair in parse_pairs(pairs).pairs:
        for k in ((pair.name1, pair.index1), (pair.name2, pair.index2)):
            path = index.get(k)
            if path is None or str(path) in chosen:
                continue
            image = load_image(path)
            if ours.prepare(image) is not None and theirs.prepare(image) is not None:
                chosen.append(str(path))
            if len(chosen) >= count:
                return chosen
    return chosen


def run(model: Path, quick: int | None, backends: list[str]) -> dict:
    require_faces()
    require_model(model)
    with tempfile.TemporaryDirectory(prefix="fidb-emb") as tmp:
        work = Path(tmp)
        pairs = quick_pairs(DEV_PAIRS, quick, work / "pairs.txt") if quick else DEV_PAIRS
        speed_list = work / "speed.json"
        speed_list.write_text(json.dumps(speed_photos(pairs, SPEED_FACES)))
        keys_file = work / "keys.json"
        keys_file.write_text(json.dumps(pair_keys(DEV_LFW, pairs)))
        results = {}
        for backend in backends:
            out = work / f"{backend}.json"
            started = time.monotonic()
            proc = subprocess.run([str(PYTHON), __file__, "--worker", backend, "--model", str(model),
                                   "--speed-list", str(speed_list), "--pairs", str(pairs), "--keys", str(keys_file),
                                   "--out", str(out)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"embedder: {backend} worker failed: {proc.stderr.strip()[-1500:]}")
            results[backend] = json.loads(out.read_text())
            results[backend]["label"] = LABELS[backend]
            results[backend]["worker_seconds"] = time.monotonic() - started
            print(f"{backend}: {results[backend]['ms_per_face']:.2f} ms/face, "
                  f"RSS {results[backend]['memory']['rss_mb']:.0f} MiB, "
                  f"accuracy {results[backend]['accuracy']['accuracy']}", file=sys.stderr)
    ratios = {}
    if "onnx" in results and "dlib" in results:
        ratios["dlib_over_onnx_ms_per_face"] = results["dlib"]["ms_per_face"] / results["onnx"]["ms_per_face"]
        ratios["dlib_over_onnx_end_to_end"] = (results["dlib"]["end_to_end_ms_per_photo"]
                                               / results["onnx"]["end_to_end_ms_per_photo"])
        ratios["dlib_over_onnx_rss"] = results["dlib"]["memory"]["rss_mb"] / results["onnx"]["memory"]["rss_mb"]
    if "onnx" in results and "torch" in results:
        ratios["torch_over_onnx_ms_per_face"] = results["torch"]["ms_per_face"] / results["onnx"]["ms_per_face"]
        ratios["torch_over_onnx_rss"] = results["torch"]["memory"]["rss_mb"] / results["onnx"]["memory"]["rss_mb"]
    return {"machine": machine(), "model": str(model), "pairs_file": str(DEV_PAIRS),
            "quick": quick, "speed_faces": SPEED_FACES, "passes": PASSES, "backends": results, "ratios": ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model(), help="model folder (default: bundled)")
    parser.add_argument("--quick", type=int, metavar="N",
                        help="only the first N pairs of each half-fold (development; reported runs use all)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma list of onnx,torch,dlib")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "embedder.json", help="result JSON")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--speed-list", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.model, args.speed_list, args.pairs, args.keys, args.out)
        return 0
    result = run(args.model, args.quick, [b for b in args.backends.split(",") if b])
    save_json(args.out, result)
    for _name, r in result["backends"].items():
        acc = r["accuracy"]["accuracy"]
        print(f"{r['label']:<34} {r['ms_per_face']:6.2f} ms/face  {r['faces_per_second']:6.1f} faces/s  "
              f"end-to-end {r['end_to_end_ms_per_photo']:6.1f} ms/photo  RSS {r['memory']['rss_mb']:5.0f} MiB  "
              f"dev pairs accuracy {acc if acc is None else round(acc, 4)}")
    print(" ".join(f"{k}={v:.2f}" for k, v in result["ratios"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
