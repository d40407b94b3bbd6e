"""Where one forward pass first uses each tensor: the assignment behind the layer map.

``by_use`` gives every parameter and buffer the group (an index into the named groups) of
the outermost module running at its first use that lies within one group, orders the
groups by first use, and settles what is read between groups; ``shared_readers`` lists
the tensors that several addresses read. ``layers.layer_map`` builds the map from these.
"""

from __future__ import annotations

from torch import nn

from ._naming import enclosing
from ._trace import Trace

__all__ = ["by_use", "module_labels", "module_tensors", "shared_readers", "tensor_names"]


def module_tensors(
    model: nn.Module, names: list[str], first: dict[str, str]
) -> dict[str, tuple[str, ...]]:
    """Every module name -> the tensors inside it, by their first names."""
    modules: dict[str, list[str]] = {name: [] for name, _ in model.named_modules()}
    for name in names:
        for module in enclosing(name):
            modules.setdefault(module, []).append(first[name])
    return {m: tuple(dict.fromkeys(ts)) for m, ts in modules.items()}


def tensor_names(model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """Every name of every parameter and buffer, module by module (a tied tensor under each
    of its names), and each name's first name."""
    names: list[str] = []
    first: dict[str, str] = {}
    seen: dict[int, str] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        for attribute, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is None:
                continue
            name = prefix + attribute
            if name in first:
                continue
            names.append(name)
            first[name] = seen.setdefault(id(tensor), name)
    return names, first


def by_use(
    labelled: list[tuple[str, list[str]]],
    label_of: dict[str, int],
    names: list[str],
    tensors: list[str],
    recorded: Trace,
    head: str | None,
) -> tuple[dict[str, int], list[int]]:
    """Each tensor's group (an index into ``labelled``), and the groups in forward order."""
    labels_in = module_labels(names, label_of)
    position = recorded.tensors
    # "head" also holds what a matcher leaves unmatched (a table shared by the blocks): only
    # the classifier's own first use makes the head start.
    head_label = next((i for i, (a, _) in enumerate(labelled) if a == "head"), None)
    classifier = [
        position[t]
        for t in tensors
        if head is not None and t in position and (t == head or t.startswith(head + "."))
    ]
    head_start = min(classifier, default=-1)

    def context(stack: tuple[str, ...], at: int) -> int | None:
        for module_name in stack:
            labels = labels_in.get(module_name, ())
            if len(labels) == 1:
                label = next(iter(labels))
                return None if label == head_label and at < head_start else label
        return None

    used = sorted((t for t in tensors if t in position), key=position.__getitem__)
    found = {t: context(recorded.contexts[t], position[t]) for t in used}
    marks = [(t, found[t]) for t in used if found[t] is not None]
    assign: dict[str, int] = {}
    running: int | None = None
    upcoming = iter(marks)
    following = next(upcoming, None)
    for t in used:
        while following is not None and position[following[0]] <= position[t]:
            running = following[1]
            following = next(upcoming, None)
        if found[t] is not None:
            assign[t] = found[t]  # type: ignore[assignment]
            continue
        label = label_of[t]
        after = None if following is None else following[1]
        if label in (running, after) or (running is None and after is None):
            assign[t] = label
        else:
            assign[t] = after if after is not None else running  # type: ignore[assignment]

    start: dict[int, int] = {}
    for t in used:
        start.setdefault(assign[t], position[t])
    order = sorted(start, key=start.__getitem__)
    rank = {label: i for i, label in enumerate(order)}
    highest = -1
    for t in used:  # a group used again after a later one started: the later one holds it
        if rank[assign[t]] < highest:
            assign[t] = order[highest]
        highest = max(highest, rank[assign[t]])

    # Unused tensors stay with their module's used ones, else where their name puts them.
    by_module = {t.rpartition(".")[0]: assign[t] for t in reversed(used)}
    for t in tensors:
        if t not in assign:
            assign[t] = by_module.get(t.rpartition(".")[0], label_of[t])
    # Groups nothing uses keep their place after the group named before them.
    held = set(assign.values())
    for label in range(len(labelled)):
        if label not in order and label in held:
            before = [i for i, other in enumerate(order) if other < label]
            order.insert(before[-1] + 1 if before else 0, label)
    if head_label in order:
        # What runs after the classifier (a distillation head) goes with the head.
        late = set(order[order.index(head_label) + 1 :])
        assign = {t: head_label if label in late else label for t, label in assign.items()}
        order = [label for label in order if label not in late]
    return assign, order


def module_labels(names: list[str], label_of: dict[str, int]) -> dict[str, set[int]]:
    """The groups each module's tensors (under every name) are named into."""
    labels: dict[str, set[int]] = {}
    for name in names:
        for module in enclosing(name):
            labels.setdefault(module, set()).add(label_of[name])
    return labels


def shared_readers(
    recorded: Trace, names: list[str], first: dict[str, str], address_of: dict[str, str]
) -> dict[str, tuple[str, ...]]:
    """Tensor -> the addresses that read it, where more than one does or it has aliases.
    A read belongs to the outermost running module whose tensors lie in one address."""
    aliased = {f for n, f in first.items() if n != f}
    addresses_in: dict[str, set[str]] = {}
    for name in names:
        if first[name] in aliased:
            continue  # a tied tensor's modules lie wherever its other names are
        for module in enclosing(name):
            addresses_in.setdefault(module, set()).add(address_of[first[name]])
    result: dict[str, tuple[str, ...]] = {}
    for tensor, stacks in recorded.users.items():
        readers = [address_of[tensor]]
        for stack in sorted(stacks, key=lambda s: [recorded.modules.get(m, 0) for m in s]):
            for module_name in stack:
                inside = addresses_in.get(module_name, set())
                if len(inside) == 1:
                    readers.extend(inside)
                    break
        unique = tuple(dict.fromkeys(readers))
        if len(unique) > 1 or tensor in aliased:
            result[tensor] = unique
    return result
