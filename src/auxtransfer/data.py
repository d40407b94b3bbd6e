"""Dataset adapters that add the binary partition labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from ._checks import describe
from .partition import as_partition

__all__ = ["BinaryRelabeled", "binary_relabel"]


class BinaryRelabeled(Dataset[tuple[Any, Any, Tensor]]):
    """A map-style dataset yielding ``(x, y, y_b)``; see [`binary_relabel`][auxtransfer.binary_relabel].

    Attributes:
        dataset: The wrapped dataset.
        partition: The ``[n, C]`` partition, a CPU long tensor.
        targets: The class labels read from the dataset's ``targets`` (through ``Subset``
            and ``TensorDataset`` too), or ``None`` where it has none.
        binary_targets: ``[N, n]`` group labels for ``targets``, or ``None``.
    """

    def __init__(self, dataset: Any, partition: Any) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"Expected `dataset` to be a map-style dataset (with __getitem__ and __len__), "
                f"but got {describe(dataset)}."
            )
        self.dataset = dataset
        self.partition = as_partition(partition)
        # y_b of each class, made once: an item then costs a lookup and a copy.
        columns = self.partition.t().contiguous()
        self._columns = list(columns.unbind(0))
        self.targets = _targets_of(dataset)
        self.binary_targets: Tensor | None = None
        if self.targets is not None:
            for index, label in enumerate(self.targets.tolist()):
                self._check_label(label, index)
            self.binary_targets = columns[self.targets]

    def _check_label(self, label: int, index: int) -> None:
        num_classes = self.partition.shape[1]
        if not 0 <= label < num_classes:
            raise ValueError(
                f"Expected the labels of `dataset` to be class indices in [0, {num_classes}) "
                f"(the partition's columns), but item {index} has label {label}."
            )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, Tensor]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                f"Expected `dataset` items to be (x, y) pairs, but item {index} is {describe(item)}."
            )
        x, y = item
        if type(y) is int and 0 <= y < len(self._columns):  # the common case, checked fast
            return x, y, self._columns[y].clone()
        label = _as_label(y, index)
        self._check_label(label, index)
        return x, y, self._columns[label].clone()

    def __repr__(self) -> str:
        n, c = self.partition.shape
        return f"{type(self).__name__}({self.dataset!r}, partitions={n}, classes={c})"


def binary_relabel(dataset: Any, partition: Any) -> BinaryRelabeled:
    """Add partition labels (binary, or group ids of ``K`` groups) to a map-style dataset
    of ``(x, y)`` pairs.

    Works with torchvision datasets, ``TensorDataset``, ``Subset`` and anything else with
    ``__getitem__`` and ``__len__``. Where the labels are known without loading images
    (a ``targets`` attribute, as torchvision's datasets have), they are all checked at
    once. The wrapper pickles, so DataLoader workers can use it.

    ``y_b`` is ``partition[:, y]``, exactly what [`RandomPartitionHead.relabel`][auxtransfer.RandomPartitionHead.relabel] gives
    for the same partition; batched by a DataLoader it has shape ``[B, n]``.

    Args:
        dataset: A map-style dataset yielding ``(x, y)`` with integer class ``y``.
        partition: A ``[n, C]`` or ``[C]`` tensor of group ids (0/1 for binary
            partitions), such as ``net.partition``.

    Returns:
        A dataset yielding ``(x, y, y_b)`` with ``y_b`` a long tensor of shape ``[n]``.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(3, 8), torch.tensor([0, 2, 3]))
        >>> x, y, y_b = binary_relabel(data, torch.tensor([0, 0, 1, 1]))[1]
        >>> y, y_b
        (tensor(2), tensor([1]))
    """
    return BinaryRelabeled(dataset, partition)


def _as_label(y: Any, index: int) -> int:
    if isinstance(y, Tensor) and y.numel() == 1 and not y.dtype.is_floating_point:
        return int(y)
    if isinstance(y, int) and not isinstance(y, bool):
        return y
    try:
        import numpy as np

        if isinstance(y, np.integer):
            return int(y)
    except ImportError:  # pragma: no cover - numpy ships with torch's wheels
        pass
    raise TypeError(
        f"Expected the label of item {index} to be an integer class index, but got {describe(y)}."
    )


def _targets_of(dataset: Any) -> Tensor | None:
    """All labels of ``dataset`` without loading its inputs, or None where unknown."""
    if getattr(dataset, "target_transform", None) is not None:
        return None  # .targets would be the labels before the transform
    targets: Any = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, Subset):
        parent = _targets_of(dataset.dataset)
        targets = (
            None
            if parent is None
            else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
        )
    if targets is None and isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        targets = dataset.tensors[1]
    if targets is None:
        return None
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):
        return None
    if targets.dim() != 1 or len(targets) != len(dataset) or targets.dtype.is_floating_point:
        return None
    return targets.to("cpu", torch.long)
