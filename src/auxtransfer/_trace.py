"""What a forward pass touches, and in which order.

The layer map places every parameter and buffer at the address where a forward pass first
uses it, so it needs one pass: on a copy of the model whose tensors are meta tensors of the
same shapes (no data is copied, nothing is computed, the model is untouched), or, where an
operation cannot run on the meta device and the caller gave a real ``example_input``, on
the model itself in eval mode under ``torch.no_grad()`` (every module's mode restored).

The input is the caller's (``example_input`` or ``input_size``), else the size the model
states (timm's ``pretrained_cfg``, a Hugging Face config), else one guessed from its first
layer. A pass that cannot run is an error that asks for an input: a map built in module
registration order would cut models silently in the wrong place.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._checks import describe

__all__: list[str] = []

Stack = tuple[str, ...]


@dataclass(frozen=True)
class Trace:
    """What one forward pass used, in order.

    Attributes:
        modules: Module name -> position of its first call (the root is ``""``).
        tensors: Parameter or buffer name -> position of the first operation that read it.
        contexts: Tensor name -> the modules running at that first read, outermost first.
        users: Tensor name -> the module stacks of every operation that read it.
    """

    modules: dict[str, int]
    tensors: dict[str, int]
    contexts: dict[str, Stack]
    users: dict[str, set[Stack]]


class TraceError(ValueError):
    """The forward pass the layer map needs could not run; ``tried`` says what was tried."""

    def __init__(self, message: str, tried: str) -> None:
        super().__init__(message)
        self.tried = tried


def stated_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The input size a model states: timm's (the size its patch embedding was built for,
    else ``pretrained_cfg``), a Hugging Face config's ``num_channels`` and ``image_size``,
    torchvision's ``image_size`` with the channels of its first convolution (of the model
    or of the outermost module inside it that has one: a wrapped backbone)."""
    for module in model.modules():
        cfg = getattr(module, "pretrained_cfg", None) or {}
        if cfg.get("input_size"):
            return _built_input_size(module) or tuple(cfg["input_size"])
        size = getattr(module, "image_size", None)
        if isinstance(size, int) and not isinstance(size, bool):
            conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
            return (conv.in_channels if conv is not None else 3, size, size)
        config = getattr(module, "config", None)
        size = getattr(config, "image_size", None)
        if isinstance(size, int):
            size = (size, size)
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return (int(getattr(config, "num_channels", 3)), *map(int, size))
    return None


def _built_input_size(model: nn.Module) -> tuple[int, ...] | None:
    """The input a timm model with a patch embedding was built for: ``patch_embed.img_size``
    with the channels of its first convolution. timm leaves ``pretrained_cfg`` at the
    pretrained size (3x224x224) when ``img_size=`` or ``in_chans=`` differ, and a strict
    patch embedding refuses any other size."""
    embeds = (getattr(m, "patch_embed", None) for m in model.modules())
    embed = next((e for e in embeds if isinstance(e, nn.Module)), None)
    if embed is None:
        return None
    conv = next((m for m in embed.modules() if isinstance(m, nn.Conv2d)), None)
    size = getattr(embed, "img_size", None)
    if isinstance(size, int):
        size = (size, size)
    if conv is None or not (isinstance(size, (tuple, list)) and len(size) == 2):
        return None
    return (conv.in_channels, *map(int, size))


def _guessed_inputs(model: nn.Module) -> list[tuple[tuple[int, ...], torch.dtype | None]]:
    """Inputs to try for a model that states none: from its first layer (a convolution's
    channels at 224 pixels, a linear layer's width, token ids for an embedding), then
    3x224x224 images."""
    guesses: list[tuple[tuple[int, ...], torch.dtype | None]] = []
    layers = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)
    first = next((m for m in model.modules() if isinstance(m, layers)), None)
    if isinstance(first, nn.Conv2d):
        guesses.append(((first.in_channels, 224, 224), None))
    elif isinstance(first, nn.Conv1d):
        guesses.append(((first.in_channels, 224), None))
    elif isinstance(first, nn.Linear):
        guesses.append(((first.in_features,), None))
    elif isinstance(first, nn.Embedding):
        guesses.append(((16,), torch.long))
    if ((3, 224, 224), None) not in guesses:
        guesses.append(((3, 224, 224), None))
    return guesses


def check_input_size(input_size: Any) -> tuple[int, ...]:
    expected = "a tuple of positive ints, one input's size without the batch, e.g. (3, 32, 32)"
    if (
        not isinstance(input_size, Sequence)
        or isinstance(input_size, str)
        or not input_size
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)
    ):
        raise TypeError(f"Expected `input_size` to be {expected}, but got {describe(input_size)}.")
    return tuple(input_size)


class _Recorder(TorchFunctionMode):
    """Records, for each watched tensor, every module stack that reads it, and the first."""

    def __init__(self, watched: dict[int, str], stack: list[str]) -> None:
        super().__init__()
        self.watched = watched
        self.stack = stack
        self.order: dict[str, int] = {}
        self.contexts: dict[str, Stack] = {}
        self.users: dict[str, set[Stack]] = {}

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
                if name is None:
                    continue
                stack = tuple(self.stack)
                if name not in self.order:
                    self.order[name] = len(self.order)
                    self.contexts[name] = stack
                self.users.setdefault(name, set()).add(stack)
            elif isinstance(value, (tuple, list)):
                self._visit(value)


@contextmanager
def _module_stack(model: nn.Module, calls: dict[str, int], stack: list[str]) -> Iterator[None]:
    """Keeps ``stack`` as the names of the modules running, and notes first calls."""
    handles = []

    def enter(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            calls.setdefault(name, len(calls))
            stack.append(name)

        return hook

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        stack.pop()

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave, always_call=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
        )
    return copy.deepcopy(model, memo)


def _to_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta")
    if isinstance(value, (tuple, list)):
        return type(value)(_to_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_meta(v) for k, v in value.items()}
    return value


def _call(model: nn.Module, example: Any) -> None:
    if isinstance(example, dict):
        model(**example)
    elif isinstance(example, (tuple, list)):
        model(*example)
    else:
        model(example)


def _run(model: nn.Module, example: Any) -> Trace:
    """One pass of ``model`` (already in eval mode) on ``example``, recorded."""
    calls: dict[str, int] = {}
    stack: list[str] = []
    watched: dict[int, str] = {}
    # Held for the whole pass: a forward that replaces a buffer (ConViT's rel_indices)
    # would otherwise free it, and a new tensor could take its id.
    held = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, tensor in held:
        watched.setdefault(id(tensor), name)  # a shared tensor under its first name
    recorder = _Recorder(watched, stack)
    with torch.no_grad(), warnings.catch_warnings(), _module_stack(model, calls, stack):
        warnings.simplefilter("ignore")
        with recorder:
            _call(model, example)
    del held
    return Trace(calls, recorder.order, recorder.contexts, recorder.users)


def trace(
    model: nn.Module, *, example_input: Any = None, input_size: Sequence[int] | None = None
) -> Trace:
    """Run ``model`` once and record what it uses; a ``TraceError`` where no pass runs."""
    if example_input is not None and input_size is not None:
        raise ValueError("Expected one of `example_input` and `input_size`, but got both.")
    dtype = next(
        (t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()),
        torch.float32,
    )
    if example_input is not None:
        tries: list[tuple[str, Callable[[torch.device], Any]]] = [
            (
                "the example input",
                lambda device: _to_meta(example_input) if device.type == "meta" else example_input,
            )
        ]
    else:
        sizes: list[tuple[tuple[int, ...], torch.dtype | None]]
        if input_size is not None:
            sizes = [(check_input_size(input_size), None)]
        else:
            stated = stated_input_size(model)
            sizes = [(stated, None)] if stated is not None else _guessed_inputs(model)
        tries = [
            (
                f"input [1, {', '.join(map(str, size))}]",
                functools.partial(_zeros, size, kind or dtype),
            )
            for size, kind in sizes
        ]
    failures = []
    twin = _meta_twin(model).eval()
    for described, make in tries:
        try:
            return _run(twin, make(torch.device("meta")))
        except Exception as error:
            failures.append(f"{described}: {type(error).__name__}: {_first_line(error)}")
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    if device is not None and device.type != "meta" and not _is_meta(example_input):
        # An operation that needs values (`.item()`, a data-dependent shape): run the model
        # itself, in eval mode and without gradients, and restore every module's mode.
        modes = [(module, module.training) for module in model.modules()]
        for described, make in tries:
            try:
                model.eval()
                return _run(model, make(device))
            except Exception as error:
                failures.append(
                    f"{described} on {device.type}: {type(error).__name__}: {_first_line(error)}"
                )
            finally:
                for module, training in modes:
                    module.training = training
    hint = (
        "Pass `example_input=` (a batch the model takes, which also runs on real values where "
        "the meta device cannot)"
        if example_input is not None
        else "Pass `input_size=` (one input's size without the batch, e.g. (1, 28, 28)) or "
        "`example_input=` (a batch the model takes)"
    )
    tried = "; ".join(failures)
    raise TraceError(
        f"auxtransfer could not run {type(model).__name__}'s forward pass to see the order in "
        f"which it uses its layers (tried {tried}). {hint}: without that pass the layer map "
        f"cannot place every parameter where it is first used.",
        tried,
    )


def _zeros(size: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.zeros(1, *size, dtype=dtype, device=device)


def _is_meta(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_meta
    if isinstance(value, (tuple, list)):
        return any(_is_meta(v) for v in value)
    if isinstance(value, dict):
        return any(_is_meta(v) for v in value.values())
    return False


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 160 else line[:157] + "..."
