"""Freeze layers up to an address, undo it, and re-initialise layers after one."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ._checks import check_seed, describe
from .heads import RandomPartitionHead
from .layers import LayerGroup, layer_groups, resolve

__all__ = ["FreezeSummary", "ResetSummary", "freeze_until", "reset_after", "unfreeze"]

BatchNormPolicy = Literal["freeze", "update"]
# Attribute on the model listing the parameters freeze_until froze, for unfreeze.
_FROZEN = "_auxtransfer_frozen"


class _StayInEval:
    """Stands in for a frozen norm layer's ``train`` so ``model.train()`` leaves it in eval.

    A plain object rather than a closure, so that models with frozen layers still pickle
    and deep-copy (the copy's layer stays frozen too).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


@dataclass(frozen=True)
class FreezeSummary:
    """What :func:`freeze_until` did.

    Attributes:
        addresses: The frozen addresses, stem first.
        frozen_params: Number of parameter elements frozen.
        trainable_params: Number of parameter elements still trainable.
        frozen_norms: Names of the norm layers that keep their running statistics.
        bn: The BatchNorm policy used.
    """

    addresses: tuple[str, ...]
    frozen_params: int
    trainable_params: int
    frozen_norms: tuple[str, ...]
    bn: str

    def __str__(self) -> str:
        span = (
            self.addresses[0]
            if len(self.addresses) == 1
            else f"{self.addresses[0]} ... {self.addresses[-1]}"
        )
        total = self.frozen_params + self.trainable_params
        norms = (
            f"{len(self.frozen_norms)} norm layers keep their running statistics (bn='freeze')"
            if self.bn == "freeze"
            else "norm layers still update their running statistics in train mode (bn='update')"
        )
        return (
            f"froze {len(self.addresses)} layer groups ({span}): {self.frozen_params:,} of {total:,} "
            f"parameters; {self.trainable_params:,} stay trainable; {norms}"
        )


def freeze_until(
    model: nn.Module, address: str, *, bn: BatchNormPolicy = "freeze"
) -> FreezeSummary:
    """Freeze every parameter from the stem up to and including ``address``.

    Frozen parameters get ``requires_grad=False``. What happens to the BatchNorm layers of
    the frozen part is the caller's choice:

    - ``bn="freeze"`` (default): they also keep their running statistics. They are put in
      eval mode and stay there through later ``model.train()`` calls, so they normalise
      with the statistics learned on the source data and never update them. This is
      detectron2's and most fine-tuning recipes' behaviour.
    - ``bn="update"``: only ``requires_grad`` changes, as a plain ``requires_grad=False``
      loop would do; in train mode the running statistics follow the new data.

    ``track_running_stats`` is never touched, and ``state_dict`` keys and values are the
    same frozen or not. A second call replaces the first (so ``"4"``, then ``"2"``,
    then ``"1"`` unfreezes gradually); :func:`unfreeze` undoes it. Parameters that were
    already frozen before the call are left alone by both.

    Args:
        model: A timm or torchvision model, or any module :func:`layer_names` maps.
        address: The last address to freeze: ``"2.9"``, a whole block ``"2"``, ``"stem"``,
            ``"head"`` or a full module name.
        bn: ``"freeze"`` or ``"update"``, see above.

    Returns:
        A :class:`FreezeSummary`; ``print`` it for a readable line.

    Example:
        >>> import torchvision
        >>> model = torchvision.models.resnet18()
        >>> print(freeze_until(model, "2"))  # doctest: +NORMALIZE_WHITESPACE
        froze 5 layer groups (stem ... 2.1): 683,072 of 11,689,512 parameters;
        11,006,440 stay trainable; 10 norm layers keep their running statistics (bn='freeze')
    """
    if bn not in ("freeze", "update"):
        raise ValueError(f"Expected `bn` to be 'freeze' or 'update', but got {bn!r}.")
    groups = layer_groups(model)
    last = resolve(model, groups, address)
    frozen_groups = groups[: last + 1]
    parameters = dict(model.named_parameters())
    names = [t for g in frozen_groups for t in g.tensors if t in parameters]
    if not names:
        raise ValueError(
            f"Expected `address` to cover parameters, but {address!r} (up to "
            f"{groups[last].address!r}) holds buffers only."
        )
    # A new call replaces the previous one (gradual unfreezing: "4", then "2", then "1"), so
    # undo it first; parameters the caller had frozen by hand stay frozen, and unfreeze()
    # will not touch them either.
    unfreeze(model)
    mine = [name for name in names if parameters[name].requires_grad]
    for name in mine:
        parameters[name].requires_grad_(False)
    object.__setattr__(model, _FROZEN, mine)

    norms: list[str] = []
    if bn == "freeze":
        modules = dict(model.named_modules())
        for group in frozen_groups:
            for module_name in group.modules:
                module = modules.get(module_name)
                if isinstance(module, _NormBase) and module.track_running_stats:
                    module.train = _StayInEval(module)  # type: ignore[method-assign,assignment]
                    module.eval()
                    norms.append(module_name)
    trainable = sum(p.numel() for p in parameters.values() if p.requires_grad)
    frozen_count = sum(parameters[n].numel() for n in names)
    return FreezeSummary(
        tuple(g.address for g in frozen_groups), frozen_count, trainable, tuple(norms), bn
    )


def unfreeze(model: nn.Module) -> None:
    """Undo :func:`freeze_until`: parameters it froze train again, norm layers follow
    ``model.train()``/``eval()`` again (and take the model's current mode)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    parameters = dict(model.named_parameters())
    for name in getattr(model, _FROZEN, ()):
        if name in parameters:
            parameters[name].requires_grad_(True)
    if _FROZEN in model.__dict__:
        delattr(model, _FROZEN)
    for module in model.modules():
        if isinstance(module.__dict__.get("train"), _StayInEval):
            del module.__dict__["train"]
            module.train(model.training)


@dataclass(frozen=True)
class ResetSummary:
    """What :func:`reset_after` did.

    Attributes:
        addresses: The re-initialised addresses, ``"head"`` last.
        tensors: Names of the parameters and buffers re-initialised.
        skipped: Parameters after the address that no initialiser covers (left as they were).
        init: ``"model"`` when the model's own ``init_weights`` took part, else ``"modules"``.
    """

    addresses: tuple[str, ...]
    tensors: tuple[str, ...]
    skipped: tuple[str, ...]
    init: str


def reset_after(model: nn.Module, address: str, *, seed: int = 0) -> ResetSummary:
    """Re-initialise every layer after ``address``, the head included.

    Every module holding those layers' parameters gets its ``reset_parameters()``, norm
    layers also ``reset_running_stats()``. Where the model has its own initialiser (timm's
    ``init_weights()``), it then runs on a copy, and every reset tensor it re-initialised is
    taken from there: the model's own init wins where it has one. Parameters that neither
    covers (a bare ``nn.Parameter`` such as a layer scale on a model without
    ``init_weights``), and modules whose parameters are tied to a kept layer, are left as
    they were, listed in the result and named in a warning.

    The random draws come from the global generator seeded with ``seed`` inside
    ``torch.random.fork_rng``, so the result depends on ``seed`` (and the device) alone and
    the caller's random state is unchanged afterwards.

    Args:
        model: A timm or torchvision model, or any module :func:`layer_names` maps.
        address: The last address to keep; everything after it is re-initialised.
        seed: Seeds the new weights.

    Returns:
        A :class:`ResetSummary`.
    """
    seed = check_seed("seed", seed)
    groups = layer_groups(model)
    last = resolve(model, groups, address)
    reset_groups = groups[last + 1 :]
    if not reset_groups:
        raise ValueError(
            f"Expected `address` to leave layers after it, but {address!r} is the last one."
        )
    tensors = [t for g in reset_groups for t in g.tensors]
    kept = {id(t) for t in _tensors(model, [t for g in groups[: last + 1] for t in g.tensors])}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        skipped = _reset_modules(model, reset_groups, kept)
        owner, prefix = _init_owner(model)
        init = "modules"
        if owner is not None:
            covered = _reset_from_model_init(owner, prefix, model, tensors, kept)
            skipped = [name for name in skipped if name not in covered]
            init = "model"
    if skipped:
        import warnings

        warnings.warn(
            f"reset_after left {len(skipped)} parameters as they were: no initialiser covers "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}.",
            stacklevel=2,
        )
    return ResetSummary(
        tuple(g.address for g in reset_groups), tuple(tensors), tuple(skipped), init
    )


def _tensors(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return [own[name] for name in names if name in own]


def _init_owner(model: nn.Module) -> tuple[nn.Module | None, str]:
    """The module whose own ``init_weights()`` to use, and its name prefix."""
    if isinstance(model, RandomPartitionHead):
        model, prefix = model.backbone, "backbone."
    else:
        prefix = ""
    return (model, prefix) if callable(getattr(model, "init_weights", None)) else (None, prefix)


def _reset_from_model_init(
    owner: nn.Module, prefix: str, model: nn.Module, tensors: list[str], kept: set[int]
) -> set[str]:
    """Run ``owner.init_weights()`` on a copy; take the reset tensors it re-initialised.

    Returns the names it covered. Tensors its init leaves alone (timm's ResNet initialises
    only convolutions) keep the values ``reset_parameters()`` gave them.
    """
    fresh = copy.deepcopy(owner)
    before = {n: t.detach().clone() for n, t in fresh.state_dict().items()}
    fresh.init_weights()  # type: ignore[operator]
    source = fresh.state_dict()
    target = model.state_dict(keep_vars=True)
    covered = set()
    with torch.no_grad():
        for name in tensors:
            inner = name[len(prefix) :] if name.startswith(prefix) else None
            if inner is None or inner not in source or id(target[name]) in kept:
                continue
            if not torch.equal(source[inner], before[inner]):
                target[name].copy_(source[inner])
                covered.add(name)
    return covered


def _reset_modules(model: nn.Module, groups: list[LayerGroup], kept: set[int]) -> list[str]:
    """reset_parameters() of every module that holds parameters of ``groups`` directly."""
    modules = dict(model.named_modules())
    covered: set[str] = set()
    for group in groups:
        for module_name in group.modules:
            module = modules.get(module_name)
            if module is None:
                continue
            own = list(module.named_parameters(recurse=False))
            if any(id(p) in kept for _, p in own):
                continue  # a parameter tied to a kept layer: resetting would change that layer
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None
            )
            if own and callable(reset):
                reset()
                prefix = f"{module_name}." if module_name else ""
                covered.update(prefix + n for n, _ in own)
            if isinstance(module, _NormBase) and module.track_running_stats:
                module.reset_running_stats()
    parameters = dict(model.named_parameters())
    return [t for g in groups for t in g.tensors if t in parameters and t not in covered]
