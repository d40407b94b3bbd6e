"""What a forward pass touches, and in which order: run once on the meta device.

The layer map of a model without a timm ``group_matcher`` or a torchvision table, and the
cut at a full module name, both follow the forward pass rather than the order in which
modules were registered (a model may register its classifier first, or call a shortcut
branch before the main one). The pass runs on a copy of the model whose tensors are meta
tensors of the same shapes: no data is copied, nothing is computed, the model is untouched.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__: list[str] = []


@dataclass(frozen=True)
class Trace:
    """The order of first use in one forward pass.

    Attributes:
        modules: Module name -> position of its first call (the root is ``""``).
        tensors: Parameter or buffer name -> position of the first operation that read it.
    """

    modules: dict[str, int]
    tensors: dict[str, int]


def input_size(model: nn.Module) -> tuple[int, ...]:
    """The size of one example input: timm's ``pretrained_cfg``, a Hugging Face config's
    ``num_channels`` and ``image_size``, of the model or of the outermost module inside it
    that has one (a wrapped backbone), else 3x224x224."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None) or {}
        if cfg.get("input_size"):
            return tuple(cfg["input_size"])
        config = getattr(module, "config", None)
        size = getattr(config, "image_size", None)
        if isinstance(size, int):
            size = (size, size)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return (int(getattr(config, "num_channels", 3)), *map(int, size))
    return (3, 224, 224)


class _FirstUse(TorchFunctionMode):
    """Records the first operation that reads each of the watched tensors."""

    def __init__(self, watched: dict[int, str]) -> None:
        super().__init__()
        self.watched = watched
        self.order: dict[str, int] = {}

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Iterable[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # Reading an attribute (`weight.dtype`, `next(parameters()).device`) is no use of
        # the values.
        if getattr(func, "__name__", "") != "__get__":
            self._visit(args)
            self._visit(tuple(kwargs.values()))
        return func(*args, **kwargs)

    def _visit(self, values: Iterable[Any]) -> None:
        for value in values:
            if isinstance(value, torch.Tensor):
                name = self.watched.get(id(value))
                if name is not None and name not in self.order:
                    self.order[name] = len(self.order)
            elif isinstance(value, (tuple, list)):
                self._visit(value)


def _called(calls: dict[str, int], name: str, module: nn.Module, args: Any) -> None:
    calls.setdefault(name, len(calls))


def trace(model: nn.Module) -> Trace | None:
    """Run ``model`` once on a meta copy of itself; None where that cannot be done."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
        )
    calls: dict[str, int] = {}
    handles = []
    try:
        twin = copy.deepcopy(model, memo)
        for name, module in twin.named_modules():
            handles.append(
                module.register_forward_pre_hook(functools.partial(_called, calls, name))
            )
        watched = {
            id(tensor): name for name, tensor in [*twin.named_parameters(), *twin.named_buffers()]
        }
        recorder = _FirstUse(watched)
        with torch.no_grad(), warnings.catch_warnings(), recorder:
            warnings.simplefilter("ignore")
            twin.eval()(torch.empty(1, *input_size(model), device="meta"))
    except Exception:
        return None
    finally:
        for handle in handles:
            handle.remove()
    return Trace(calls, recorder.order)
