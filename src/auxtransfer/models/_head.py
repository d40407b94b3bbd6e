"""What both CIFAR networks share: the pooled linear head with timm's head protocol, and
the initialisation of the reference implementations the paper built on."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from .._checks import check_int


def check_depth(depth: object) -> int:
    """Both networks have three stages of ``(depth - 4) // 6`` blocks."""
    depth = check_int("depth", depth, minimum=10)
    if (depth - 4) % 6:
        raise ValueError(
            f"Expected `depth` to be an int >= 10 with (depth - 4) % 6 == 0, but got {depth}."
        )
    return depth


def reference_init(model: nn.Module) -> None:
    """The initialisation of the reference DenseNet and WRN code for CIFAR: convolutions
    ``normal(0, sqrt(2 / (k * k * out_channels)))`` (fan-out Kaiming), norm weights 1 and
    biases 0 (running statistics reset), linear layers PyTorch's default with a zero bias."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
            nn.init.zeros_(module.bias)


class PooledLinearHead:
    """Mixin: global average pooling and a linear classifier named by ``_classifier_name``.

    Gives ``forward_head``, ``forward``, ``get_classifier`` and ``reset_classifier``; the
    class provides ``forward_features``, ``num_features`` and the classifier module.
    """

    _classifier_name: str
    num_features: int
    num_classes: int

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling, then the classifier (skipped with ``pre_logits``)."""
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def init_weights(self) -> None:
        """Re-initialise every weight as the constructor does (see ``reference_init``)."""
        reference_init(cast(nn.Module, self))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self._classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier for ``num_classes`` (an ``Identity`` for 0), on the same device
        and dtype, with a zero bias."""
        old = self.get_classifier()
        weight = old.weight if isinstance(old, nn.Linear) else None
        self.num_classes = num_classes
        new: nn.Module = nn.Identity()
        if num_classes > 0:
            new = nn.Linear(self.num_features, num_classes)
            nn.init.zeros_(new.bias)
            if weight is not None:
                new.to(weight.device, weight.dtype)
        setattr(self, self._classifier_name, new)
