"""Random balanced partitions of a label set into two groups."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._checks import as_tensor, check_int, check_seed, describe
from ._rng import SplitMix64

__all__ = ["class_partition"]


def class_partition(num_classes: int, *, num_partitions: int = 1, seed: int = 0) -> Tensor:
    """Draw random balanced two-way partitions of ``num_classes`` classes.

    Row ``i`` maps every class to a binary label: ``partition[i, c]`` is the label that the
    ``i``-th binary head learns for an image of class ``c``. Each row puts
    ``num_classes // 2`` classes in group 1 and the rest in group 0, so group sizes differ by
    at most one. With an odd number of classes, group 1 is therefore always the smaller one;
    which classes fall in it is random, and the binary task is the same either way round
    (``1 - partition`` poses it with the labels swapped).

    Algorithm (fixed, so a seed means the same tensor on every machine and torch release):
    a SplitMix64 generator seeded with ``seed`` drives a Fisher-Yates shuffle of
    ``range(num_classes)``; the first ``num_classes // 2`` classes of the shuffle form group 1.
    Rows are drawn one after another from the same generator. A row that splits the classes
    the same way as an earlier row (or is its mirror image, which poses the same binary task)
    is drawn again, until every possible partition has been used; only then may rows repeat.

    Args:
        num_classes: Number of classes ``C`` to split, at least 2.
        num_partitions: Number of rows ``n``, one per binary head.
        seed: Any integer in ``[0, 2**64)``.

    Returns:
        A ``torch.long`` tensor of zeros and ones.

    Shape:
        - Output: ``[num_partitions, num_classes]``.

    Example:
        >>> class_partition(6, seed=0)
        tensor([[0, 0, 1, 0, 1, 1]])
        >>> class_partition(100, num_partitions=3).sum(dim=1)
        tensor([50, 50, 50])
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    num_partitions = check_int("num_partitions", num_partitions, minimum=1)
    seed = check_seed("seed", seed)

    half = num_classes // 2
    # Unordered splits into groups of sizes (C - C//2, C//2); for even C a split and its
    # mirror image are the same split.
    distinct = math.comb(num_classes, half) // (2 if num_classes % 2 == 0 else 1)
    rng = SplitMix64(seed)
    seen: set[tuple[int, ...]] = set()
    rows: list[list[int]] = []
    while len(rows) < num_partitions:
        if len(seen) == distinct:
            seen.clear()
        row = [0] * num_classes
        for c in rng.permutation(num_classes)[:half]:
            row[c] = 1
        key = tuple(row) if row[0] == 0 else tuple(1 - v for v in row)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long, device="cpu")  # whatever the default device


def as_partition(
    partition: Any, *, name: str = "partition", num_classes: int | None = None
) -> Tensor:
    """Check a user-given partition and return it as a ``[n, C]`` long tensor on the CPU.

    A 1-D partition is taken as one row. Every row must hold only 0 and 1 and use both.
    """
    partition = as_tensor(name, partition, "a tensor of 0/1 labels of shape [C] or [n, C]")
    if partition.dtype.is_floating_point or partition.dtype.is_complex:
        raise TypeError(
            f"Expected `{name}` to be an integer or bool tensor of 0/1 labels, "
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
    if bool(((partition != 0) & (partition != 1)).any()):
        bad = partition[(partition != 0) & (partition != 1)][0].item()
        raise ValueError(f"Expected `{name}` to hold only 0 and 1, but got the value {bad}.")
    one_sided = (partition.min(dim=1).values == partition.max(dim=1).values).nonzero()
    if one_sided.numel():
        row = int(one_sided[0])
        raise ValueError(
            f"Expected every row of `{name}` to put classes in both groups, "
            f"but row {row} puts all {partition.shape[1]} classes in group {int(partition[row, 0])}."
        )
    return partition.contiguous()
