"""dlib's face descriptor ResNet in torch, loadable from dlib's file.

Two dlib behaviours torch does not share are written out here: stride-2
convolutions have no padding, and adding two tensors of different shapes
gives the larger shape, the smaller one padded with zeros (channels at the
end, rows at the bottom, columns at the right). The input is RGB,
(pixel - mean) / 256, done by ``pam_faceid.vision.embedder.preprocess`` from
model.json, not here.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from onnx import numpy_helper
import onnx

# (channels, downsampling blocks, plain blocks) per level, bottom-up, after the 32-channel stem.
LEVELS = ((32, 0, 3), (64, 1, 3), (128, 1, 2), (256, 1, 2), (256, 1, 0))


def level_start(top_levels: int) -> int:
    """Index in DlibResNet.blocks of the first block of the top ``top_levels`` levels."""
    if not 1 <= top_levels <= len(LEVELS):
        raise ValueError(f"top levels {top_levels}: 1 to {len(LEVELS)}")
    return sum(d + p for _, d, p in LEVELS[:len(LEVELS) - top_levels])


class Affine(nn.Module):
    """dlib's affine_ layer: a per-channel scale and shift (batch norm frozen at inference)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum takes the larger shape; what one side lacks counts as zero."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        pad = (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1])
        return F.pad(t, pad) if any(pad) else t

    return grow(a) + grow(b)


class Residual(nn.Module):
    """conv affine relu conv affine, plus the input (2x2 average-pooled when downsampling), then relu."""

    def __init__(self, cin: int, n: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, n, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.aff1 = Affine(n)
        self.conv2 = nn.Conv2d(n, n, 3, stride=1, padding=1)
        self.aff2 = Affine(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_padded(y, skip))


class DlibResNet(nn.Module):
    """150x150 normalised RGB in, the 128-d descriptor out (not unit length, as dlib's)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.aff = Affine(32)
        blocks, cin = [], 32
        for n, downs, plain in LEVELS:
            for down in [True] * downs + [False] * plain:
                blocks.append(Residual(cin, n, down))
                cin = max(cin, n)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 128, bias=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.aff(self.conv(x))), 3, 2)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x).mean(dim=(2, 3)))

    def convs_and_affines(self) -> list[nn.Module]:
        """The con and affine layers in the order dlib's file stores them."""
        out: list[nn.Module] = [self.conv, self.aff]
        for b in self.blocks:
            out += [b.conv1, b.aff1, b.conv2, b.aff2]
        return out


def from_dlib(net: Any) -> DlibResNet:
    """The torch module holding exactly the weights of dlib's file (a model.dlib_format.DlibNetwork)."""
    model = DlibResNet()
    stored = [w for layer, w in zip(net.layers, net.weights) if layer.kind in ("con", "affine")]
    targets = model.convs_and_affines()
    if len(stored) != len(targets):
        raise ValueError(f"dlib network has {len(stored)} conv/affine layers, the module {len(targets)}")
    with torch.no_grad():
        for module, w in zip(targets, stored):
            if isinstance(module, nn.Conv2d):
                module.weight.copy_(torch.from_numpy(np.ascontiguousarray(w["weight"])))
                module.bias.copy_(torch.from_numpy(w["bias"]))
            else:
                module.gamma.copy_(torch.from_numpy(w["gamma"]))
                module.beta.copy_(torch.from_numpy(w["beta"]))
        fc = next(w for layer, w in zip(net.layers, net.weights) if layer.kind == "fc")
        model.fc.weight.copy_(torch.from_numpy(fc["weight"]))
    return model.eval()


def folded(model: DlibResNet) -> DlibResNet:
    """A copy with each affine folded into the conv before it (fewer ops at run time, same outputs)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        pairs = [(model.conv, model.aff)] + [p for b in model.blocks for p in ((b.conv1, b.aff1), (b.conv2, b.aff2))]
        for conv, aff in pairs:
            conv.weight.mul_(aff.gamma[:, None, None, None])
            conv.bias.mul_(aff.gamma).add_(aff.beta)
            aff.gamma.fill_(1.0)
            aff.beta.fill_(0.0)
    for owner, name in [(model, "aff")] + [(b, n) for b in model.blocks for n in ("aff1", "aff2")]:
        setattr(owner, name, nn.Identity())
    return model


def from_onnx(path) -> DlibResNet:
    """The folded network back from an exported embedder.onnx (the torch backend; no .pt is shipped).

    Conv nodes come in the module's order; fp16 weights reach them through Cast nodes.
    """

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in graph.initializer}
    cast = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}

    def value(name: str) -> np.ndarray:
        while name in cast:
            name = cast[name]
        return values[name]

    convs = [n for n in graph.node if n.op_type == "Conv"]
    matmul = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    model = folded(DlibResNet())
    targets = [model.conv] + [c for b in model.blocks for c in (b.conv1, b.conv2)]
    if len(convs) != len(targets) or len(matmul) != 1:
        raise ValueError(f"{path}: {len(convs)} Conv and {len(matmul)} MatMul nodes; not a DlibResNet export")
    with torch.no_grad():
        for conv, node in zip(targets, convs):
            conv.weight.copy_(torch.from_numpy(value(node.input[1])))
            conv.bias.copy_(torch.from_numpy(value(node.input[2])))
        model.fc.weight.copy_(torch.from_numpy(value(matmul[0].input[1]).T.copy()))
    return model.eval()
