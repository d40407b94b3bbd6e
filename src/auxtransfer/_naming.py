"""Names for a model's layer groups: which tensors form one address, and what it is called.

Three sources name the groups, in this order of preference:

1. timm's ``group_matcher`` (``coarse=False``), where a model has one;
2. a table for the torchvision families, in the same format;
3. otherwise the block finder of ``_blocks``: one address per repeated block. A Hugging
   Face model's blocks of one numbered level (``vit.layers.N``, ``vit.encoder.layer.N``
   under transformers 4) are numbered ``"N"``, as timm and torchvision number theirs, so
   an address does not change with the release that names the modules.

The classifier that ``find_classifier`` finds is always ``"head"``, as is anything a
matcher leaves unmatched. These groups are only names: the layer map then moves every
tensor to the address where the forward pass first uses it (``layers.LayerMap``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ._blocks import Unit, _is_composite, block_units, unit_addresses
from ._twin import is_transformers_model

__all__: list[str] = []

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


def matcher_of(
    model: nn.Module,
) -> dict[str, _Spec] | Callable[[str], Any] | None:
    """timm's ``group_matcher(coarse=False)`` of ``model`` (a dict of regexes or a
    callable), else the torchvision table of its family, else None."""
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


def _by_blocks(
    model: nn.Module, tensors: list[str], order: dict[str, int]
) -> list[tuple[tuple[Any, ...], str, str]]:
    """One group per repeated block (``_blocks``), in forward order; a module's own
    tensors go with its first unit, the root's with the stem."""
    units = block_units(model, order)
    addresses = unit_addresses(units)
    if is_transformers_model(model):
        addresses = _numbered_blocks(model, units, addresses)
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


def _numbered_blocks(model: nn.Module, units: list[Unit], addresses: list[str]) -> list[str]:
    """The addresses with the blocks of one numbered level numbered ``"N"``.

    Where the block finder gave full module names (no two numbered levels), the blocks of
    the one container whose items are all numbered composite blocks (ViT's
    ``vit.layers.N``, transformers 4's ``vit.encoder.layer.N``) take their number; the
    other units keep their names. Anything less clear-cut is left as it is.
    """
    if any(a not in ("stem", u.path) for a, u in zip(addresses, units, strict=True)):
        return addresses  # numbered already, two levels deep
    containers = {u.levels[0][0] for u in units if len(u.levels) == 1}
    if len(containers) != 1:
        return addresses
    inside = [i for i, u in enumerate(units) if u.levels]
    if not all(
        len(units[i].levels) == 1
        and units[i].levels[0][1].isdigit()
        and addresses[i] != "stem"
        and _is_composite(model.get_submodule(units[i].path))
        for i in inside
    ):
        return addresses
    numbered = list(addresses)
    for i in inside:
        numbered[i] = units[i].levels[0][1]
    others = {a for i, a in enumerate(addresses) if i not in inside}
    if others & {numbered[i] for i in inside}:
        return addresses
    return numbered


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


def enclosing(name: str) -> list[str]:
    """The modules that hold the tensor ``name``, the root (``""``) first:
    ``"a.b.w"`` -> ``["", "a", "a.b"]``."""
    parts = name.split(".")[:-1]
    return [".".join(parts[:depth]) for depth in range(len(parts) + 1)]


def named_groups(
    model: nn.Module, tensors: list[str], head: str | None, order: dict[str, int]
) -> tuple[list[tuple[str, list[str]]], str]:
    """The groups of ``tensors`` as their source names and orders them, and the source:
    ``"matcher"`` (timm's or a torchvision table) or ``"blocks"``. ``order`` is the
    forward pass's module order, for the block finder."""
    matcher = matcher_of(model)
    if matcher is None:
        keyed = _by_blocks(model, tensors, order)
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
    return merged, "blocks" if matcher is None else "matcher"
