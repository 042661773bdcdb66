"""Write the shipped model folder from dlib's network file: python -m pam_faceid.model.convert.

``all`` regenerates pam_faceid/data/model from the installed
face_recognition_models package and the face folders: the template fit on
train/ (template.py), the ONNX export with fp16 weights, model.json with
the input spec and provenance, the enrol-3 threshold on dev/ (faceid
evaluate --set-threshold: the one thing fit on dev) and the negative bank
(python -m pam_faceid.model.negatives build). Each step is also a subcommand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import subprocess
import sys
import warnings
from typing import Any
from pathlib import Path
import io

import numpy as np
from onnx import TensorProto, helper, numpy_helper
import onnx
import torch

from pam_faceid import source_commit
from pam_faceid.vision.embedder import META_FILE, ONNX_FILE, InputSpec
from pam_faceid.model import dlib_format
from pam_faceid.common.store import atomic_write_bytes
from pam_faceid.model import template
from pam_faceid.vision import resnet
from pam_faceid.vision.embedder import preprocess
from pam_faceid.vision.resnet import folded

log = logging.getLogger(__name__)

SIZE = 150
LICENCE = ("CC0 1.0 (public domain): the LICENSE file inside face_recognition_models and the davisking/dlib-models "
           "README; the package's metadata says MIT")
UNFITTED = 1.0  # refuses everyone until faceid evaluate --set-threshold writes the real one


def load_network(weights: str | None = None, dat: Path | None = None):
    """(torch module, dlib network, dat path, package version); ``weights`` = a fine-tuned state dict instead.

    ``dat`` reads another copy of the file instead of the installed package's.
    """

    path, version = (Path(dat), "unknown (file given with --dat)") if dat else dlib_format.package_dat()
    net = dlib_format.read(path)
    model = resnet.from_dlib(net)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), net, path, version


def spec_of(net: dlib_format.DlibNetwork, template: np.ndarray) -> InputSpec:
    return InputSpec(size=net.input_size, template=np.asarray(template, np.float32), rgb=True,
                     mean=np.asarray(net.means, np.float32), scale=1 / 256)


def torch_embedder(model, threads: int = 2):
    """embed(crops, spec) -> descriptors, for fitting (torch, batches of 64)."""

    torch.set_num_threads(threads)

    def embed(crops: np.ndarray, spec: InputSpec) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), 64):
                out.append(model(torch.from_numpy(preprocess(crops[i:i + 64], spec))).numpy())
        return np.concatenate(out)

    return embed


def fit_template(root: Path, identities: int, per_identity: int, weights: str | None = None,
                 dat: Path | None = None) -> dict:
    model, net, _, _ = load_network(weights, dat)
    sample = template.load_sample(root, identities, per_identity)
    log.info("template sample: %d faces of %d people from %s", len(sample.labels), len(set(sample.labels)), root)
    points, report = template.fit(sample, torch_embedder(model), lambda t: spec_of(net, t), size=net.input_size)
    command = (f"python -m pam_faceid.model.convert template {root} --identities {identities} "
               f"--per-identity {per_identity}" + (f" --weights {weights}" if weights else ""))
    return {"template": [[round(float(v), 3) for v in p] for p in points], "data": str(root), "command": command,
            **report}


def export_onnx(model, size: int = SIZE) -> bytes:
    """The ONNX file's bytes: affines folded into the convs, a dynamic batch axis, fp16 weights cast at load."""

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are static at this input size
        torch.onnx.export(folded(model), torch.zeros(1, 3, size, size), buf, input_names=["crops"],
                          output_names=["embeddings"],
                          dynamic_axes={"crops": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and np.prod(init.dims) > 16:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def training_summary(path: Path) -> dict:
    """What faceid train-base's report.json says about fine-tuned against imported, for the provenance."""
    report = json.loads(Path(path).read_text())
    keep = ("tar_at_far_1e-3", "auc")
    return {"command": report.get("command"), "commit": report.get("commit"), "seconds": report.get("seconds"),
            "best_epoch": report["best"]["epoch"], "decision": report["decision"],
            "decide_faces": (report.get("data") or {}).get("decide_faces"),
            "held_out_decide": {name: {k: round(v[k], 5) for k in keep} for name, v in report["decide"].items()}}


VALIDATION_DATA = "held-out identities of the training data that decide imported against fine-tuned"


def validation_section(summary: dict, fine_tuned: bool) -> dict:
    """model.json's metrics.validation: the shipped network's held-out figures from its training run."""
    chosen = summary["held_out_decide"]["fine_tuned" if fine_tuned else "imported"]
    faces = summary.get("decide_faces")
    data = VALIDATION_DATA + (f" ({faces} faces)" if faces else "")
    return {"data": data, **chosen}


def write_model(out: Path, *, template: dict, weights: str | None, flip: bool, command: list[str],
                dat: Path | None = None, train_report: Path | None = None) -> Path:
    """embedder.onnx + model.json (input spec, provenance, an unfitted threshold) in ``out``."""

    model, net, dat, version = load_network(weights, dat)
    spec = spec_of(net, template["template"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ONNX_FILE, export_onnx(model, spec.size), mode=0o644)
    meta: dict[str, Any] = {
        "name": "dlib-resnet-v1" + ("+finetuned" if weights else ""),
        "architecture": "dlib's face descriptor ResNet (29 conv layers, 5.6 M parameters), 128-d, compared by cosine",
        "input": spec.to_metadata(),
        "template_source": {k: v for k, v in template.items() if k != "template"},
        "similarity": "cosine",
        "flip": flip,
        "threshold": UNFITTED,
        "threshold_source": "not fitted yet: faceid evaluate DEV --pairs PAIRS --enroll 3 --model DIR --set-threshold",
        "provenance": {
            "package": f"face_recognition_models {version}",
            "file": dat.name,
            "sha256": net.sha256,
            "licence": LICENCE,
            "fine_tuned": weights or None,
            "fine_tune_run": training_summary(train_report) if train_report else None,
            "onnx": f"fp16 weights (cast to fp32 at load), opset 17, torch {torch.__version__}",
            "command": " ".join(command),
            "commit": source_commit(),
            "date": datetime.date.today().isoformat(),
        },
    }
    if train_report:
        meta["metrics"] = {"validation": validation_section(meta["provenance"]["fine_tune_run"], bool(weights))}
    atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644)
    return out


def _faceid(*args: str) -> None:
    cmd = [sys.executable, "-m", "pam_faceid.cli", *args]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pam_faceid.model.convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    t = sub.add_parser("template", help="fit the five-point template on a labelled train/ folder; print it as JSON")
    t.add_argument("root", type=Path, help="e.g. ../shared/faces/train/lfw (never dev/)")
    e = sub.add_parser("export", help="write embedder.onnx and model.json (threshold unfitted)")
    e.add_argument("--template", type=Path, required=True, help="JSON written by the template step")
    a = sub.add_parser("all", help="template, export, threshold on dev, negative bank: the whole model folder")
    a.add_argument("--train", type=Path, required=True, help="../shared/faces/train")
    a.add_argument("--dev", type=Path, required=True, help="../shared/faces/dev (threshold only)")
    a.add_argument("--template", type=Path, help="reuse a fitted template JSON instead of fitting")
    for p in (t, a):
        p.add_argument("--identities", type=int, default=150, help="people in the template sample (default 150)")
        p.add_argument("--per-identity", type=int, default=4, help="photos per person (default 4)")
    for p in (e, a):
        p.add_argument("--out", type=Path, default=Path("pam_faceid/data/model"))
        p.add_argument("--flip", action="store_true", help="embed each crop and its mirror image, summed")
        p.add_argument("--workers", type=int, default=2)
    for p in (t, e, a):
        p.add_argument("--weights", help="fine-tuned state dict (faceid train-base's weights.pt) instead of the .dat's")
        p.add_argument("--dat", type=Path, help="dlib's network file (default: the installed face_recognition_models')")
    for p in (e, a):
        p.add_argument("--train-report", type=Path, help="faceid train-base's report.json, summarised in the provenance")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = ["python -m pam_faceid.model.convert", *(argv if argv is not None else sys.argv[1:])]
    try:
        if args.step == "template":
            print(json.dumps(fit_template(args.root, args.identities, args.per_identity, args.weights, args.dat),
                             indent=1))
            return 0
        if args.step == "export" or args.template:
            template = json.loads(args.template.read_text())
        else:
            template = fit_template(args.train / "lfw", args.identities, args.per_identity, args.weights, args.dat)
        write_model(args.out, template=template, weights=args.weights, flip=args.flip, command=command, dat=args.dat,
                    train_report=args.train_report)
    except (dlib_format.DlibFormatError, OSError, ValueError, RuntimeError, KeyError) as exc:
        print(f"convert: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 1
    if args.step == "all":
        dev = args.dev
        _faceid("evaluate", str(dev / "lfw"), "--pairs", str(dev / "pairs.txt"), "--enroll", "3", "--model",
                str(args.out), "--set-threshold", "--workers", str(args.workers))
        train = [str(args.train / s) for s in ("lfw", "celeba", "glint", "yaleb") if (args.train / s).is_dir()]
        subprocess.run([sys.executable, "-m", "pam_faceid.model.negatives", "build", str(args.out), *train], check=True)
    print(f"model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
