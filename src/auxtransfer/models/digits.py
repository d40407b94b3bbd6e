"""A small CNN for 8x8 single-channel images: scikit-learn's handwritten digits."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._checks import check_int
from ._head import PooledLinearHead

__all__ = ["DigitsCNN"]


def _layer(in_planes: int, planes: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(planes),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(PooledLinearHead, nn.Module):
    """A 3x3 stem to ``width`` channels, two blocks of two 3x3 conv-BN-ReLU layers (widths
    ``width`` and ``2 * width``; block 2 starts with stride 2, so 8x8 becomes 4x4), global
    average pooling and a linear classifier. ``width=32``: 75,114 parameters with 10
    classes.

    Its layer addresses are ``stem, 1.0, 1.1, 2.0, 2.1, head`` (``"2.0"`` is block 2,
    layer 0). It speaks timm's model protocol, and is initialised as the CIFAR networks
    are (``init_weights``).

    Args:
        width: Channels of the stem and block 1 (block 2 has twice as many).
        num_classes: Size of the classifier.
        in_chans: Input channels.

    Examples:
        >>> import torch
        >>> model = DigitsCNN(width=4, num_classes=5)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 5])
    """

    _classifier_name = "fc"

    def __init__(self, width: int = 32, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        check_int("width", width, minimum=1)
        check_int("in_chans", in_chans, minimum=1)
        self.stem = _layer(in_chans, width)
        self.block1 = nn.Sequential(_layer(width, width), _layer(width, width))
        self.block2 = nn.Sequential(_layer(width, 2 * width, stride=2), _layer(2 * width, 2 * width))  # fmt: skip
        self.fc = nn.Linear(2 * width, num_classes)
        self.num_classes = num_classes
        self.num_features = 2 * width
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, ``[B, 2 * width, 4, 4]`` for 8x8 inputs."""
        return self.block2(self.block1(self.stem(x)))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups in timm's format: ``"stem"``, then ``block.layer``."""
        return {"stem": r"^stem\.", "blocks": r"^block(\d+)\." if coarse else r"^block(\d+)\.(\d+)\."}  # fmt: skip
