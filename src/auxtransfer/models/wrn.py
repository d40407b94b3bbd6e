"""Wide ResNet for 32x32 inputs (Zagoruyko & Komodakis, 2016)."""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_int, describe
from ._head import PooledLinearHead, check_depth

__all__ = ["WideResNet"]


class _Block(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3, BN-ReLU-dropout-conv3x3.

    When the width changes, the shortcut is a 1x1 convolution of the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.drop = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            None
            if in_planes == planes
            else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = torch.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class _Stage(nn.Module):
    def __init__(
        self, blocks: int, in_planes: int, planes: int, stride: int, drop_rate: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                _Block(in_planes if i == 0 else planes, planes, stride if i == 0 else 1, drop_rate)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(PooledLinearHead, nn.Module):
    """WRN-d-k: a 3x3 stem to 16 channels, three stages of pre-activation basic blocks
    (widths ``16k``, ``32k``, ``64k``; strides 1, 2, 2), BatchNorm-ReLU, global average
    pooling and a linear classifier. ``depth=28, widen_factor=10, drop_rate=0.3`` is the
    paper's WRN-28-10: 36,536,884 parameters with 100 classes.

    Module names follow the common PyTorch implementation (``block2.layer.3.conv1``), so
    layer addresses are ``"2.3"``. It speaks timm's model protocol.

    Args:
        depth: Total depth, with ``(depth - 4) % 6 == 0``.
        widen_factor: ``k``.
        drop_rate: Dropout between the two convolutions of each block.
        num_classes: Size of the classifier.
        in_chans: Input channels.
    """

    _classifier_name = "fc"
    conv1: nn.Conv2d
    block1: _Stage
    block2: _Stage
    block3: _Stage
    bn1: nn.BatchNorm2d

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        drop_rate: float = 0.3,
        num_classes: int = 100,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        check_depth(depth)
        check_int("widen_factor", widen_factor, minimum=1)
        if isinstance(drop_rate, bool) or not isinstance(drop_rate, numbers.Real):
            raise TypeError(
                f"Expected `drop_rate` to be a float in [0, 1), but got {describe(drop_rate)}."
            )
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(
                f"Expected `drop_rate` to be a float in [0, 1), but got {drop_rate!r}."
            )
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _Stage(blocks, widths[0], widths[1], 1, drop_rate)
        self.block2 = _Stage(blocks, widths[1], widths[2], 2, drop_rate)
        self.block3 = _Stage(blocks, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_classes = num_classes
        self.num_features = widths[3]
        self.init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return torch.relu(self.bn1(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Layer groups in timm's format: ``"stem"``, then ``stage.block``; the final
        BatchNorm goes with the last block."""
        blocks = r"^block(\d+)\." if coarse else r"^block(\d+)\.layer\.(\d+)\."
        return {"stem": r"^conv1\.", "blocks": [(blocks, None), (r"^bn1\.", (99999,))]}
