"""MiniFASNet in torch, read from the source's state dicts, and its ONNX export: python -m pam_faceid.model.minifasnet.

The two anti-spoofing networks of minivision-ai/Silent-Face-Anti-Spoofing
(MiniFASNetV2 on 2.7x face crops, MiniFASNetV1SE on 4x ones; Apache-2.0)
are MobileNet-like: a strided stem, four stride-2 "transition" bottlenecks
(1x1 expand, 3x3 depthwise, 1x1 linear projection) and three stages of
residual bottlenecks between them; V1SE adds a squeeze-excitation gate to
the last bottleneck of each stage. A 1x1 conv to 512 channels, a 5x5
depthwise conv over the remaining 5x5 map, a 512-to-128 linear layer with
batch norm and a 128-to-3 classifier end it. The widths differ per
bottleneck (the networks were pruned), so they are read from the weights'
own shapes, not typed here: ``from_state_dict`` builds whichever network the
file holds.

``export`` writes ``pam_faceid/data/antispoof``: one ONNX file taking both
networks' crops (inputs ``crop_2_7`` and ``crop_4_0``, [N, 3, 80, 80], BGR
0-255) and giving their softmaxes ([N, 2, 3]: network, class), its
provenance (source, commit, sha256 of inputs and output, licence, command),
the Apache licence and a NOTICE. The same inputs give the same bytes.
``export --finetuned DIR --out OUT`` writes a model with the heads
``pam_faceid.model.pad_training`` fine-tuned (``Ensemble``: [N, 4, 3]), for
``faceid liveness --model OUT`` to measure beside the shipped one; it is not
shipped (docs/liveness.md, "Fine-tuning on rendered attacks").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pam_faceid.vision import antispoof
from pam_faceid.common.store import atomic_write_bytes

SOURCE_REPO = "https://github.com/minivision-ai/Silent-Face-Anti-Spoofing"
SOURCE_COMMIT = "b6d5f04ad78778917853b25c778acef6d5626d15"
SOURCE_PATH = "resources/anti_spoof_models"
LICENCE = "Apache License 2.0 (Copyright 2020 Minivision); LICENSE beside this file, copied from the source commit"
WEIGHTS = {  # ONNX input name -> (state dict file, its sha256), in antispoof.SCALES order
    "crop_2_7": ("2.7_80x80_MiniFASNetV2.pth", "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0"),
    "crop_4_0": ("4_0_0_80x80_MiniFASNetV1SE.pth", "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990"),
}
DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "minifasnet"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "antispoof"
OPSET = 17
NOTICE = """pam_faceid includes the face anti-spoofing model MiniFASNet (minifasnet.onnx in this folder).

MiniFASNet: Silent-Face-Anti-Spoofing
Copyright 2020 Minivision
{repo}
commit {commit}, {path}/{v2} and {path}/{v1se}

Licensed under the Apache License, Version 2.0 (LICENSE in this folder).
Changes: the two PyTorch state dicts were read into a network written for pam_faceid
(pam_faceid/model/minifasnet.py), batch normalisation folded into the convolutions, and
both networks exported together to one ONNX file{changes}
"""
FINETUNED_CHANGE = """.
The weights of the layers from {learn_from} up were then fine-tuned by pam_faceid
(pam_faceid/model/pad_training.py) on rendered presentation attacks and photos of live
people; the lower layers and every batch-norm statistic keep the source's values."""
UNCHANGED = "; the weights themselves are unchanged."
HEADS = ("both", "tuned")
"""What a fine-tuned export holds: the Ensemble of imported and fine-tuned heads, or the fine-tuned pair alone."""


class FormatError(ValueError):
    """A state dict that is not a MiniFASNet the way the source saved it."""


class ConvUnit(nn.Module):
    """Convolution without bias, batch norm and, except on linear projections, a per-channel PReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True,
                 padding: int | None = None):
        super().__init__()
        pad = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class Gate(nn.Module):
    """Squeeze-excitation: global average, 1x1 down with BN and ReLU, 1x1 up with BN, sigmoid, times the input."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.bn1(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(self.bn2(self.fc2(w)))


class Bottleneck(nn.Module):
    """1x1 expand, 3x3 depthwise (stride 1 or 2), 1x1 linear projection; plus the input when residual."""

    def __init__(self, cin: int, hidden: int, cout: int, stride: int, residual: bool, gate: int | None = None):
        super().__init__()
        self.conv = ConvUnit(cin, hidden, 1)
        self.conv_dw = ConvUnit(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvUnit(hidden, cout, 1, act=False)
        self.se_module = Gate(cout, gate) if gate else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stage(nn.Module):
    def __init__(self, blocks: list[Bottleneck]):
        super().__init__()
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


TRANSITIONS = ("conv_23", "conv_34", "conv_45")
STAGES = ("conv_3", "conv_4", "conv_5")
ORDER = ("conv_23", "conv_3", "conv_34", "conv_4", "conv_45", "conv_5")


class MiniFASNet(nn.Module):
    """One network; its widths come from ``shapes`` (state-dict key without "module." -> tensor shape)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        super().__init__()

        def shape(key: str) -> tuple[int, ...]:
            if key not in shapes:
                raise FormatError(f"no {key} in the state dict: not a MiniFASNet")
            return shapes[key]

        def bottleneck(prefix: str, stride: int, residual: bool) -> Bottleneck:
            hidden, cin = shape(f"{prefix}.conv.conv.weight")[:2]
            cout = shape(f"{prefix}.project.conv.weight")[0]
            gate = shapes.get(f"{prefix}.se_module.fc1.weight", (None,))[0]
            return Bottleneck(cin, hidden, cout, stride, residual, gate)

        stem = shape("conv1.conv.weight")
        self.conv1 = ConvUnit(stem[1], stem[0], 3, 2)
        self.conv2_dw = ConvUnit(stem[0], stem[0], 3, 1, groups=stem[0])
        for name in TRANSITIONS:
            setattr(self, name, bottleneck(name, 2, residual=False))
        for name in STAGES:
            count = len({k.split(".")[2] for k in shapes if k.startswith(f"{name}.model.")})
            setattr(self, name, Stage([bottleneck(f"{name}.model.{i}", 1, residual=True) for i in range(count)]))
        sep = shape("conv_6_sep.conv.weight")
        self.conv_6_sep = ConvUnit(sep[1], sep[0], 1)
        kernel = shape("conv_6_dw.conv.weight")[-1]
        self.conv_6_dw = ConvUnit(sep[0], sep[0], kernel, groups=sep[0], act=False, padding=0)
        embedding, width = shape("linear.weight")
        self.linear = nn.Linear(width, embedding, bias=False)
        self.bn = nn.BatchNorm1d(embedding)
        self.prob = nn.Linear(embedding, shape("prob.weight")[0], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, 3] for crops [N, 3, 80, 80] (BGR 0-255)."""
        return self.head(self.trunk(x, ORDER[0]), ORDER[0])

    def trunk(self, x: torch.Tensor, split: str) -> torch.Tensor:
        """The layers below ``split`` (a name in ORDER): what fine-tuning leaves as imported."""
        x = self.conv2_dw(self.conv1(x))
        for name in ORDER[:ORDER.index(split)]:
            x = getattr(self, name)(x)
        return x

    def head(self, x: torch.Tensor, split: str) -> torch.Tensor:
        """Logits from the trunk's output: ``split`` and the layers above it."""
        for name in ORDER[ORDER.index(split):]:
            x = getattr(self, name)(x)
        return self.prob(self.bn(self.linear(self.conv_6_dw(self.conv_6_sep(x)).flatten(1))))

    def head_parameters(self, split: str) -> list[str]:
        """Names of the parameters of ``split`` and the layers above it."""
        below = ("conv1", "conv2_dw") + ORDER[:ORDER.index(split)]
        return [name for name, _ in self.named_parameters() if name.split(".")[0] not in below]


def read_state_dict(path: Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors, keys without DataParallel's "module." prefix; checked against ``sha256`` when given."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise FormatError(f"{path}: sha256 {digest} is not the expected {sha256}")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise FormatError(f"{path}: not a state dict")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def from_state_dict(state: dict[str, torch.Tensor]) -> MiniFASNet:
    """The network the state dict describes, with its weights, in eval mode; every key must be used."""
    model = MiniFASNet({k: tuple(v.shape) for k, v in state.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(f"state dict does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


class Pair(nn.Module):
    """Both networks, each on its own crop: softmaxes [N, 2, 3] (network, class)."""

    def __init__(self, first: MiniFASNet, second: MiniFASNet):
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, crop_2_7: torch.Tensor, crop_4_0: torch.Tensor) -> torch.Tensor:
        return torch.stack([F.softmax(self.first(crop_2_7), dim=1), F.softmax(self.second(crop_4_0), dim=1)], dim=1)


class Ensemble(nn.Module):
    """The imported pair and its fine-tuned heads on their shared trunks: softmaxes [N, 4, 3].

    Fine-tuning changes only the layers from ``split`` up, so each network's
    trunk runs once and feeds both its imported head and its fine-tuned one
    (order: V2 imported, V2 fine-tuned, V1SE imported, V1SE fine-tuned). The
    run-time score is the mean "real" of all four: the imported heads keep
    what 5 M real captures taught them, the fine-tuned ones add the rendered
    attacks, and neither decides alone.
    """

    def __init__(self, imported: Pair, tuned: Pair, split: str):
        super().__init__()
        self.imported = imported
        self.tuned = tuned
        self.split = split

    def forward(self, crop_2_7: torch.Tensor, crop_4_0: torch.Tensor) -> torch.Tensor:
        out = []
        for base, tuned, crop in ((self.imported.first, self.tuned.first, crop_2_7),
                                  (self.imported.second, self.tuned.second, crop_4_0)):
            shared = base.trunk(crop, self.split)
            out += [F.softmax(base.head(shared, self.split), dim=1), F.softmax(tuned.head(shared, self.split), dim=1)]
        return torch.stack(out, dim=1)


def load_pair(source: Path = DEFAULT_SOURCE, finetuned: Path | None = None) -> Pair:
    """The imported pair; with ``finetuned`` (a folder pad_training wrote) its weights replaced by the fine-tuned ones."""
    nets = [from_state_dict(read_state_dict(Path(source) / name, sha)) for name, sha in WEIGHTS.values()]
    pair = Pair(*nets)
    if finetuned is not None:
        state = torch.load(Path(finetuned) / "pair.pt", map_location="cpu", weights_only=True)
        try:
            pair.first.load_state_dict(state["first"])
            pair.second.load_state_dict(state["second"])
        except (KeyError, RuntimeError) as exc:
            raise FormatError(f"{finetuned}/pair.pt: not the fine-tuned pair of these networks: "
                              f"{(str(exc).splitlines() or [''])[0]}") from None
    return pair.eval()


def load_model(source: Path = DEFAULT_SOURCE, finetuned: Path | None = None, heads: str = "both") -> nn.Module:
    """What the export writes: the imported pair, or with ``finetuned`` the Ensemble of it and its fine-tuned
    heads (``heads`` "both") or the fine-tuned pair alone ("tuned")."""
    imported = load_pair(source)
    if finetuned is None:
        return imported
    tuned = load_pair(source, finetuned)
    if heads == "tuned":
        return tuned
    split = json.loads((Path(finetuned) / "training.json").read_text())["settings"]["learn_from"]
    return Ensemble(imported, tuned, split).eval()


def export_onnx(pair: nn.Module) -> bytes:
    """The ONNX bytes (fp32, opset 17, batch axis dynamic, batch norm folded): the same for the same weights."""
    import onnx

    buf = io.BytesIO()
    dummy = torch.zeros(1, 3, antispoof.SIZE, antispoof.SIZE)
    names = list(WEIGHTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(pair, (dummy, dummy), buf, input_names=names,
                          output_names=["probabilities"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_version = ""  # the bytes must not change with torch's patch release
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def provenance(source: Path, onnx_bytes: bytes, command: str, finetuned: Path | None = None,
               heads: str = "both") -> dict:
    inputs = {}
    for name, (file, _) in WEIGHTS.items():
        inputs[name] = {"file": f"{SOURCE_PATH}/{file}",
                        "sha256": hashlib.sha256((Path(source) / file).read_bytes()).hexdigest(),
                        "scale": antispoof.SCALES[list(WEIGHTS).index(name)],
                        "network": file.rsplit("_", 1)[-1].removesuffix(".pth")}
    return {
        "name": "MiniFASNet (V2 on 2.7x crops + V1SE on 4x crops)",
        "source": {"repository": SOURCE_REPO, "commit": SOURCE_COMMIT, "licence": LICENCE},
        "inputs": inputs,
        "input": {"size": antispoof.SIZE, "channels": "BGR", "range": "0-255, no mean, no scaling",
                  "crop": "face box enlarged by the scale around its centre, scale reduced to fit the frame, "
                          "slid inside it; resized (bilinear)"},
        "output": {"name": "probabilities", "shape": "[N, 2, 3]: network, class (0 2-D attack, 1 real, 2 3-D attack)",
                   "sha256": hashlib.sha256(onnx_bytes).hexdigest(), "bytes": len(onnx_bytes),
                   "format": f"ONNX opset {OPSET}, fp32, batch norm folded"},
        "command": command,
    } | ({} if finetuned is None else {"finetuned": finetuning(finetuned) | {"heads": heads}})


def finetuning(folder: Path) -> dict:
    """What the fine-tuned weights are: their sha256 and the training report's command, data and chosen epoch."""
    report = json.loads((Path(folder) / "training.json").read_text())
    history = report["history"]
    kept = min(history, key=lambda row: row["balanced_error"])
    return {"file": str(Path(folder) / "pair.pt"),
            "sha256": hashlib.sha256((Path(folder) / "pair.pt").read_bytes()).hexdigest(),
            "command": report["command"], "commit": report["commit"], "sets": report["sets"], "live": report["live"],
            "settings": report["settings"], "frames": report["frames"], "epoch": kept["epoch"],
            "validation": {"balanced_error": kept["balanced_error"],
                           "imported_balanced_error": history[0]["balanced_error"]}}


def export(source: Path = DEFAULT_SOURCE, out: Path = DEFAULT_OUT, finetuned: Path | None = None,
           heads: str = "both") -> Path:
    """Write minifasnet.onnx, minifasnet.json, LICENSE and NOTICE into ``out``: the shipped package data
    (the imported pair), or with ``finetuned`` a fine-tuned model for measuring (``faceid liveness --model``)."""
    source = Path(source)
    onnx_bytes = export_onnx(load_model(source, finetuned, heads))
    command = "python -m pam_faceid.model.minifasnet export --source ../shared/models/minifasnet"
    if finetuned is not None:
        command += f" --finetuned {finetuned} --heads {heads} --out {out}"
    meta = provenance(source, onnx_bytes, command, finetuned, heads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / antispoof.ONNX_FILE, onnx_bytes, mode=0o644)
    atomic_write_bytes(out / antispoof.META_FILE, (json.dumps(meta, indent=2) + "\n").encode(), mode=0o644)
    atomic_write_bytes(out / "LICENSE", (source / "LICENSE").read_bytes(), mode=0o644)
    names = [f for f, _ in WEIGHTS.values()]
    changes = FINETUNED_CHANGE.format(learn_from=meta["finetuned"]["settings"]["learn_from"]) if finetuned else UNCHANGED
    notice = NOTICE.format(repo=SOURCE_REPO, commit=SOURCE_COMMIT, path=SOURCE_PATH, v2=names[0], v1se=names[1],
                           changes=changes)
    atomic_write_bytes(out / "NOTICE", notice.encode(), mode=0o644)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pam_faceid.model.minifasnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    e = sub.add_parser("export", help="write the ONNX file, its provenance, LICENSE and NOTICE")
    e.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="folder with the two .pth files and LICENSE "
                   "(default ../shared/models/minifasnet)")
    e.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: pam_faceid/data/antispoof")
    e.add_argument("--finetuned", type=Path, help="a folder pad_training wrote (pair.pt, training.json): export the "
                   "fine-tuned model, for measuring, instead of the shipped one")
    e.add_argument("--heads", choices=HEADS, default="both", help="with --finetuned: the imported and fine-tuned heads "
                   "averaged (both, the default) or the fine-tuned pair alone (tuned)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.finetuned is not None and args.out == DEFAULT_OUT:
        parser.error("--finetuned needs --out: the shipped model is the imported one (docs/liveness.md says why)")
    try:
        out = export(args.source, args.out, args.finetuned, args.heads)
    except (FormatError, OSError, RuntimeError) as exc:
        print(f"minifasnet: {(str(exc).splitlines() or [type(exc).__name__])[0]}", file=sys.stderr)
        return 1
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
