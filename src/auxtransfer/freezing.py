"""Freeze layers up to an address, undo it, and re-initialise layers after one."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ._checks import check_seed, describe
from ._twin import build_twin, is_transformers_model, torchvision_model_class
from .classifier import classifier_widths, find_classifier
from .layers import layer_map

__all__ = [
    "BN_POLICIES",
    "DEFAULT_BN",
    "FreezeSummary",
    "ResetSummary",
    "check_bn",
    "freeze_until",
    "reset_after",
    "unfreeze",
]

BatchNormPolicy = Literal["freeze", "update"]
#: The BatchNorm policies of frozen layers.
BN_POLICIES: tuple[BatchNormPolicy, ...] = ("freeze", "update")
#: The policy of ``freeze_until``, the Lightning callback and the reference application
#: alike, unless one is chosen: frozen norm layers keep their running statistics.
DEFAULT_BN: BatchNormPolicy = "freeze"
# Attribute on each module that holds parameters freeze_until froze: the names of those
# parameters in the module. Kept on the modules themselves, so that every view of a model
# (the backbone, a wrapper around it, a deep copy, a pickle) sees the same state.
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
    """What [`freeze_until`][auxtransfer.freeze_until] did.

    Attributes:
        addresses: The frozen addresses, stem first.
        frozen_params: Number of parameter elements frozen.
        trainable_params: Number of parameter elements still trainable.
        frozen_norms: Names of the norm layers that keep their running statistics.
        bn: The BatchNorm policy used.
        shared: Frozen parameters that layers after the cut use too (a table every block
            reads, a tied weight): they belong to their first use, so they are frozen for
            those layers as well. See [`LayerMap.shared`][auxtransfer.LayerMap].
        unused: Frozen parameters the forward pass never reads (frozen with their module).
    """

    addresses: tuple[str, ...]
    frozen_params: int
    trainable_params: int
    frozen_norms: tuple[str, ...]
    bn: str
    shared: tuple[str, ...] = ()
    unused: tuple[str, ...] = ()

    def __str__(self) -> str:
        span = (
            self.addresses[0]
            if len(self.addresses) == 1
            else f"{self.addresses[0]} ... {self.addresses[-1]}"
        )
        total = self.frozen_params + self.trainable_params
        held = len(self.frozen_norms)
        norms = (
            f"{held} norm layer{'s keep' if held != 1 else ' keeps'} {'their' if held != 1 else 'its'} "
            f"running statistics (bn='freeze')"
            if self.bn == "freeze"
            else "norm layers still update their running statistics in train mode (bn='update')"
        )
        shared = (
            f"; {len(self.shared)} shared with later layers, frozen there too: "
            f"{', '.join(self.shared[:3])}{', ...' if len(self.shared) > 3 else ''}"
            if self.shared
            else ""
        )
        groups = f"{len(self.addresses)} layer group{'s' if len(self.addresses) != 1 else ''}"
        return (
            f"froze {groups} ({span}): {self.frozen_params:,} of {total:,} "
            f"parameters; {self.trainable_params:,} stay trainable; {norms}{shared}"
        )


def check_bn(bn: Any) -> BatchNormPolicy:
    """``bn`` if it is a BatchNorm policy (``"freeze"`` or ``"update"``), else the error
    naming ``bn``: the one check of this setting."""
    if not isinstance(bn, str):
        raise TypeError(f"Expected `bn` to be 'freeze' or 'update', but got {describe(bn)}.")
    if bn not in BN_POLICIES:
        raise ValueError(f"Expected `bn` to be 'freeze' or 'update', but got {bn!r}.")
    return bn


def freeze_until(
    model: nn.Module,
    address: str,
    *,
    bn: BatchNormPolicy = DEFAULT_BN,
    example_input: Any = None,
    input_size: Sequence[int] | None = None,
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
    same frozen or not. What was frozen is recorded on the layers themselves, so the
    backbone and a wrapper around it (a
    [`RandomPartitionHead`][auxtransfer.RandomPartitionHead], DDP) see one state: a second
    call, on either, replaces the first (so ``"4"``, then ``"2"``, then ``"1"`` unfreezes
    gradually), and [`unfreeze`][auxtransfer.unfreeze] on either undoes it. Parameters that
    were already frozen before the call are left alone by both.

    Call ``nn.SyncBatchNorm.convert_sync_batchnorm`` before ``freeze_until``, not after:
    the conversion builds new norm layers, which do not keep the eval hold.

    Args:
        model: A timm, torchvision or Hugging Face model, or any module
            [`layer_names`][auxtransfer.layer_names] maps.
        address: The last address to freeze: ``"2.9"``, a whole block ``"2"``, ``"stem"``,
            ``"head"`` or a full module name (exactly that module and what runs before
            it, cutting a group of the map where the module ends inside it).
        bn: ``"freeze"`` or ``"update"``, see above.
        example_input: A batch the model takes, for a model whose input size cannot be
            inferred (see [`layer_map`][auxtransfer.layer_map]).
        input_size: Or one input's size without the batch, e.g. ``(1, 28, 28)``.

    Returns:
        A [`FreezeSummary`][auxtransfer.FreezeSummary]; ``print`` it for a readable line.

    Examples:
        >>> import torchvision
        >>> model = torchvision.models.resnet18()
        >>> print(freeze_until(model, "2"))  # doctest: +NORMALIZE_WHITESPACE
        froze 5 layer groups (stem ... 2.1): 683,072 of 11,689,512 parameters;
        11,006,440 stay trainable; 10 norm layers keep their running statistics (bn='freeze')
    """
    check_bn(bn)
    layers = layer_map(model, example_input=example_input, input_size=input_size)
    groups, last = layers.cut(address)
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
    modules = dict(model.named_modules())
    for name in names:
        if parameters[name].requires_grad:
            parameters[name].requires_grad_(False)
            module_name, _, attribute = name.rpartition(".")
            module = modules[module_name]
            module.__dict__[_FROZEN] = (*module.__dict__.get(_FROZEN, ()), attribute)

    norms: list[str] = []
    if bn == "freeze":
        for group in frozen_groups:
            for module_name in group.modules:
                module = modules.get(module_name)
                if isinstance(module, _NormBase) and module.track_running_stats:
                    module.train = _StayInEval(module)  # type: ignore[method-assign,assignment]
                    module.eval()
                    norms.append(module_name)
    trainable = sum(p.numel() for p in parameters.values() if p.requires_grad)
    frozen_count = sum(parameters[n].numel() for n in names)
    if trainable == 0:
        hint = (
            f" To keep the classifier trainable, freeze up to the address before it "
            f"({groups[-2].address!r})."
            if len(groups) > 1
            else ""
        )
        warnings.warn(
            f"freeze_until(model, {address!r}) froze every parameter of "
            f"{type(model).__name__}: nothing will train.{hint}",
            stacklevel=2,
        )
    kept = {g.address for g in frozen_groups}
    unused = set(layers.unused)
    return FreezeSummary(
        tuple(g.address for g in frozen_groups),
        frozen_count,
        trainable,
        tuple(norms),
        bn,
        shared=tuple(n for n in names if any(a not in kept for a in layers.shared.get(n, ()))),
        unused=tuple(n for n in names if n in unused),
    )


def unfreeze(model: nn.Module) -> None:
    """Undo [`freeze_until`][auxtransfer.freeze_until], on the model or on any view of it.

    Parameters it froze train again, norm layers follow ``model.train()``/``eval()`` again
    (and take the model's current mode).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    _release(model.modules(), model.training)


def _release(modules: Iterable[nn.Module], training: bool) -> list[nn.Module]:
    """Undo freeze_until's marks and eval holds on ``modules``; the modules it changed."""
    released = []
    for module in modules:
        frozen = module.__dict__.pop(_FROZEN, ())
        for attribute in frozen:
            parameter = module._parameters.get(attribute)
            if parameter is not None:
                parameter.requires_grad_(True)
        held = isinstance(module.__dict__.get("train"), _StayInEval)
        if held:
            del module.__dict__["train"]
            module.train(training)
        if frozen or held:
            released.append(module)
    return released


@dataclass(frozen=True)
class ResetSummary:
    """What [`reset_after`][auxtransfer.reset_after] did.

    Attributes:
        addresses: The re-initialised addresses, ``"head"`` last.
        tensors: Names of the parameters and buffers re-initialised.
        skipped: Parameters after the address that no initialiser covers (left as they were).
        init: How they were initialised, ``"+"``-joined where several parts of the model
            needed different ways: ``"init"`` (the ``init`` factory), ``"timm"``,
            ``"torchvision"`` or ``"transformers"`` (a freshly built model of the same
            architecture),
            ``"init_weights"`` (the model's own ``init_weights()``), ``"modules"`` (each
            module's ``reset_parameters()``, PyTorch's defaults).
        unfrozen: Parameters [`freeze_until`][auxtransfer.freeze_until] had frozen that
            are trainable again because they were re-initialised.
        shared: Kept tensors that re-initialised layers read too (a table every block
            reads, first used before the cut): they keep their values. See
            [`LayerMap.shared`][auxtransfer.LayerMap].
    """

    addresses: tuple[str, ...]
    tensors: tuple[str, ...]
    skipped: tuple[str, ...]
    init: str
    unfrozen: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()


def reset_after(
    model: nn.Module,
    address: str,
    *,
    seed: int = 0,
    init: Callable[[], nn.Module] | None = None,
    example_input: Any = None,
    input_size: Sequence[int] | None = None,
) -> ResetSummary:
    """Re-initialise every layer after ``address``, the head included, as a new model would be.

    The new values are those of a model built afresh: for a timm model,
    ``timm.create_model`` of its architecture; for a torchvision classification model, the
    torchvision builder whose model has its layers; for a Hugging Face model,
    ``type(model)(model.config)``; each with its current number of classes, on the CPU,
    after ``torch.manual_seed(seed)``. So the layers after ``address``
    get exactly what the model's own constructor gives them, whatever initialisation scheme
    that is (fan-out Kaiming, truncated normal, zero biases, ...). A model wrapped in another
    (a [`RandomPartitionHead`][auxtransfer.RandomPartitionHead], any container) is found
    inside it. A Hugging Face model whose layers its config no longer builds (a layer
    replaced by hand) is refused with a ``ValueError`` before anything changes: pass
    ``init``. For any other model pass ``init``, a callable returning a fresh model of the
    same architecture; without it, a model with an ``init_weights()`` method is
    re-initialised by that method on a copy, and the rest by each module's
    ``reset_parameters()``, PyTorch's defaults, with a warning.

    Parameters that no initialiser covers (a bare ``nn.Parameter`` such as a layer scale,
    where only module defaults apply), and modules whose parameters are tied to a kept
    layer, are left as they were, listed in the result and named in a warning. Layers that
    [`freeze_until`][auxtransfer.freeze_until] had frozen become trainable again (their
    norm layers follow ``model.train()`` again): a re-initialised layer has nothing to keep.

    A fresh model is built with its builder's default arguments: an argument that changes
    the initialisation (torchvision's ``zero_init_residual=True``, timm's
    ``head_init_scale``) is not seen; pass ``init`` to honour it. Building the fresh model
    costs about what building the model costs.

    The values from a fresh model depend on ``seed`` alone, not on the device (it is built
    on the CPU); module defaults are drawn on the model's device, seeded by ``seed``. The
    caller's random state is unchanged afterwards.

    Args:
        model: A timm, torchvision or Hugging Face model, or any module
            [`layer_names`][auxtransfer.layer_names] maps.
        address: The last address to keep; everything after it is re-initialised.
        seed: Seeds the new weights.
        init: Builds a fresh model of the same architecture (it must hold every tensor
            that is reset, with the same shape), for models that are neither timm's,
            torchvision's nor Hugging Face's.
        example_input: A batch the model takes, for a model whose input size cannot be
            inferred (see [`layer_map`][auxtransfer.layer_map]).
        input_size: Or one input's size without the batch, e.g. ``(1, 28, 28)``.

    Returns:
        A [`ResetSummary`][auxtransfer.ResetSummary].

    Examples:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18(num_classes=10)
        >>> summary = reset_after(model, "4.0", seed=0)
        >>> summary.addresses, summary.init
        (('4.1', 'head'), 'torchvision')
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> fresh = torchvision.models.resnet18(num_classes=10)
        >>> torch.equal(model.fc.weight, fresh.fc.weight)
        True
    """
    seed = check_seed("seed", seed)
    if init is not None and not callable(init):
        raise TypeError(
            f"Expected `init` to be a callable returning a fresh model, but got {describe(init)}."
        )
    layers = layer_map(model, example_input=example_input, input_size=input_size)
    groups, last = layers.cut(address)
    reset_groups = groups[last + 1 :]
    if not reset_groups:
        raise ValueError(
            f"Expected `address` to leave layers after it, but {address!r} is the last one."
        )
    state = model.state_dict(keep_vars=True)
    # Buffers left out of the state dict (persistent=False: index tables and other
    # constants derived from the architecture) are no weights to re-initialise.
    tensors = [t for g in reset_groups for t in g.tensors if t in state]
    kept = {id(state[t]) for g in groups[: last + 1] for t in g.tensors if t in state}
    parameters = dict(model.named_parameters())
    tied = [t for t in tensors if t in state and id(state[t]) in kept]

    sources: list[str] = []
    owned: set[str] = set()  # names a twin answers for, whether it covers them or not
    done: set[str] = set()  # names given fresh values
    with torch.no_grad():
        # Every twin is built before anything is copied: a part that is refused (a Hugging
        # Face model that no longer matches its config) leaves the model as it was.
        for prefix, twin, covers, source in list(_twins(model, tensors, seed, init)):
            fresh = twin.state_dict()
            used = False
            for name in tensors:
                inner = name[len(prefix) :]
                if (
                    name in owned
                    or not name.startswith(prefix)
                    or inner not in fresh
                    or fresh[inner].shape != state[name].shape
                ):
                    continue  # not the twin's: a replaced classifier gets module defaults
                owned.add(name)
                # Integer buffers other than BatchNorm's counter (a partition) are state, not
                # weights: a fresh model's would only overwrite them.
                value = fresh[inner]
                keep = not value.is_floating_point() and not name.endswith("num_batches_tracked")
                if name not in tied and inner in covers and not keep:
                    state[name].copy_(value)
                    done.add(name)
                    used = True
            if used:
                sources.append(source)
        rest = {t for t in tensors if t not in owned and t not in tied}
        if rest:
            devices = sorted(
                {p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}
            )
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                done.update(_reset_modules(model, rest, kept))
            sources.append("modules")
    skipped = [t for t in tensors if t in parameters and t not in done]
    init_used = "+".join(dict.fromkeys(sources)) or "modules"
    if init_used == "modules":
        warnings.warn(
            f"reset_after used PyTorch's default initialisation for {type(model).__name__}: no "
            f"fresh model of its architecture could be built (not a timm, torchvision or Hugging Face "
            f"model, or one whose layers no builder with default arguments has) and it has no "
            f"init_weights(); pass `init=` (a callable returning a fresh model) to use the "
            f"model's own.",
            stacklevel=2,
        )
    if skipped:
        warnings.warn(
            f"reset_after left {len(skipped)} parameters as they were: no initialiser covers "
            f"{', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''}.",
            stacklevel=2,
        )
    modules = dict(model.named_modules())
    owners = list(dict.fromkeys(m for g in reset_groups for m in g.modules if m in modules))
    unfrozen = [
        f"{name}.{attribute}" if name else attribute
        for name in owners
        for attribute in modules[name].__dict__.get(_FROZEN, ())
    ]
    _release([modules[name] for name in owners], model.training)
    after = {g.address for g in reset_groups}
    return ResetSummary(
        tuple(g.address for g in reset_groups),
        tuple(tensors),
        tuple(skipped),
        init_used,
        tuple(unfrozen),
        tuple(
            t
            for g in groups[: last + 1]
            for t in g.tensors
            if any(a in after for a in layers.shared.get(t, ()))
        ),
    )


_Source = tuple[str, nn.Module, set[str], str]


def _twins(
    model: nn.Module, tensors: list[str], seed: int, init: Callable[[], nn.Module] | None
) -> Iterator[_Source]:
    """(name prefix, fresh model, the names it initialises, how) for each part of ``model``
    that has an initialisation of its own: the outermost timm, torchvision or Hugging Face model (or
    model with ``init_weights()``) found walking down from the root."""
    if init is not None:
        twin = build_twin(model, num_classes=None, seed=seed, init=init, names=tensors)
        assert twin is not None  # build_twin raises when `init` does not fit
        yield "", twin.module, set(twin.module.state_dict()), "init"
        return
    taken: list[str] = []
    for name, module in model.named_modules():
        if "" in taken or any(name.startswith(t + ".") for t in taken):
            continue
        prefix = f"{name}." if name else ""
        inner = [t[len(prefix) :] for t in tensors if t.startswith(prefix)]
        if not inner:
            continue
        twin = None
        if (
            "pretrained_cfg" in module.__dict__
            or torchvision_model_class(module)
            or is_transformers_model(module)
        ):
            # Matched and required without the classifier, which a user may have replaced.
            body = [t for g in layer_map(module).groups if g.address != "head" for t in g.tensors]
            required = set(inner) & set(body)
            twin = build_twin(
                module, num_classes=_num_classes(module), seed=seed, names=required, match=body
            )
        if twin is not None:
            taken.append(name)
            yield prefix, twin.module, set(twin.module.state_dict()), twin.source
        elif callable(getattr(module, "init_weights", None)):
            taken.append(name)
            yield (prefix, *_init_weights_twin(module, seed), "init_weights")


def _num_classes(model: nn.Module) -> int | None:
    count = getattr(model, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    try:
        name = find_classifier(model)
    except ValueError:
        return None
    return classifier_widths(model.get_submodule(name), name)[1]


def _init_weights_twin(module: nn.Module, seed: int) -> tuple[nn.Module, set[str]]:
    """A CPU copy of ``module`` re-initialised as its constructor would: every module's
    ``reset_parameters()``, then its ``init_weights()``; and the names those cover."""
    memo: dict[int, object] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        copied = tensor.detach().to("cpu", copy=True)
        memo[id(tensor)] = (
            nn.Parameter(copied, tensor.requires_grad)
            if isinstance(tensor, nn.Parameter)
            else copied
        )
    twin = copy.deepcopy(module, memo)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        covers = _reset_modules(twin, set(twin.state_dict()), set())
        before = {n: t.clone() for n, t in twin.state_dict().items()}
        twin.init_weights()  # type: ignore[operator]
    after = twin.state_dict()
    covers |= {n for n, t in after.items() if not torch.equal(t, before[n])}
    return twin, covers


def _reset_modules(model: nn.Module, names: set[str], kept: set[int]) -> set[str]:
    """``reset_parameters()`` of every module that directly holds one of ``names`` (norm
    layers also ``reset_running_stats()``); the names that covered."""
    covered: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        own = [(prefix + n, p) for n, p in module.named_parameters(recurse=False)]
        if not any(n in names for n, _ in own) and not any(
            prefix + n in names for n, _ in module.named_buffers(recurse=False)
        ):
            continue
        if any(id(p) in kept for _, p in own):
            continue  # a parameter tied to a kept layer: resetting would change that layer
        reset = getattr(module, "reset_parameters", None) or getattr(
            module, "_reset_parameters", None
        )
        if own and callable(reset):
            reset()
            covered.update(n for n, _ in own)
        if isinstance(module, _NormBase) and module.track_running_stats:
            module.reset_running_stats()
            covered.update(prefix + n for n, _ in module.named_buffers(recurse=False))
    return covered & names
