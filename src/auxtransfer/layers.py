"""The ordered layer map of a backbone: addresses from stem to head.

An address names a group of parameters and buffers. Addresses use the numbers that appear
in the module names (``features.denseblock2.denselayer9`` is ``"2.9"``, ``layer3.1`` is
``"3.1"``), plus ``"stem"`` and ``"head"``. timm's ``group_matcher``, a table of the
torchvision families, or else one address per repeated block name the groups (see
``_naming``); which tensors a group holds, and the order of the groups, follow one forward
pass of the model:

- every parameter and buffer belongs to the address where the pass first uses it: the
  outermost module running at that moment that lies within one group; a tensor the model
  itself reads between groups (a class token, a scale before the head) stays with the
  group its name gives where that is the group running or the next one, and otherwise
  joins the next one;
- groups are ordered by their first use, so that everything up to an address is exactly
  what runs up to it; what runs after the classifier joins ``"head"``;
- a tensor that later addresses use again (shared, tied) stays with its first use and is
  listed in [`LayerMap.shared`][auxtransfer.LayerMap]; tensors the pass never uses stay
  with their module's other tensors, else where their name puts them, and are listed in
  ``LayerMap.unused``.

The pass runs once per model, on a meta copy of it (see ``_trace``): the map is built
once and kept (per model, for as long as the model lives and its modules and tensors stay
the same), so [`freeze_until`][auxtransfer.freeze_until],
[`reset_after`][auxtransfer.reset_after] and [`layerwise_lr`][auxtransfer.layerwise_lr]
share it. Where the input cannot be inferred, pass ``input_size=`` or ``example_input=``
once to any of them; a model whose forward pass cannot run is an error, never a map in
registration order.

A full module name always means exactly that module and what runs before it, even where
an address of the same spelling exists: a module name names one thing in every model,
whereas an address is a grouping that the model's family chooses.
"""

from __future__ import annotations

import difflib
import math
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._checks import caller_stacklevel, describe
from ._first_use import by_use, module_tensors, shared_readers, tensor_names
from ._naming import _part_key, named_groups
from ._trace import trace
from .classifier import find_classifier

__all__ = ["LayerGroup", "LayerMap", "SubmoduleMatcher", "layer_groups", "layer_map", "layer_names"]


@dataclass(frozen=True)
class LayerGroup:
    """One address of a model's layer map.

    Attributes:
        address: The address, e.g. ``"stem"``, ``"2.9"`` or ``"head"``.
        modules: The modules whose parameters or buffers the group holds.
        tensors: Names of the group's parameters and buffers, as in ``state_dict`` (a
            tensor shared under several names is listed once, under its first name).
        num_params: Number of parameter elements in the group.
    """

    address: str
    modules: tuple[str, ...]
    tensors: tuple[str, ...]
    num_params: int


class LayerMap:
    """The layer map of one model, built once by [`layer_map`][auxtransfer.layer_map].

    Attributes:
        groups: The [`LayerGroup`][auxtransfer.layers.LayerGroup] objects, stem to head.
        shared: Tensor name -> the addresses that use it, for every tensor that more than
            one address uses (a table shared by all blocks, a tied weight); it belongs to
            the first of them. Aliases of a tied tensor are listed under its first name.
        unused: Tensors the forward pass never reads (BatchNorm's counter in eval mode, an
            auxiliary classifier that runs only in training).
        aliases: Every other name of a tensor registered under several -> its first name.
    """

    def __init__(
        self,
        model_name: str,
        groups: Sequence[LayerGroup],
        *,
        positions: dict[str, int],
        modules: dict[str, tuple[str, ...]],
        shared: dict[str, tuple[str, ...]],
        unused: Sequence[str],
        aliases: dict[str, str],
        sizes: dict[str, int],
    ) -> None:
        self.model_name = model_name
        self.groups = tuple(groups)
        self.shared = shared
        self.unused = tuple(unused)
        self.aliases = aliases
        self._positions = positions
        self._modules = modules  # module name -> its tensors (first names), recursively
        self._sizes = sizes  # parameter name -> number of elements

    @property
    def names(self) -> list[str]:
        """The addresses, stem to head."""
        return [group.address for group in self.groups]

    def __repr__(self) -> str:
        return f"LayerMap({self.model_name}: {', '.join(self.names)})"

    def resolve(self, address: str, *, name: str = "address") -> int:
        """Index of the last group that ``address`` reaches into.

        A full module name reaches the group holding the last of its tensors to be used;
        an address covers the group of that name and every group below it (``"2"`` covers
        ``"2.1"`` ... ``"2.16"``).
        """
        if not isinstance(address, str):
            raise TypeError(
                f"Expected `{name}` to be an address string such as '2.9', but got "
                f"{describe(address)}."
            )
        if self._is_module(address):
            tensors = self._modules[address]
            if not tensors:
                raise ValueError(
                    f"Expected `{name}` to name layers with parameters or buffers, but module "
                    f"{address!r} of {self.model_name} has none."
                )
            index = self._group_index()
            used = [t for t in tensors if t in self._positions]
            if used:
                return index[max(used, key=self._positions.__getitem__)]
            return max(index[t] for t in tensors)
        hits = self._address_hits(address)
        if not hits:
            close = self.closest(address)
            raise ValueError(
                f"Expected `{name}` to be one of the addresses of {self.model_name} or a module "
                f"name, but got {address!r}. Valid addresses, closest first: "
                f"{', '.join(close[:12])}{', ...' if len(close) > 12 else ''} (all: "
                f"auxtransfer.layer_names(model))."
            )
        return max(hits)

    def cut(self, address: str, *, name: str = "address") -> tuple[list[LayerGroup], int]:
        """The groups, and the index of the last one up to ``address``.

        An address of the map ends where its group ends. A full module name means exactly
        that module and what runs before it: where it ends inside a group, that group is
        split in two, the part used up to the module's last tensor (named after the
        module), then the rest (keeping the group's address).
        """
        last = self.resolve(address, name=name)
        groups = list(self.groups)
        if not self._is_module(address):
            return groups, last
        inside = set(self._modules[address])
        used = [self._positions[t] for t in inside if t in self._positions]
        if not used:
            return groups, last
        end = max(used)
        group = groups[last]
        # Up to the module: what is used by then, the module's own unused tensors, and the
        # unused tensors of modules whose other tensors are used by then.
        before = {t for t in group.tensors if self._positions.get(t, math.inf) <= end}
        owners = {t.rpartition(".")[0] for t in before}
        before |= {
            t
            for t in group.tensors
            if t not in self._positions and (t in inside or t.rpartition(".")[0] in owners)
        }
        if len(before) == len(group.tensors):
            return groups, last
        head = self._group(address, [t for t in group.tensors if t in before])
        rest = self._group(group.address, [t for t in group.tensors if t not in before])
        return [*groups[:last], head, rest, *groups[last + 1 :]], last

    def closest(self, address: str) -> list[str]:
        """The addresses ordered by closeness to ``address``: most leading parts shared
        first, then the nearest number in the first part that differs, then by spelling."""
        wanted = address.split(".")

        def key(candidate: str) -> tuple[int, float, float]:
            parts = candidate.split(".")
            shared = 0
            while shared < min(len(parts), len(wanted)) and parts[shared] == wanted[shared]:
                shared += 1
            gap = math.inf
            if shared < min(len(parts), len(wanted)):
                a, b = _part_key(parts[shared]), _part_key(wanted[shared])
                if a[0] >= 0 and b[0] >= 0:
                    gap = abs(a[0] - b[0])
            spelling = difflib.SequenceMatcher(None, address, candidate).ratio()
            return (-shared, gap, -spelling)

        return sorted(self.names, key=key)

    def output_module(self, address: str) -> str:
        """The module whose output ends ``address``: of the outermost modules whose tensors
        all lie in it, the one whose tensors the forward pass uses last (a full module
        name: that module). Features "at an address" are its output."""
        if self._is_module(address):
            return address
        tensors = set(self.groups[self.resolve(address)].tensors)
        inside = [
            name for name, held in self._modules.items() if name and held and set(held) <= tensors
        ]
        outermost = [n for n in inside if not any(n.startswith(o + ".") for o in inside)]
        if not outermost:
            raise ValueError(
                f"Expected `address` to hold a whole module, but {address!r} holds parts of "
                f"modules only ({', '.join(sorted(tensors)[:3])}, ...): name a module instead."
            )
        return max(
            outermost, key=lambda n: max(self._positions.get(t, -1) for t in self._modules[n])
        )

    def _is_module(self, address: str) -> bool:
        # Where the map has them, "stem" and "head" mean its own: timm's module `head` is
        # only the last layer of its "head" group, a module called `stem` may not hold all
        # of the stem.
        if address in ("stem", "head") and address in self.names:
            return False
        return bool(address) and address in self._modules

    def _address_hits(self, address: str) -> list[int]:
        return [
            i
            for i, g in enumerate(self.groups)
            if g.address == address or g.address.startswith(address + ".")
        ]

    def _group_index(self) -> dict[str, int]:
        return {t: i for i, g in enumerate(self.groups) for t in g.tensors}

    def _group(self, address: str, tensors: list[str]) -> LayerGroup:
        modules = tuple(dict.fromkeys(t.rpartition(".")[0] for t in tensors))
        return LayerGroup(
            address, modules, tuple(tensors), sum(self._sizes.get(t, 0) for t in tensors)
        )


class SubmoduleMatcher:
    """A ``group_matcher`` that hands a wrapper's layer map down to the model it wraps.

    The wrapper's layer map is the inner model's, its names prefixed with ``module_name``;
    the wrapper's own tensors go with ``"head"``. Called with a parameter name, it returns
    timm's ordinal for it (the index of its address in the inner model's map), so timm's
    own helpers can use it too.

    Args:
        module_name: Name of the wrapped model inside the wrapper, e.g. ``"backbone"``.
        groups: The wrapped model's [`layer_groups`][auxtransfer.layer_groups].
    """

    def __init__(self, module_name: str, groups: Sequence[LayerGroup]) -> None:
        self.module_name = module_name
        self.groups = list(groups)
        self._index = {
            f"{module_name}.{tensor}": (float(i),)
            for i, group in enumerate(self.groups)
            for tensor in group.tensors
        }
        # The wrapper's own tensors share the head's ordinal (a new one after the last
        # group when the inner model has no head), so timm's layer decay sees one head.
        last = len(self.groups) - 1
        has_head = bool(self.groups) and self.groups[-1].address == "head"
        self._head = (float(last if has_head else last + 1),)

    def __call__(self, name: str) -> tuple[float, ...]:
        return self._index.get(name, self._head)


def layer_names(
    model: nn.Module, *, example_input: Any = None, input_size: Sequence[int] | None = None
) -> list[str]:
    """The addresses of a model, ordered from stem to head.

    Args:
        model: A timm, torchvision or Hugging Face model, or any ``nn.Module``.
        example_input: A batch the model takes (a tensor, a tuple of positional inputs or a
            dict of keyword inputs), for a model whose input size cannot be inferred.
        input_size: Or one input's size without the batch, e.g. ``(1, 28, 28)``.

    Returns:
        Addresses such as ``['stem', '1.0', '1.1', ..., '4.1', 'head']``.

    Examples:
        >>> import torchvision
        >>> names = layer_names(torchvision.models.resnet18())
        >>> names[:3], names[-2:]
        (['stem', '1.0', '1.1'], ['4.1', 'head'])
    """
    return layer_map(model, example_input=example_input, input_size=input_size).names


def layer_groups(
    model: nn.Module, *, example_input: Any = None, input_size: Sequence[int] | None = None
) -> list[LayerGroup]:
    """The layer map of a model: its [`LayerGroup`][auxtransfer.layers.LayerGroup] objects,
    ordered from stem to head (arguments as for [`layer_names`][auxtransfer.layer_names])."""
    return list(layer_map(model, example_input=example_input, input_size=input_size).groups)


# model -> [(fingerprint, input key, map)]; weak, so a map lives as long as its model.
_MAPS: weakref.WeakKeyDictionary[nn.Module, list[tuple[Any, Any, LayerMap]]] = (
    weakref.WeakKeyDictionary()
)


def layer_map(
    model: nn.Module, *, example_input: Any = None, input_size: Sequence[int] | None = None
) -> LayerMap:
    """The [`LayerMap`][auxtransfer.LayerMap] of a model, built on the first call and kept.

    It is built again when the model's modules or tensors change (a replaced classifier)
    or another input is given. Without an input, a map built earlier with one is used:
    pass ``input_size=``/``example_input=`` once, to whichever call comes first.

    Args:
        model: A timm, torchvision or Hugging Face model, or any ``nn.Module``.
        example_input: A batch the model takes (a tensor, a tuple of positional inputs or a
            dict of keyword inputs). It runs on a meta copy of the model; where an
            operation needs real values, on the model itself in eval mode, without
            gradients, every module's mode restored afterwards.
        input_size: Or one input's size without the batch, e.g. ``(1, 28, 28)``.

    Raises:
        ValueError: if the model's forward pass cannot run on the inferred input (timm's
            ``pretrained_cfg``, a Hugging Face config, the first layer's width, 3x224x224
            images) or on the one given.

    Examples:
        >>> import torchvision
        >>> model = torchvision.models.resnet18()
        >>> layers = layer_map(model)
        >>> layers.names[:3], layers.groups[0].tensors[:2]
        (['stem', '1.0', '1.1'], ('conv1.weight', 'bn1.weight'))
        >>> layers is layer_map(model)  # kept: freeze_until and the others share it
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    if example_input is not None:
        key: Any = ("example", id(example_input))
    elif input_size is not None:
        key = ("size", tuple(input_size) if isinstance(input_size, Sequence) else input_size)
    else:
        key = None
    fingerprint = _fingerprint(model)
    kept = _MAPS.get(model, [])
    for kept_fingerprint, kept_key, kept_map in kept:
        if kept_fingerprint == fingerprint and (key is None or key == kept_key):
            return kept_map
    built = _build(model, example_input, input_size)
    earlier = [(f, k, m) for f, k, m in kept if f == fingerprint][-3:]
    _MAPS[model] = [*earlier, (fingerprint, key, built)]
    return built


def _fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """What the map depends on: the modules, and each tensor's name, shape and which name
    it shares its tensor with; not the tensors themselves, which ``.to()`` may replace."""
    modules = tuple((n, id(m)) for n, m in model.named_modules(remove_duplicate=False))
    first: dict[int, str] = {}
    tensors = tuple(
        (n, tuple(t.shape), first.setdefault(id(t), n))
        for n, t in [
            *model.named_parameters(remove_duplicate=False),
            *model.named_buffers(remove_duplicate=False),
        ]
    )
    return (modules, tensors)


def _build(model: nn.Module, example_input: Any, input_size: Sequence[int] | None) -> LayerMap:
    delegate = _delegate_of(model)
    if delegate is not None:
        return _delegated(model, delegate, example_input, input_size)
    names, first = tensor_names(model)
    if not first:
        raise ValueError(
            f"Expected `model` to have parameters, but {type(model).__name__} has none."
        )
    recorded = trace(model, example_input=example_input, input_size=input_size)
    head = _classifier_prefix(model)
    labelled, source = named_groups(model, names, head, recorded.modules)
    label_of = {name: index for index, (_, members) in enumerate(labelled) for name in members}
    tensors = list(dict.fromkeys(first.values()))
    assign, order = by_use(labelled, label_of, names, tensors, recorded, head)

    sizes = {name: p.numel() for name, p in model.named_parameters()}
    members: dict[int, list[str]] = {label: [] for label in order}
    for t in tensors:  # registration order within a group
        members[assign[t]].append(t)
    groups = []
    for label in order:
        tensors_of = members[label]
        if not tensors_of:
            continue
        group = LayerGroup(
            labelled[label][0],
            tuple(dict.fromkeys(t.rpartition(".")[0] for t in tensors_of)),
            tuple(tensors_of),
            sum(sizes.get(t, 0) for t in tensors_of),
        )
        groups.append(group)
    modules = module_tensors(model, names, first)
    groups = _unambiguous(_merge_same_address(groups), modules, recorded.tensors)

    address_of = {t: g.address for g in groups for t in g.tensors}
    shared = shared_readers(recorded, names, first, address_of)
    unused = [t for t in tensors if t not in recorded.tensors]
    if source == "blocks":
        _warn_single_group(model, groups)
    return LayerMap(
        type(model).__name__,
        groups,
        positions=dict(recorded.tensors),
        modules=modules,
        shared=shared,
        unused=unused,
        aliases={n: f for n, f in first.items() if n != f},
        sizes=sizes,
    )


def _unambiguous(
    groups: list[LayerGroup], modules: dict[str, tuple[str, ...]], position: dict[str, int]
) -> list[LayerGroup]:
    """Names that mean the same as an address and as a module name.

    A module name means the module and what runs before it. A group named after a module
    that holds more than it does (a classifier's norm, whose linear layer is ``"head"``),
    or less (a last block whose final norm joins it), takes the name of the module that
    ends it: the outermost module holding the group's last-used tensor that lies wholly
    in this group or before it.
    """
    index = {t: i for i, g in enumerate(groups) for t in g.tensors}
    taken = {g.address for g in groups}
    renamed = []
    for i, group in enumerate(groups):
        used = [t for t in group.tensors if t in position]
        inside = modules.get(group.address)
        if inside is None or group.address in ("stem", "head") or not used:
            renamed.append(group)
            continue
        last = max(used, key=position.__getitem__)
        if all(index[t] <= i for t in inside) and last in inside:
            renamed.append(group)
            continue
        parts = last.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in taken and all(index[t] <= i for t in modules.get(name, ())):
                taken.add(name)
                group = LayerGroup(name, group.modules, group.tensors, group.num_params)
                break
        renamed.append(group)
    return renamed


def _merge_same_address(groups: list[LayerGroup]) -> list[LayerGroup]:
    merged: list[LayerGroup] = []
    for group in groups:
        if merged and merged[-1].address == group.address:
            merged[-1] = LayerGroup(
                group.address,
                tuple(dict.fromkeys([*merged[-1].modules, *group.modules])),
                (*merged[-1].tensors, *group.tensors),
                merged[-1].num_params + group.num_params,
            )
        else:
            merged.append(group)
    return merged


def _delegate_of(model: nn.Module) -> str | None:
    """The module whose map stands for ``model``'s: a wrapper's ``SubmoduleMatcher``."""
    name = getattr(type(model), "_layer_map_delegate", None)
    if isinstance(name, str):
        return name
    group_matcher = getattr(model, "group_matcher", None)
    if callable(group_matcher):
        try:
            matcher = group_matcher(coarse=False)
        except (TypeError, NotImplementedError):
            return None
        if isinstance(matcher, SubmoduleMatcher):
            return matcher.module_name
    return None


def _delegated(
    model: nn.Module, prefix: str, example_input: Any, input_size: Sequence[int] | None
) -> LayerMap:
    """The inner model's map, names prefixed, with the wrapper's own tensors in "head"."""
    inner = layer_map(
        model.get_submodule(prefix), example_input=example_input, input_size=input_size
    )
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    groups = [
        LayerGroup(
            g.address,
            tuple(f"{prefix}.{m}" if m else prefix for m in g.modules),
            tuple(f"{prefix}.{t}" for t in g.tensors),
            g.num_params,
        )
        for g in inner.groups
    ]
    names, first = tensor_names(model)
    own = [n for n in dict.fromkeys(first.values()) if not n.startswith(prefix + ".")]
    if own:
        has_head = bool(groups) and groups[-1].address == "head"
        head = groups[-1] if has_head else LayerGroup("head", (), (), 0)
        head = LayerGroup(
            "head",
            tuple(dict.fromkeys([*head.modules, *(n.rpartition(".")[0] for n in own)])),
            (*head.tensors, *own),
            head.num_params + sum(sizes.get(n, 0) for n in own),
        )
        groups = [*groups[:-1], head] if has_head else [*groups, head]
    last = max(inner._positions.values(), default=-1)
    positions = {f"{prefix}.{t}": p for t, p in inner._positions.items()}
    positions.update({t: last + 1 + i for i, t in enumerate(own)})
    return LayerMap(
        type(model).__name__,
        groups,
        positions=positions,
        modules=module_tensors(model, names, first),
        shared={f"{prefix}.{t}": a for t, a in inner.shared.items()},
        unused=[f"{prefix}.{t}" for t in inner.unused],
        aliases={n: f for n, f in first.items() if n != f},
        sizes=sizes,
    )


def _classifier_prefix(model: nn.Module) -> str | None:
    try:
        return find_classifier(model)
    except ValueError:
        return None


def _warn_single_group(model: nn.Module, groups: list[LayerGroup]) -> None:
    if len(groups) - (groups[-1].address == "head") > 1:
        return
    body = groups[0]
    example = next((m for m in body.modules if m and m != body.address), None)
    hint = (
        f" To cut inside it, pass a full module name such as {example!r}: it covers exactly "
        f"that module and what runs before it."
        if example
        else ""
    )
    warnings.warn(
        f"auxtransfer found a single layer group, {body.address!r}, in "
        f"{type(model).__name__}: it has no timm group_matcher, is not a known torchvision "
        f"family and holds no nn.Sequential or nn.ModuleList of repeated blocks, so an "
        f"address freezes or resets all of {body.address!r} at once.{hint}",
        stacklevel=caller_stacklevel(),
    )
