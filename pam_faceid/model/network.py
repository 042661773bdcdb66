"""The Siamese embedding network (torch): imported by training and the torch backend only."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v3_small

from pam_faceid.embedder import EMBEDDING_DIM


class EmbeddingNet(nn.Module):
    """MobileNetV3-small trunk (no pretrained weights) + a face head.

    The head flattens the 4x4 feature map instead of global-average pooling
    it: where a feature sits in an aligned face (eye vs mouth) is identity
    information that pooling would throw away. No batch norm after the last
    layer: with one, training leaned on per-batch statistics and every face
    came out the same at inference.
    """

    def __init__(self, dim: int = EMBEDDING_DIM, input_size: int = 112, dropout: float = 0.2):
        super().__init__()
        self.features = mobilenet_v3_small(weights=None).features
        with torch.no_grad():
            c, h, w = self.features(torch.zeros(1, 3, input_size, input_size)).shape[1:]
        self.head = nn.Sequential(
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.PReLU(128),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * h * w, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)


def load_weights(path: Path) -> EmbeddingNet:
    net = EmbeddingNet()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def export_onnx(net: EmbeddingNet, path: Path, input_size: int = 112) -> None:
    """Export with a dynamic batch axis; the daemon embeds one or a few crops at a time."""
    net = net.eval()
    dummy = torch.zeros(1, 3, input_size, input_size)
    torch.onnx.export(
        net, dummy, str(path), input_names=["crops"], output_names=["embeddings"],
        dynamic_axes={"crops": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=17, dynamo=False,
    )
