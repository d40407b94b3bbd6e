"""The paper's data sets A and B: seeded class splits, relabelled subsets, long tails.

The application's data helpers: ``split_classes`` draws A's and B's classes,
``subset_classes`` keeps the samples of some classes and numbers them ``0 .. k-1``,
``limit_per_class`` keeps a few samples of every class (the long tail). Each draws from a
documented SplitMix64 stream, so a seed means the same classes and samples everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import as_tensor, check_int, check_seed, describe
from .._rng import SplitMix64

__all__ = ["ClassSubset", "limit_per_class", "side_classes", "split_classes", "subset_classes"]

# split_classes and limit_per_class draw from SplitMix64 streams of their own, so that the
# same seed given to them and to class_partition does not tie A's classes, the kept images
# and the binary partition together.
_SPLIT_STREAM = 0x5EED_C1A5_5E5_0001
_LIMIT_STREAM = 0x11_4175_0002


@dataclass(frozen=True)
class ClassSubset:
    """The samples of some classes, relabelled ``0 .. k-1``.

    Attributes:
        indices: Positions of the kept samples in the original labels, ascending.
        labels: Their new labels: ``labels[i]`` is the position of the sample's class in
            ``classes``.
        classes: The mapping back: new label ``j`` is original class ``classes[j]``.
    """

    indices: Tensor
    labels: Tensor
    classes: tuple[int, ...]


def split_classes(
    num_classes: int, *, seed: int, num_a: int | None = None
) -> tuple[list[int], list[int]]:
    """Split the classes ``0 .. num_classes - 1`` at random into data sets A and B.

    Algorithm (fixed, like [`class_partition`][auxtransfer.class_partition]): a Fisher-Yates shuffle of
    ``range(num_classes)`` driven by SplitMix64 seeded with ``(seed + 0x5EEDC1A55E50001)
    mod 2**64``; the first ``num_a`` shuffled classes form A, the rest B. Both lists are
    returned sorted.

    Args:
        num_classes: Number of classes to split, at least 2.
        seed: Any integer in ``[0, 2**64)``.
        num_a: Size of A; half the classes (rounded down) by default, as in the paper.

    Returns:
        ``(a_classes, b_classes)``, two sorted lists that together hold every class once.

    Examples:
        >>> a, b = split_classes(100, seed=0)
        >>> len(a), len(b), sorted(a + b) == list(range(100))
        (50, 50, True)
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    seed = check_seed("seed", seed)
    num_a = num_classes // 2 if num_a is None else check_int("num_a", num_a, minimum=1)
    if num_a >= num_classes:
        raise ValueError(
            f"Expected `num_a` to leave at least one class for B (at most {num_classes - 1}), "
            f"but got {num_a}."
        )
    order = SplitMix64((seed + _SPLIT_STREAM) % 2**64).permutation(num_classes)
    return sorted(order[:num_a]), sorted(order[num_a:])


def side_classes(num_classes: int, side: str, split_seed: int | None) -> list[int]:
    """The classes of ``side``: ``"A"`` or ``"B"`` of ``split_classes(num_classes,
    seed=split_seed)``, or ``"all"``."""
    if side == "all":
        return list(range(num_classes))
    if side not in ("A", "B"):
        raise ValueError(f"Expected `side` to be 'A', 'B' or 'all', but got {side!r}.")
    if split_seed is None:
        raise ValueError(f"Expected a `split_seed` for side={side!r}, but got None.")
    return split_classes(num_classes, seed=split_seed)[side == "B"]


def subset_classes(labels: Tensor, classes: Sequence[int]) -> ClassSubset:
    """Keep the samples whose class is in ``classes`` and relabel them ``0 .. k-1``.

    Args:
        labels: ``[N]`` integer class labels.
        classes: The classes to keep, in the order that defines the new labels (for example
            the A classes of [`split_classes`][auxtransfer.experiments.splits.split_classes]).

    Returns:
        A [`ClassSubset`][auxtransfer.experiments.splits.ClassSubset].

    Examples:
        >>> import torch
        >>> subset = subset_classes(torch.tensor([5, 1, 2, 5, 7]), [5, 7])
        >>> subset.indices, subset.labels, subset.classes
        (tensor([0, 3, 4]), tensor([0, 0, 1]), (5, 7))
    """
    labels = _as_labels(labels)
    kept = tuple(check_int("classes[i]", c, minimum=0) for c in classes)
    if not kept:
        raise ValueError("Expected `classes` to hold at least one class, but it is empty.")
    if len(set(kept)) != len(kept):
        raise ValueError(f"Expected `classes` to hold distinct classes, but got {list(kept)}.")
    top = max(max(kept), int(labels.max()) if labels.numel() else 0)
    lookup = torch.full((top + 1,), -1)
    lookup[torch.tensor(kept)] = torch.arange(len(kept))
    new = lookup[labels]
    indices = (new >= 0).nonzero().flatten()
    missing = [c for c in kept if not bool((labels == c).any())]
    if missing:
        raise ValueError(
            f"Expected every class in `classes` to occur in `labels`, but {missing} do not."
        )
    return ClassSubset(indices, new[indices], kept)


def limit_per_class(labels: Tensor, n: int, *, seed: int) -> Tensor:
    """Pick ``n`` samples of every class at random, for long-tail experiments.

    Algorithm (fixed, so a seed means the same samples everywhere): classes are visited in
    ascending order; for each, a Fisher-Yates shuffle of its sample positions (in their
    original order), driven by one SplitMix64 generator seeded with
    ``(seed + 0x1141750002) mod 2**64``, gives the first ``n``.

    Args:
        labels: ``[N]`` integer class labels.
        n: Samples to keep per class.
        seed: Any integer in ``[0, 2**64)``.

    Returns:
        The kept positions, ascending.

    Examples:
        >>> import torch
        >>> labels = torch.tensor([0, 1, 0, 1, 0, 1])
        >>> limit_per_class(labels, 2, seed=0).tolist()
        [1, 2, 3, 4]
    """
    labels = _as_labels(labels)
    n = check_int("n", n, minimum=1)
    rng = SplitMix64((check_seed("seed", seed) + _LIMIT_STREAM) % 2**64)
    kept: list[Tensor] = []
    for c in labels.unique().tolist():
        positions = (labels == c).nonzero().flatten()
        if len(positions) < n:
            raise ValueError(
                f"Expected `n` to be at most the size of every class, but class {c} has "
                f"{len(positions)} samples and `n` is {n}."
            )
        order = rng.permutation(len(positions))[:n]
        kept.append(positions[torch.tensor(order)])
    return torch.cat(kept).sort().values


def _as_labels(labels: Any) -> Tensor:
    labels = as_tensor("labels", labels, "a 1-D tensor of class indices")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(
            f"Expected `labels` to be a 1-D tensor of class indices, but got {describe(labels)}."
        )
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(
            f"Expected `labels` to be class indices >= 0, but got {int(labels.min())}."
        )
    return labels.to("cpu", torch.long)
