"""The pooled linear head both CIFAR networks share, with timm's head protocol."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
