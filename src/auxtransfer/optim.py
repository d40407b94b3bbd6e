"""Optimizer parameter groups with one learning rate up to an address and another after it."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from torch import nn

from ._checks import describe
from .layers import layer_map

__all__ = ["MOMENTUM", "WEIGHT_DECAY", "check_rate", "check_sgd", "layerwise_lr"]

#: SGD's momentum in the paper (0.9): the default of every run, example and module.
MOMENTUM = 0.9
#: SGD's weight decay in DenseNet's reference code (1e-4): the default everywhere.
WEIGHT_DECAY = 1e-4


def layerwise_lr(
    model: nn.Module,
    *,
    until: str,
    lr: float,
    new_lr: float,
    decay: float | None = None,
    weight_decay: float | None = None,
    no_weight_decay_1d: bool = False,
    example_input: Any = None,
    input_size: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for a torch optimizer: ``lr`` up to ``until``, ``new_lr`` after it.

    The paper's transfer recipe: transferred layers (the stem up to and including
    ``until``) start at ``lr``, the layers after it and the head at ``new_lr``. With
    ``decay``, transferred layers get ``lr * decay ** k`` where ``k`` counts addresses back
    from ``until`` (timm's layer decay, but as a real ``lr`` on every group).

    Every group carries a real ``"lr"``, so any torch scheduler works group by group:
    ``MultiStepLR`` scales each from its own starting value. Frozen parameters
    (``requires_grad=False``) are left out; every trainable parameter appears exactly once.
    There is one group per contiguous run of addresses that share a rate (two with
    ``no_weight_decay_1d``), stem first, and each carries ``"addresses"``, the first and
    last address it holds, for logging.

    Args:
        model: A timm, torchvision or Hugging Face model, or any module [`layer_names`][auxtransfer.layer_names] maps.
        until: The last transferred address (``"2.9"``, ``"2"``, ``"stem"``, a module name).
        lr: Learning rate of the transferred layers.
        new_lr: Learning rate of the layers after ``until`` and the head.
        decay: Optional factor in (0, 1] applied once per address going back from ``until``.
        weight_decay: Weight decay to set on every group (else the optimizer's default).
        no_weight_decay_1d: Put biases and norm weights (parameters with at most one
            dimension) in groups with ``weight_decay=0``.
        example_input: A batch the model takes, for a model whose input size cannot be
            inferred (see [`layer_map`][auxtransfer.layer_map]).
        input_size: Or one input's size without the batch, e.g. ``(1, 28, 28)``.

    Returns:
        A list of parameter-group dicts for ``torch.optim``.

    Examples:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18()
        >>> groups = layerwise_lr(model, until="3", lr=0.01, new_lr=0.1)
        >>> for group in groups:
        ...     print(group["addresses"], group["lr"])
        ('stem', '3.1') 0.01
        ('4.0', 'head') 0.1
        >>> opt = torch.optim.SGD(groups, momentum=0.9)
    """
    lr = check_rate("lr", lr)
    new_lr = check_rate("new_lr", new_lr)
    if decay is not None:
        expected = "a float in (0, 1] (smaller learning rates towards the stem)"
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
            raise TypeError(f"Expected `decay` to be {expected}, but got {describe(decay)}.")
        if not 0.0 < float(decay) <= 1.0:
            raise ValueError(f"Expected `decay` to be {expected}, but got {decay}.")
    if weight_decay is not None:
        weight_decay = check_rate("weight_decay", weight_decay)
    groups, last = layer_map(model, example_input=example_input, input_size=input_size).cut(
        until, name="until"
    )
    parameters = dict(model.named_parameters())

    # One group per contiguous run of addresses that share a rate (and per weight decay
    # within it), so that a group's "addresses" span exactly what it holds.
    result: dict[tuple[int, float | None], dict[str, Any]] = {}
    run, previous = -1, None
    for index, group in enumerate(groups):
        if index <= last:
            rate = lr * float(decay) ** (last - index) if decay is not None else lr
        else:
            rate = new_lr
        for name in group.tensors:
            param = parameters.get(name)
            if param is None or not param.requires_grad:
                continue
            if rate != previous:
                run, previous = run + 1, rate
            wd = 0.0 if no_weight_decay_1d and param.ndim <= 1 else weight_decay
            entry = result.get((run, wd))
            if entry is None:
                entry = result[(run, wd)] = {
                    "params": [],
                    "lr": rate,
                    "addresses": (group.address, group.address),
                }
                if wd is not None:
                    entry["weight_decay"] = wd
            entry["params"].append(param)
            entry["addresses"] = (entry["addresses"][0], group.address)
    if not result:
        raise ValueError(
            f"Expected `model` to have trainable parameters, but all of {type(model).__name__}'s are frozen."
        )
    return list(result.values())


def check_sgd(*, momentum: Any, weight_decay: Any) -> tuple[float, float]:
    """SGD's ``momentum`` (in [0, 1)) and ``weight_decay`` (finite, >= 0) as floats, or the
    error naming the one that is wrong: the one check of these settings."""
    weight_decay = check_rate("weight_decay", weight_decay)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise TypeError(f"Expected `momentum` to be in [0, 1), but got {describe(momentum)}.")
    if not 0 <= float(momentum) < 1:
        raise ValueError(f"Expected `momentum` to be in [0, 1), but got {describe(momentum)}.")
    return float(momentum), weight_decay


def check_rate(name: str, value: Any) -> float:
    """``value`` as a float, finite and >= 0 (a learning rate, a weight decay), or the
    error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a finite float >= 0, but got {describe(value)}.")
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"Expected `{name}` to be a finite float >= 0, but got {value}.")
    return float(value)
