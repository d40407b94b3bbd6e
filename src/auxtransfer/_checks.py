"""Argument checks shared by the public functions.

Every message follows one pattern: the argument's name, what was expected, and what came.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []


def describe(value: Any) -> str:
    """A short description of a value for an error message."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def as_tensor(name: str, value: Any, expected: str) -> Tensor:
    """``value`` as a tensor, or a ``TypeError`` saying ``expected`` and what came."""
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"Expected `{name}` to be {expected}, but got {describe(value)}.") from None


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int``, or raise if it is not an integer at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise TypeError(f"Expected `{name}` to be an int{bound}, but got {describe(value)}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected `{name}` to be an int >= {minimum}, but got {value}.")
    return value


def check_seed(name: str, value: Any) -> int:
    """A seed is an integer in [0, 2**64)."""
    seed = check_int(name, value, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"Expected `{name}` to be an int in [0, 2**64), but got {seed}.")
    return seed


def check_unit_float(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` in [0, 1], or raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a float in [0, 1], but got {describe(value)}.")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Expected `{name}` to be a float in [0, 1], but got {value}.")
    return value


def check_labels(name: str, labels: Tensor, num_classes: int) -> None:
    """Raise if an integer label tensor has values outside [0, num_classes).

    On the CPU a bad value raises ``ValueError`` at once. On an accelerator the check runs on
    the device without a host synchronisation and fails at the next one. It is skipped while
    ``torch.compile`` traces, where reading values would break the graph.
    """
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(
            f"Expected `{name}` to be an integer tensor of class indices, but got {describe(labels)}."
        )
    if torch.compiler.is_compiling() or labels.numel() == 0:
        return
    if labels.device.type != "cpu":
        # Reading the values would stall the accelerator's queue every step; check on the
        # device instead, which fails at the next synchronisation with this message.
        in_range = ((labels >= 0) & (labels < num_classes)).all()
        torch._assert_async(in_range, f"`{name}` holds class indices outside [0, {num_classes})")
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"Expected `{name}` to hold class indices in [0, {num_classes}), but got {bad}."
        )


def caller_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that points at the first caller outside
    auxtransfer, however deep inside the package the warning is raised."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level
