"""DenseNet-BC for 32x32 inputs, on torchvision's DenseNet."""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from .._checks import check_int
from .._naming import DENSENET_MATCHER
from ._head import PooledLinearHead, check_depth

__all__ = ["CifarDenseNet"]


class CifarDenseNet(PooledLinearHead, torchvision.models.DenseNet):
    """DenseNet-BC with the CIFAR stem (Huang et al., 2017).

    torchvision's ``DenseNet`` with its ImageNet stem (7x7 conv, BatchNorm, ReLU, max-pool)
    replaced by one 3x3 convolution, stride 1, to ``2 * growth_rate`` channels, and nothing
    after it. Bottleneck layers (``bn_size=4``) and compression 0.5 make it DenseNet-BC; the
    three dense blocks hold ``(depth - 4) // 6`` layers each. ``depth=100, growth_rate=12``
    is the paper's network: 800,032 parameters with 100 classes.

    It speaks timm's model protocol (``forward_features``, ``forward_head``,
    ``get_classifier``, ``reset_classifier``, ``group_matcher``), and its layer addresses
    are the paper's: ``"2.9"`` is block 2, layer 9.

    Weights are initialised as in the reference DenseNet code for CIFAR that the paper
    built on, not with torchvision's fan-in Kaiming: convolutions ``normal(0, sqrt(2 /
    (k * k * out_channels)))``, BatchNorm weight 1 and bias 0, the classifier's bias 0.
    ``init_weights()`` draws them again.

    Args:
        depth: Total depth ``L``, with ``(L - 4) % 6 == 0``.
        growth_rate: ``k``, channels added by each layer.
        num_classes: Size of the classifier.
        drop_rate: Dropout after each dense layer (0 in the paper).
        in_chans: Input channels.
    """

    classifier: nn.Module
    _classifier_name = "classifier"

    def __init__(
        self,
        depth: int = 100,
        growth_rate: int = 12,
        num_classes: int = 100,
        drop_rate: float = 0.0,
        in_chans: int = 3,
    ) -> None:
        check_depth(depth)
        check_int("growth_rate", growth_rate, minimum=1)
        layers = (depth - 4) // 6
        super().__init__(
            growth_rate=growth_rate,
            block_config=(layers, layers, layers),
            num_init_features=2 * growth_rate,
            bn_size=4,
            drop_rate=drop_rate,
            num_classes=num_classes,
        )
        stem = nn.Conv2d(in_chans, 2 * growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.features.conv0 = stem
        for name in ("norm0", "relu0", "pool0"):
            delattr(self.features, name)
        self.num_classes = num_classes
        width = 2 * growth_rate
        for block in range(3):
            width += layers * growth_rate
            width = width // 2 if block < 2 else width  # compression 0.5 in the transitions
        self.num_features = width
        self.depth, self.growth_rate = depth, growth_rate
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, after the final BatchNorm and ReLU."""
        return torch.relu(self.features(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups in timm's format: ``"stem"``, then ``block.layer``; transitions and
        the final BatchNorm go with the layer before them."""
        if coarse:
            return {
                "stem": r"^features\.conv0\.",
                "blocks": r"^features\.(?:denseblock|transition)(\d+)\.",
            }
        return dict(DENSENET_MATCHER)
