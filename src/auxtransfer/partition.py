"""Partitions of a label set into groups: random balanced ones, or a given grouping."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._checks import as_tensor, check_int, check_seed, describe
from ._rng import SplitMix64

__all__ = ["class_partition", "group_partition"]


def class_partition(
    num_classes: int, *, num_groups: int = 2, num_partitions: int = 1, seed: int = 0
) -> Tensor:
    """Draw random balanced partitions of ``num_classes`` classes into ``num_groups`` groups.

    Row ``i`` maps every class to a group: ``partition[i, c]`` is the label that the
    ``i``-th auxiliary head learns for an image of class ``c``. Group sizes differ by at most
    one. With two groups (the paper's binary partition) each row puts ``num_classes // 2``
    classes in group 1 and the rest in group 0, so with an odd number of classes group 1 is
    the smaller one; which classes fall in it is random, and the task is the same either
    way round (``1 - partition`` poses it with the labels swapped).

    Algorithm (fixed, so a seed means the same tensor on every machine and torch release):
    a SplitMix64 generator seeded with ``seed`` drives a Fisher-Yates shuffle of
    ``range(num_classes)``. The shuffled order is cut into ``K = num_groups`` runs, the
    first ``K - C % K`` of ``C // K`` classes and the others one longer, and run ``j``
    becomes group ``K - 1 - j`` (for ``K = 2``: the first ``C // 2`` classes of the shuffle
    form group 1). Rows are drawn one after another from the same generator. A row that
    groups the classes as an earlier row does, up to the names of the groups (which pose
    the same task), is drawn again until every possible partition has been used; only then
    may rows repeat.

    Args:
        num_classes: Number of classes ``C`` to split, at least 2.
        num_groups: Number of groups ``K``, from 2 to ``C``.
        num_partitions: Number of rows ``n``, one per auxiliary head.
        seed: Any integer in ``[0, 2**64)``.

    Returns:
        A ``torch.long`` tensor of group ids in ``[0, K)``.

    Shape:
        - Output: ``[num_partitions, num_classes]``.

    Examples:
        >>> class_partition(6, seed=0)
        tensor([[0, 0, 1, 0, 1, 1]])
        >>> class_partition(100, num_partitions=3).sum(dim=1)
        tensor([50, 50, 50])
        >>> class_partition(100, num_groups=20)[0].bincount().tolist() == [5] * 20
        True
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    num_groups = check_int("num_groups", num_groups, minimum=2)
    if num_groups > num_classes:
        raise ValueError(
            f"Expected `num_groups` to be at most `num_classes` ({num_classes}), "
            f"but got {num_groups}."
        )
    num_partitions = check_int("num_partitions", num_partitions, minimum=1)
    seed = check_seed("seed", seed)

    size, longer = divmod(num_classes, num_groups)
    # The group of each position of the shuffled order.
    positions = [
        num_groups - 1 - run
        for run in range(num_groups)
        for _ in range(size + (run >= num_groups - longer))
    ]
    # Partitions that differ only in the names of their groups: runs of one length can
    # swap names.
    distinct = math.factorial(num_classes) // (
        math.factorial(size) ** (num_groups - longer)
        * math.factorial(size + 1) ** longer
        * math.factorial(num_groups - longer)
        * math.factorial(longer)
    )
    rng = SplitMix64(seed)
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    while len(rows) < num_partitions:
        if len(seen) == distinct:
            seen.clear()
        row = [0] * num_classes
        for position, c in enumerate(rng.permutation(num_classes)):
            row[c] = positions[position]
        key = _canonical(row)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long, device="cpu")  # whatever the default device


def _canonical(row: list[int]) -> tuple[int, ...]:
    """The row with its groups renamed in order of first appearance: equal for two rows
    that group the classes alike."""
    names: dict[int, int] = {}
    return tuple(names.setdefault(g, len(names)) for g in row)


def group_partition(
    groups: Sequence[int] | Mapping[int, int] | Tensor,
    *,
    num_groups: int | None = None,
    classes: Sequence[int] | None = None,
) -> Tensor:
    """A partition table from a given grouping of the classes: superclasses, WordNet parents.

    ``groups`` maps every class to its group: a sequence (``groups[c]`` is the group of
    class ``c``), a tensor of the same, or a mapping ``{class: group}`` that must assign
    every class from 0 to its largest key. Group ids run from 0 to ``K - 1`` (``K`` is
    ``num_groups`` where given, else the largest id plus one) and every group must hold a
    class.

    With ``classes`` (the classes one side of a split keeps, as
    [`split_classes`][auxtransfer.experiments.splits.split_classes] returns them), the table is for those
    classes in that order (column ``j`` is class ``classes[j]``, as
    [`subset_classes`][auxtransfer.experiments.splits.subset_classes] relabels them), and the groups that
    still hold a class are renumbered ``0 .. K' - 1`` in order of their ids. A side may
    then hold fewer groups than the grouping, of uneven sizes: 50 of CIFAR-100's 100
    classes rarely cover its 20 superclasses five each.

    Args:
        groups: The group of every class.
        num_groups: The number of groups ``K``, to check the ids against.
        classes: Optional classes to keep, in their new order.

    Returns:
        A ``[1, C]`` long tensor of group ids (``C = len(classes)`` with ``classes``), for
        ``RandomPartitionHead(partition=...)`` and
        [`binary_relabel`][auxtransfer.binary_relabel].

    Raises:
        ValueError: naming the class or group at fault: a class without a group, a
            negative group id, an empty group, a class in ``classes`` that ``groups`` does
            not cover, a group id of ``num_groups`` or more, or a kept side with a single
            group.

    Examples:
        >>> group_partition([0, 0, 1, 2, 1, 2])
        tensor([[0, 0, 1, 2, 1, 2]])
        >>> group_partition({0: 1, 1: 0, 2: 1})
        tensor([[1, 0, 1]])
        >>> group_partition([0, 0, 1, 2, 1, 2], classes=[5, 2, 3])
        tensor([[1, 0, 1]])
    """
    table = _grouping(groups)
    if num_groups is None:
        num_groups = int(table.max()) + 1
    num_groups = check_int("num_groups", num_groups, minimum=2)
    beyond = (table >= num_groups).nonzero()
    if beyond.numel():
        c = int(beyond[0])
        raise ValueError(
            f"Expected `groups` to hold group ids from 0 to {num_groups - 1} (`num_groups` = "
            f"{num_groups}), but class {c} has group {int(table[c])}."
        )
    empty = sorted(set(range(num_groups)) - set(table.tolist()))
    if empty:
        raise ValueError(
            f"Expected every group id from 0 to {num_groups - 1} to hold a class, but group "
            f"{empty[0]} holds none{f' (nor {empty[1:]})' if len(empty) > 1 else ''}."
        )
    if classes is not None:
        kept = [check_int("classes", c, minimum=0) for c in classes]
        outside = [c for c in kept if c >= len(table)]
        if outside:
            raise ValueError(
                f"Expected `classes` to name classes that `groups` assigns (0 to "
                f"{len(table) - 1}), but got class {outside[0]}."
            )
        table = table[torch.tensor(kept, dtype=torch.long)]
        present = sorted(set(table.tolist()))
        if len(present) < 2:
            raise ValueError(
                f"Expected the kept `classes` to fall in at least two groups, but all "
                f"{len(kept)} are in group {present[0]}."
            )
        renumber = {g: i for i, g in enumerate(present)}
        table = torch.tensor([renumber[g] for g in table.tolist()], dtype=torch.long)
    return table.unsqueeze(0)


def _grouping(groups: Any) -> Tensor:
    """``groups`` as a ``[C]`` long tensor of group ids >= 0, every class assigned."""
    expected = "a sequence or tensor of group ids, or a {class: group} mapping"
    if isinstance(groups, Mapping):
        for key in groups:
            if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                raise ValueError(
                    f"Expected the classes of `groups` to be class indices >= 0, "
                    f"but got {describe(key)}."
                )
        if not groups:
            raise ValueError(f"Expected `groups` to be {expected}, but it is empty.")
        num_classes = max(groups) + 1
        missing = [c for c in range(num_classes) if c not in groups]
        if missing:
            raise ValueError(
                f"Expected `groups` to assign every class from 0 to {num_classes - 1} to a "
                f"group, but class {missing[0]} has none"
                f"{f' (nor {len(missing) - 1} more)' if len(missing) > 1 else ''}."
            )
        groups = [groups[c] for c in range(num_classes)]
    table = as_tensor("groups", groups, expected)
    if table.dtype.is_floating_point or table.dtype.is_complex or table.dtype == torch.bool:
        raise TypeError(f"Expected `groups` to hold integer group ids, but got {describe(table)}.")
    if table.dim() != 1 or len(table) < 2:
        raise ValueError(
            f"Expected `groups` to hold the group of each of at least 2 classes, "
            f"but got shape {tuple(table.shape)}."
        )
    table = table.to("cpu", torch.long)
    negative = (table < 0).nonzero()
    if negative.numel():
        c = int(negative[0])
        raise ValueError(
            f"Expected `groups` to hold group ids >= 0, but class {c} has group {int(table[c])}."
        )
    return table


def as_partition(
    partition: Any, *, name: str = "partition", num_classes: int | None = None
) -> Tensor:
    """Check a user-given partition and return it as a ``[n, C]`` long tensor on the CPU.

    A 1-D partition is taken as one row. The entries are group ids; ``K``, the number of
    groups, is the largest id plus one, and every row must put a class in every group
    (so in two at least).
    """
    expected = "a tensor of group ids of shape [C] or [n, C]"
    partition = as_tensor(name, partition, expected)
    if partition.dtype.is_floating_point or partition.dtype.is_complex:
        raise TypeError(
            f"Expected `{name}` to be an integer or bool tensor of group ids, "
            f"but got {describe(partition)}."
        )
    if partition.dim() == 1:
        partition = partition.unsqueeze(0)
    if partition.dim() != 2 or partition.shape[0] < 1 or partition.shape[1] < 2:
        raise ValueError(
            f"Expected `{name}` to have shape [C] or [n, C] with C >= 2 classes, "
            f"but got shape {tuple(partition.shape)}."
        )
    if num_classes is not None and partition.shape[1] != num_classes:
        raise ValueError(
            f"Expected `{name}` to have {num_classes} columns (one per class), "
            f"but got shape {tuple(partition.shape)}."
        )
    partition = partition.detach().to("cpu", torch.long)
    if bool((partition < 0).any()):
        bad = partition[partition < 0][0].item()
        raise ValueError(f"Expected `{name}` to hold group ids >= 0, but got the value {bad}.")
    one_sided = (partition.min(dim=1).values == partition.max(dim=1).values).nonzero()
    if one_sided.numel():
        row = int(one_sided[0])
        raise ValueError(
            f"Expected every row of `{name}` to put classes in at least two groups, "
            f"but row {row} puts all {partition.shape[1]} classes in group {int(partition[row, 0])}."
        )
    num_groups = int(partition.max()) + 1
    for row, ids in enumerate(partition.tolist()):
        empty = sorted(set(range(num_groups)) - set(ids))
        if empty:
            raise ValueError(
                f"Expected every row of `{name}` to put a class in every group from 0 to "
                f"{num_groups - 1}, but row {row} leaves group {empty[0]} empty."
            )
    return partition.contiguous()
