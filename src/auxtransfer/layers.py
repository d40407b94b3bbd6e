"""The ordered layer map of a backbone: addresses from stem to head.

An address names a group of parameters and buffers. Addresses use the numbers that appear
in the module names (``features.denseblock2.denselayer9`` is ``"2.9"``, ``layer3.1`` is
``"3.1"``), plus ``"stem"`` and ``"head"``. Three sources give the groups and their order:

1. timm's ``group_matcher`` (``coarse=False``), where a model has one;
2. a table for the torchvision families, in the same format;
3. otherwise, the model's top-level children in the order a forward pass on the meta
   device calls them (registration order where no such pass runs), with a warning when
   that finds a single group.

The classifier that [`find_classifier`][auxtransfer.find_classifier] finds always belongs
to ``"head"``, as does anything a matcher leaves unmatched. A wrapper (such as
[`RandomPartitionHead`][auxtransfer.RandomPartitionHead]) hands its layer map down to the
model it wraps by returning a [`SubmoduleMatcher`][auxtransfer.layers.SubmoduleMatcher]
from its ``group_matcher``.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ._blocks import block_units, unit_addresses
from ._checks import caller_stacklevel, describe
from ._trace import trace
from .classifier import find_classifier

__all__ = ["LayerGroup", "SubmoduleMatcher", "layer_groups", "layer_names"]

# timm's marker for "merge into the group before this one".
_MATCH_PREVIOUS = (99999,)
_Spec = str | list[tuple[str, Any]] | None

# torchvision families, keyed by class name, in timm's group_matcher format: "stem" and
# "blocks" (and other named groups) map to a regex or a list of (regex, suffix).
# torchvision's DenseNet and the CIFAR DenseNet-BC (whose stem has no norm0) share it.
DENSENET_MATCHER: dict[str, _Spec] = {
    "stem": r"^features\.(?:conv0|norm0)\.",
    "blocks": [
        (r"^features\.denseblock(\d+)\.denselayer(\d+)\.", None),
        (r"^features\.transition(\d+)\.", _MATCH_PREVIOUS),
        # norm5 normalises the last block's output: it goes with the last layer, so
        # "everything up to block 3" includes it.
        (r"^features\.norm5\.", _MATCH_PREVIOUS),
    ],
}
_TORCHVISION: dict[str, dict[str, _Spec]] = {
    "DenseNet": DENSENET_MATCHER,
    "ResNet": {"stem": r"^(?:conv1|bn1)\.", "blocks": r"^layer(\d+)\.(\d+)\."},
    "VGG": {"blocks": r"^features\.(\d+)\.", "fc": r"^classifier\.([03])\."},
    "AlexNet": {"blocks": r"^features\.(\d+)\.", "fc": r"^classifier\.([14])\."},
    "SqueezeNet": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."},
    "MobileNetV2": {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."},
    "MobileNetV3": {
        "stem": r"^features\.0\.",
        "blocks": r"^features\.(\d+)\.",
        "fc": r"^classifier\.(0)\.",
    },
    "MNASNet": {
        "stem": r"^layers\.[0-7]\.",
        "blocks": [
            (r"^layers\.(\d+)\.(\d+)\.", None),
            (r"^layers\.15\.", _MATCH_PREVIOUS),  # the BatchNorm of the last conv
            (r"^layers\.(\d+)\.", None),
        ],
    },
    "EfficientNet": {
        "stem": r"^features\.0\.",
        "blocks": [(r"^features\.(\d+)\.(\d+)\.block\.", None), (r"^features\.(\d+)\.", None)],
    },
    "ConvNeXt": {
        "stem": r"^features\.0\.",
        "blocks": [(r"^features\.([1357])\.(\d+)\.", None), (r"^features\.([246])\.", None)],
    },
    "RegNet": {"stem": r"^stem\.", "blocks": r"^trunk_output\.block(\d+)\.block\d+-(\d+)\."},
    "ShuffleNetV2": {
        "stem": r"^conv1\.",
        "blocks": [(r"^stage(\d+)\.(\d+)\.", None), (r"^conv(5)\.", None)],
    },
    "GoogLeNet": {"stem": r"^conv[123]\.", "blocks": r"^inception(\d[a-e])\."},
    "Inception3": {"stem": r"^Conv2d_\d[ab]_", "blocks": r"^Mixed_(\d[a-e])\."},
    "VisionTransformer": {
        "stem": r"^(?:class_token|conv_proj\.|encoder\.pos_embedding)",
        "blocks": [
            (r"^encoder\.layers\.encoder_layer_(\d+)\.", None),
            (r"^encoder\.ln\.", _MATCH_PREVIOUS),
        ],
    },
    "SwinTransformer": {
        "stem": r"^features\.0\.",
        "blocks": [
            (r"^features\.([1357])\.(\d+)\.", None),
            (r"^features\.([246])\.", None),
            (r"^norm\.", _MATCH_PREVIOUS),
        ],
    },
    "MaxVit": {"stem": r"^stem\.", "blocks": r"^blocks\.(\d+)\.layers\.(\d+)\."},
}


@dataclass(frozen=True)
class LayerGroup:
    """One address of a model's layer map.

    Attributes:
        address: The address, e.g. ``"stem"``, ``"2.9"`` or ``"head"``.
        modules: The modules whose parameters or buffers the group holds.
        tensors: Names of the group's parameters and buffers, as in ``state_dict``.
        num_params: Number of parameter elements in the group.
    """

    address: str
    modules: tuple[str, ...]
    tensors: tuple[str, ...]
    num_params: int


def layer_names(model: nn.Module) -> list[str]:
    """The addresses of a model, ordered from stem to head.

    Args:
        model: A timm, torchvision or Hugging Face model, or any ``nn.Module``.

    Returns:
        Addresses such as ``['stem', '1.0', '1.1', ..., '4.1', 'head']``.

    Examples:
        >>> import torchvision
        >>> names = layer_names(torchvision.models.resnet18())
        >>> names[:3], names[-2:]
        (['stem', '1.0', '1.1'], ['4.1', 'head'])
    """
    return [group.address for group in layer_groups(model)]


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

    def __init__(self, module_name: str, groups: list[LayerGroup]) -> None:
        self.module_name = module_name
        self.groups = groups
        self._index = {
            f"{module_name}.{tensor}": (float(i),)
            for i, group in enumerate(groups)
            for tensor in group.tensors
        }
        # The wrapper's own tensors share the head's ordinal (a new one after the last
        # group when the inner model has no head), so timm's layer decay sees one head.
        last = len(groups) - 1
        self._head = (float(last if groups and groups[-1].address == "head" else last + 1),)

    def __call__(self, name: str) -> tuple[float, ...]:
        return self._index.get(name, self._head)


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The layer map of a model: its [`LayerGroup`][auxtransfer.LayerGroup] objects,
    ordered from stem to head."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    matcher = _matcher_of(model)
    if isinstance(matcher, SubmoduleMatcher):
        return _delegated_groups(model, matcher)
    tensors = _tensor_names(model)
    if not tensors:
        raise ValueError(
            f"Expected `model` to have parameters, but {type(model).__name__} has none."
        )
    head = _classifier_prefix(model)
    if matcher is None:
        keyed = _by_blocks(model, tensors)
    else:
        keyed = [(*_ordinal(name, matcher), name) for name in tensors]
    groups: dict[tuple[Any, ...], list[str]] = {}
    addresses: dict[tuple[Any, ...], str] = {}
    for key, address, name in keyed:
        if head is not None and (name == head or name.startswith(head + ".")):
            key, address = (math.inf,), "head"
        groups.setdefault(key, []).append(name)
        addresses.setdefault(key, address)

    merged: list[tuple[str, list[str]]] = []
    for key in sorted(groups, key=_sort_key):
        if key[-1:] == _MATCH_PREVIOUS and merged:
            # timm's "with the group before", in sorted order: a transition after its
            # block's last layer, a final norm with the last block.
            merged[-1][1].extend(groups[key])
            continue
        address = addresses[key]
        if merged and merged[-1][0] == address:
            merged[-1][1].extend(groups[key])
        else:
            merged.append((address, list(groups[key])))

    if callable(matcher) and not isinstance(matcher, dict):
        merged = _name_callable_groups(merged)

    sizes = {name: p.numel() for name, p in model.named_parameters()}
    result = []
    for address, names in merged:
        modules = list(dict.fromkeys(name.rpartition(".")[0] for name in names))
        result.append(
            LayerGroup(address, tuple(modules), tuple(names), sum(sizes.get(n, 0) for n in names))
        )
    if matcher is None and len(result) - (result[-1].address == "head") <= 1:
        body = result[0]
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
    return result


def _tensor_names(model: nn.Module) -> list[str]:
    """Parameter and buffer names in registration order (module by module), shared once."""
    names: list[str] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            names.append(prefix + attribute)
    return names


def _delegated_groups(model: nn.Module, matcher: SubmoduleMatcher) -> list[LayerGroup]:
    """The inner model's map, names prefixed, with the wrapper's own tensors in "head"."""
    prefix = matcher.module_name
    groups = [
        LayerGroup(
            g.address,
            tuple(f"{prefix}.{m}" if m else prefix for m in g.modules),
            tuple(f"{prefix}.{t}" for t in g.tensors),
            g.num_params,
        )
        for g in matcher.groups
    ]
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    own = [n for n in _tensor_names(model) if not n.startswith(prefix + ".")]
    if not own:
        return groups
    has_head = bool(groups) and groups[-1].address == "head"
    head = groups[-1] if has_head else LayerGroup("head", (), (), 0)
    head = LayerGroup(
        "head",
        tuple(dict.fromkeys([*head.modules, *(n.rpartition(".")[0] for n in own)])),
        (*head.tensors, *own),
        head.num_params + sum(sizes.get(n, 0) for n in own),
    )
    return [*groups[:-1], head] if has_head else [*groups, head]


def _classifier_prefix(model: nn.Module) -> str | None:
    try:
        return find_classifier(model)
    except ValueError:
        return None


def _matcher_of(
    model: nn.Module,
) -> dict[str, _Spec] | Callable[[str], Any] | SubmoduleMatcher | None:
    group_matcher = getattr(model, "group_matcher", None)
    if callable(group_matcher):
        try:
            matcher = group_matcher(coarse=False)
        except (TypeError, NotImplementedError):
            matcher = None
        if isinstance(matcher, dict) or callable(matcher):
            return matcher
    for cls in type(model).__mro__:
        if cls.__name__ in _TORCHVISION and cls.__module__.startswith(
            ("torchvision.", "auxtransfer.")
        ):
            return _TORCHVISION[cls.__name__]
    return None


def _ordinal(
    name: str, matcher: dict[str, _Spec] | Callable[[str], Any]
) -> tuple[tuple[Any, ...], str]:
    """(sort key, address) of one parameter or buffer name."""
    if callable(matcher):
        value = matcher(name)
        values = tuple(value) if isinstance(value, Iterable) else (value,)
        if any(v is None or math.isinf(float(v)) for v in values):
            return (math.inf,), "head"
        if values[-1:] == _MATCH_PREVIOUS:
            return (*values,), ""
        return tuple(values), ".".join(str(int(v)) for v in values)
    for pattern, index, key, suffix in _compile(matcher):
        found = pattern.match(name)
        if not found:
            continue
        parts = [g for g in found.groups() if g is not None]
        if suffix is not None and suffix != _MATCH_PREVIOUS:
            parts += [str(s) for s in suffix]
        sort = (
            index,
            *(_part_key(p) for p in parts),
            *(suffix if suffix == _MATCH_PREVIOUS else ()),
        )
        if key == "blocks":
            address = ".".join(parts) or key
        elif key == "stem":
            address = "stem" if not parts else "stem." + ".".join(parts)
        else:
            address = ".".join([key, *parts])
        return sort, address
    return (math.inf,), "head"


def _compile(
    matcher: dict[str, _Spec],
) -> list[tuple[re.Pattern[str], int, str, tuple[int, ...] | None]]:
    compiled = []
    for index, (key, spec) in enumerate(matcher.items()):
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        for regex, suffix in specs:
            compiled.append(
                (re.compile(regex), index, key, None if suffix is None else tuple(suffix))
            )
    return compiled


def _part_key(part: str) -> tuple[float, str]:
    # "12" -> (12, ""), "3a" -> (3, "a"): numbers sort as numbers, letters after them.
    digits = re.match(r"\d*", part).group(0)  # type: ignore[union-attr]
    return (float(digits) if digits else -1.0, part[len(digits) :])


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    # Mixed keys: plain numbers become (n, "") so every element compares with the others.
    return tuple(k if isinstance(k, tuple) else (float(k), "") for k in key)


def _by_blocks(model: nn.Module, tensors: list[str]) -> list[tuple[tuple[Any, ...], str, str]]:
    """Fallback: one group per repeated block (``_blocks``), in forward order; a module's
    own tensors go with its first unit, the root's with the stem."""
    recorded = trace(model)
    units = block_units(model, None if recorded is None else recorded.modules)
    addresses = unit_addresses(units)
    index = {unit.path: i for i, unit in enumerate(units)}
    # A module the map descended into: its own tensors join its first unit.
    first: dict[str, int] = {}
    for i, unit in enumerate(units):
        parts = unit.path.split(".")
        for depth in range(1, len(parts)):
            first.setdefault(".".join(parts[:depth]), i)
    keyed: list[tuple[tuple[Any, ...], str, str]] = []
    for name in tensors:
        owner = name.rpartition(".")[0]
        parts = owner.split(".") if owner else []
        found = None
        for depth in range(len(parts), 0, -1):
            found = index.get(".".join(parts[:depth]))
            if found is not None:
                break
        if found is None:
            found = first.get(owner) if owner else None
        if found is None or addresses[found] == "stem":
            keyed.append(((0,), "stem", name))
        else:
            keyed.append(((1, found), addresses[found], name))
    return keyed


def _name_callable_groups(merged: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Addresses for groups of a callable timm matcher, whose ordinals are positions: the
    first group is "stem", the others are named after the module they hold."""
    named: list[tuple[str, list[str]]] = []
    for index, (address, names) in enumerate(merged):
        if address != "head":
            modules = [name.rpartition(".")[0].split(".") for name in names]
            common: list[str] = []
            for parts in zip(*modules, strict=False):
                if len(set(parts)) > 1:
                    break
                common.append(parts[0])
            # A group of several modules (cait's last self- and class-attention blocks) is
            # named after its first one.
            prefix = ".".join(common) or ".".join(modules[0][:2])
            numbered = re.fullmatch(r"[A-Za-z_]+\.(\d+)", prefix)
            address = "stem" if index == 0 else numbered.group(1) if numbered else prefix
            if any(address == other for other, _ in named):
                address = (
                    prefix if all(prefix != other for other, _ in named) else f"{prefix}#{index}"
                )
        named.append((address, names))
    return named


def resolve(
    model: nn.Module, groups: list[LayerGroup], address: str, *, name: str = "address"
) -> int:
    """Index of the last group that ``address`` covers.

    An address covers the group of that name and every group below it (``"2"`` covers
    ``"2.1"`` ... ``"2.16"``); a full module name covers the groups holding its tensors.
    """
    if not isinstance(address, str):
        raise TypeError(
            f"Expected `{name}` to be an address string such as '2.9', but got {describe(address)}."
        )
    hits = _address_hits(groups, address)
    if not hits and address:
        modules = dict(model.named_modules())
        if address in modules:
            prefix = address + "."
            hits = [i for i, g in enumerate(groups) if any(t.startswith(prefix) for t in g.tensors)]
            if not hits:
                raise ValueError(
                    f"Expected `{name}` to name layers with parameters or buffers, but module "
                    f"{address!r} of {type(model).__name__} has none."
                )
    if not hits:
        close = _closest(address, [g.address for g in groups])
        raise ValueError(
            f"Expected `{name}` to be one of the addresses of {type(model).__name__} or a module "
            f"name, but got {address!r}. Valid addresses, closest first: {', '.join(close[:12])}"
            f"{', ...' if len(close) > 12 else ''} (all: auxtransfer.layer_names(model))."
        )
    return max(hits)


def cut(model: nn.Module, address: str, *, name: str = "address") -> tuple[list[LayerGroup], int]:
    """The layer map of ``model`` and the index of the last group up to ``address``.

    An address of the map ends where its group ends. A full module name that is no address
    means exactly that module: where it ends inside a group, that group is split in two, the
    module and what runs before it in forward order (named after the module), then the rest
    of the group (keeping the group's address).
    """
    groups = layer_groups(model)
    last = resolve(model, groups, address, name=name)
    group = groups[last]
    if _address_hits(groups, address):
        return groups, last
    prefix = address + "."
    outside = [t for t in group.tensors if not t.startswith(prefix)]
    if not outside:
        return groups, last
    order = _tensor_order(model, address)
    start = min(order[t] for t in order if t.startswith(prefix))
    after = {t for t in outside if order[t] > start}
    if not after:
        return groups, last
    sizes = {n: p.numel() for n, p in model.named_parameters()}

    def part(part_address: str, names: list[str]) -> LayerGroup:
        modules = tuple(dict.fromkeys(n.rpartition(".")[0] for n in names))
        return LayerGroup(part_address, modules, tuple(names), sum(sizes.get(n, 0) for n in names))

    head = part(address, [t for t in group.tensors if t not in after])
    rest = part(group.address, [t for t in group.tensors if t in after])
    return [*groups[:last], head, rest, *groups[last + 1 :]], last


def _address_hits(groups: list[LayerGroup], address: str) -> list[int]:
    return [
        i
        for i, g in enumerate(groups)
        if g.address == address or g.address.startswith(address + ".")
    ]


def _tensor_order(model: nn.Module, address: str) -> dict[str, int]:
    """Position of every tensor in the forward pass: its first use, or, for a tensor the
    pass never reads (BatchNorm's counter in eval mode), its module's first use, else that
    of the tensor registered before it."""
    tensors = _tensor_names(model)
    recorded = trace(model)
    if recorded is None:
        warnings.warn(
            f"auxtransfer could not run {type(model).__name__} on the meta device to see what "
            f"runs before {address!r}; it cut at {address!r} in registration order instead.",
            stacklevel=caller_stacklevel(),
        )
        return {name: i for i, name in enumerate(tensors)}
    used = recorded.tensors
    late = len(used)
    by_module: dict[str, int] = {}
    for name in tensors:
        if name in used:
            owner = name.rpartition(".")[0]
            by_module[owner] = min(by_module.get(owner, late), used[name])
    order: dict[str, int] = {}
    previous = -1
    for name in tensors:
        position = used.get(name, by_module.get(name.rpartition(".")[0], previous))
        order[name] = position
        previous = position
    return order


def _closest(address: str, valid: list[str]) -> list[str]:
    """``valid`` ordered by closeness to ``address``: most leading parts shared first, then
    the nearest number in the first part that differs, then by spelling."""
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

    return sorted(valid, key=key)
