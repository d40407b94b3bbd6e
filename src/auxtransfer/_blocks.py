"""The layer map of any model: one address per repeated block, in forward order.

For models with neither a timm ``group_matcher`` nor a torchvision table (Hugging Face
image classifiers, a user's own ``nn.Module``), the map descends from the root into the
modules that hold containers of repeated blocks, and gives every block its own address:

- a *container of blocks* is an ``nn.ModuleList``, or an ``nn.Sequential`` /
  ``nn.ModuleDict`` with at least two children of one type (a stage of blocks, a VGG-like
  stack of convolutions); inside a block, only a container of composite modules counts
  (``encoder.stages.N.layers.M``), so a block's own ``Sequential(conv, norm)`` stays whole;
- at most two levels of containers are descended: a stage and its blocks;
- children are taken in the order a forward pass on the meta device first calls them.

Every block of two numbered levels under one container gets a paper-style address
(``"1.0"`` for ``encoder.stages.1.layers.0``; ``"1.downsample"`` for a stage's other
parts), every other unit its full module name (``body.2``, ``vit.layernorm``); whatever
runs before the first block is ``"stem"``. A model with no container of blocks keeps one
address per top-level child.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

__all__: list[str] = []

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Unit:
    """One address of the map: a module, and the containers of blocks above it.

    Attributes:
        path: The module's name.
        levels: ``(container name, item name)`` for each container of blocks passed on the
            way down, outermost first.
    """

    path: str
    levels: tuple[tuple[str, str], ...]


def block_units(model: nn.Module, order: dict[str, int] | None) -> list[Unit]:
    """The units of ``model`` in forward order (registration order where ``order`` is None)."""
    units: list[Unit] = []
    if order is not None:
        # A container is never called itself: it runs when its first item does.
        first: dict[str, int] = {}
        for name, position in order.items():
            parts = name.split(".") if name else []
            for depth in range(len(parts) + 1):
                key = ".".join(parts[:depth])
                first[key] = min(first.get(key, position), position)
        order = first

    def children(module: nn.Module, path: str) -> list[tuple[str, str, nn.Module]]:
        named = [
            (name, _join(path, name), child)
            for name, child in module.named_children()
            if _holds_tensors(child)
        ]
        if order is not None:
            late = len(order)
            named = [
                named[i]
                for i in sorted(range(len(named)), key=lambda i: (order.get(named[i][1], late), i))
            ]
        return named

    def container(module: nn.Module, path: str, levels: tuple[tuple[str, str], ...]) -> None:
        for name, item_path, item in children(module, path):
            item_levels = (*levels, (path, name))
            if len(item_levels) < 2 and _is_container(item, deep=True):
                container(item, item_path, item_levels)
            elif len(item_levels) < 2 and _holds_container(item, deep=True):
                visit(item, item_path, item_levels)
            else:
                units.append(Unit(item_path, item_levels))

    def visit(module: nn.Module, path: str, levels: tuple[tuple[str, str], ...]) -> None:
        deep = bool(levels)
        for _, child_path, child in children(module, path):
            if _is_container(child, deep=deep):
                container(child, child_path, levels)
            elif _holds_container(child, deep=deep):
                visit(child, child_path, levels)
            else:
                units.append(Unit(child_path, levels))

    if _is_container(model, deep=False):
        container(model, "", ())
    else:
        visit(model, "", ())
    return units


def unit_addresses(units: list[Unit]) -> list[str]:
    """The address of each unit: ``"stem"`` before the first block, paper-style numbers
    where two numbered levels share one outer container, full module names otherwise. A
    module called ``stem`` that runs after the first block keeps that name, and what runs
    before the block keeps its own."""
    first_block = next((i for i, u in enumerate(units) if u.levels), None)
    if first_block is None or any(u.path == "stem" for u in units[first_block:]):
        return [u.path for u in units]
    numbered = _numbered_container(units)
    addresses = []
    for index, unit in enumerate(units):
        if index < first_block:
            addresses.append("stem")
        elif numbered is not None and unit.levels and unit.levels[0][0] == numbered:
            stage = unit.levels[0][1]
            if len(unit.levels) == 2:
                addresses.append(f"{stage}.{unit.levels[1][1]}")
            else:
                rest = unit.path[len(_join(numbered, stage)) + 1 :]
                addresses.append(f"{stage}.{rest}" if rest else stage)
        else:
            addresses.append(unit.path)
    if len(set(addresses)) != len(addresses) - max(first_block - 1, 0):
        # Numbers that would name two units: full names say which is which.
        return ["stem" if i < first_block else u.path for i, u in enumerate(units)]
    return addresses


def _numbered_container(units: list[Unit]) -> str | None:
    """The one outer container whose blocks all have two numbered levels, if there is one."""
    outer = {
        u.levels[0][0]
        for u in units
        if len(u.levels) == 2 and all(name.isdigit() for _, name in u.levels)
    }
    if len(outer) != 1:
        return None
    (name,) = outer
    inside = [u for u in units if u.levels and u.levels[0][0] == name]
    if any(len(u.levels) == 2 and not u.levels[1][1].isdigit() for u in inside):
        return None
    return name


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _holds_tensors(module: nn.Module) -> bool:
    return next(_tensors(module), None) is not None


def _tensors(module: nn.Module) -> Iterator[object]:
    yield from module.parameters()
    yield from module.buffers()


def _is_composite(module: nn.Module) -> bool:
    return any(_holds_tensors(child) for child in module.children())


def _is_container(module: nn.Module, *, deep: bool) -> bool:
    """Whether ``module`` is a container of blocks (inside a block: of composite blocks)."""
    if not isinstance(module, _CONTAINERS):
        return False
    items = [child for child in module.children() if _holds_tensors(child)]
    if not items:
        return False
    if deep:
        return all(_is_composite(item) for item in items)
    if isinstance(module, nn.ModuleList):
        return True
    return max(Counter(type(item) for item in items).values()) >= 2


def _holds_container(module: nn.Module, *, deep: bool) -> bool:
    return any(_is_container(m, deep=deep) for name, m in module.named_modules() if name)
