"""Batches cut, augmented and normalised on the training device, vectorised over the batch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .._checks import check_int, check_seed, describe
from ..partition import as_partition
from .settings import RunConfig

__all__ = ["DeviceBatches", "LoaderBatches", "crop_flip", "shard_order"]


def crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, *, pad: int) -> Tensor:
    """Zero-pad every image by ``pad``, cut the original size at ``offsets``, mirror where
    ``flips``: what torchvision's ``RandomCrop(size, padding=pad)`` followed by
    ``RandomHorizontalFlip`` does to each image, done for the whole batch in one gather.

    Args:
        images: ``[B, C, H, W]``, any dtype (pixels are moved, not computed).
        offsets: ``[B, 2]`` integer (top, left) corners in the padded image, in ``[0, 2 * pad]``.
        flips: ``[B]`` bool, mirror left-right after the crop.
        pad: Zero padding on every side.

    Returns:
        ``[B, C, H, W]``, same dtype and device as ``images``.
    """
    if not isinstance(images, Tensor):
        raise TypeError(
            f"Expected `images` to be a [B, C, H, W] tensor, but got {describe(images)}."
        )
    if images.dim() != 4:
        raise ValueError(
            f"Expected `images` to be a [B, C, H, W] tensor, but got {describe(images)}."
        )
    batch = images.shape[0]
    if not _is_integer_tensor(offsets):
        raise TypeError(f"Expected `offsets` to be an integer tensor, but got {describe(offsets)}.")
    if offsets.shape != (batch, 2):
        raise ValueError(
            f"Expected `offsets` to have shape [{batch}, 2], but got {describe(offsets)}."
        )
    if not isinstance(flips, Tensor) or flips.dtype != torch.bool:
        raise TypeError(f"Expected `flips` to be a bool tensor, but got {describe(flips)}.")
    if flips.shape != (batch,):
        raise ValueError(f"Expected `flips` to have shape [{batch}], but got {describe(flips)}.")
    return _crop_flip(images, offsets, flips, pad=check_int("pad", pad, minimum=0))


def _crop_flip(images: Tensor, offsets: Tensor, flips: Tensor, *, pad: int) -> Tensor:
    """``crop_flip`` without the argument checks (the batches' hot loop)."""
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = offsets.to(images.device)
    flips = flips.to(images.device)
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # [B, H]
    steps = torch.arange(width, device=images.device)
    steps = torch.where(flips[:, None], width - 1 - steps, steps)  # mirrored read order
    cols = offsets[:, 1:2] + steps  # [B, W]
    index = torch.arange(batch, device=images.device)[:, None, None]
    # Advanced indexing on (batch, row, col) with channels kept: [B, H, W, C] -> [B, C, H, W]
    return padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


class _Batches:
    """What ``DeviceBatches`` and ``LoaderBatches`` share: the epoch, its order, the ranks."""

    def _setup(self, batch_size: int, device: Any, seed: int, partition: Tensor | None,
               rank: int, world_size: int, train: bool, channels_last: bool) -> None:  # fmt: skip
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"Expected `rank` to be in [0, {self.world_size}), but got {rank}.")
        self.seed = check_seed("seed", seed)
        self.train = _check_bool("train", train)
        self.channels_last = _check_bool("channels_last", channels_last)
        if not isinstance(device, str | torch.device):
            raise TypeError(
                f"Expected `device` to be a torch.device or a string, but got {describe(device)}."
            )
        self.device = torch.device(device)
        self.partition = None if partition is None else as_partition(partition).to(self.device)
        self.epoch = 0
        #: For the batch last yielded: True where a sample is no wrap-around repeat (DDP).
        self.last_batch_original = torch.ones(0, dtype=torch.bool)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def _epoch_order(self, total: int) -> tuple[torch.Generator, Tensor, Tensor]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        order, original = shard_order(
            total, generator, shuffle=self.train, rank=self.rank, world_size=self.world_size
        )
        return generator, order, original

    def _batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        return (x, y) if self.partition is None else (x, y, self.partition.t()[y])


class DeviceBatches(_Batches):
    """Iterate over an ``(images, labels)`` tensor pair in batches made on the device.

    The whole data set lives on ``device`` (CIFAR-100's 50,000 uint8 images take 150 MB);
    each batch is cut by index, augmented (``pad``-pixel zero padding, random crop back to
    the original size, horizontal flip with probability 0.5) and normalised there, with no
    per-image Python. Shuffling and augmentation draw from a private generator seeded with
    ``seed`` and the epoch, so a run is reproducible and the global random state untouched.

    Under DDP give ``rank`` and ``world_size``: each rank gets its share of every epoch's
    order (padded by wrapping around, as ``DistributedSampler`` does), and the same
    augmentation draws the data would get on one process.

    Args:
        images: ``[N, C, H, W]`` uint8 (0-255) or float (0-1) images.
        labels: ``[N]`` class indices.
        batch_size: Images per batch (per rank).
        device: Where batches are made and returned.
        mean: Per-channel mean, in 0-1 pixel units.
        std: Per-channel standard deviation, in 0-1 pixel units.
        train: Shuffle and augment; otherwise keep the order and only normalise.
        seed: Seeds the order and the augmentation.
        pad: Padding of the random crop (4 for CIFAR, a run's ``pad``); 0 turns cropping
            off.
        flip: Random horizontal flips (a run's ``flip``).
        drop_last: Drop the last incomplete batch.
        partition: A ``[n, C]`` partition: batches then also carry the binary labels ``[B, n]``.
        rank: This process's rank in a DDP job.
        world_size: Number of processes in the DDP job.
        channels_last: Return images in channels-last memory format.
        dtype: Dtype of the returned images.

    Examples:
        >>> import torch
        >>> images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
        >>> batches = DeviceBatches(images, torch.arange(10), batch_size=4, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> for x, y in batches:
        ...     print(tuple(x.shape), y.tolist()[:2])  # doctest: +ELLIPSIS
        (4, 3, 32, 32) [...]
        (4, 3, 32, 32) [...]
        (2, 3, 32, 32) [...]
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        train: bool = True,
        seed: int = 0,
        pad: int = RunConfig.pad,
        flip: bool = RunConfig.flip,
        drop_last: bool = False,
        partition: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(
                f"Expected `images` to be a [N, C, H, W] tensor, but got {describe(images)}."
            )
        if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
            raise TypeError(
                f"Expected `images` to be uint8 (0-255) or floating point (0-1), but got {describe(images)}."
            )
        if images.dim() != 4:
            raise ValueError(
                f"Expected `images` to be a [N, C, H, W] tensor, but got {describe(images)}."
            )
        if not _is_integer_tensor(labels):
            raise TypeError(
                f"Expected `labels` to be an integer tensor of class indices, but got {describe(labels)}."
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"Expected `labels` to be a tensor of shape [{images.shape[0]}] (one per image), "
                f"but got {describe(labels)}."
            )
        self._setup(batch_size, device, seed, partition, rank, world_size, train, channels_last)
        if self.world_size > len(labels):
            raise ValueError(
                f"Expected `world_size` to be at most the {len(labels)} images of the data, "
                f"but got {world_size}."
            )
        share = -(-len(labels) // self.world_size)
        if self.batch_size > share:
            raise ValueError(
                f"Expected `batch_size` to be at most the {share} images of each of the "
                f"{self.world_size} process(es), but got {batch_size}."
            )
        channels = images.shape[1]
        mean = _check_floats("mean", mean, channels)
        std = _check_floats("std", std, channels)
        if any(not s > 0 for s in std):
            raise ValueError(
                f"Expected `mean` and `std` to give {channels} values each (std > 0), "
                f"but got {tuple(mean)} and {tuple(std)}."
            )
        self.pad = check_int("pad", pad, minimum=0)
        self.flip, self.drop_last = _check_bool("flip", flip), _check_bool("drop_last", drop_last)
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"Expected `dtype` to be a torch.dtype, but got {describe(dtype)}.")
        if not dtype.is_floating_point:
            raise ValueError(f"Expected `dtype` to be a floating-point dtype, but got {dtype}.")
        self.dtype = dtype
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.long)
        scale = 255.0 if images.dtype == torch.uint8 else 1.0
        self._mean = torch.tensor(mean, device=self.device).view(1, -1, 1, 1) * scale
        self._std = torch.tensor(std, device=self.device).view(1, -1, 1, 1) * scale

    def __len__(self) -> int:
        per_rank = -(-len(self.labels) // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        generator, full, original = self._epoch_order(len(self.labels))
        # Draw every epoch's augmentation for the whole data set in data-set order, then
        # take this rank's share: the draws do not depend on the number of ranks.
        total = len(self.labels)
        offsets = torch.randint(0, 2 * self.pad + 1, (total, 2), generator=generator)
        flips = torch.rand(total, generator=generator) < 0.5
        # One copy to the device per epoch; batches are cut there (no copy per batch).
        full, original = full.to(self.device), original.to(self.device)
        offsets, flips = offsets.to(self.device), flips.to(self.device) & self.flip
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = full[start : start + self.batch_size]
            if len(index) == 0:
                break
            self.last_batch_original = original[start : start + self.batch_size]
            images = self.images[index]
            if self.train and (self.pad or self.flip):
                images = _crop_flip(images, offsets[index], flips[index], pad=self.pad)
            # The layout asked for, whatever the crop left (it reads channels-last): a
            # model given another gets gradients in it, which DDP then copies each step.
            images = images.contiguous(memory_format=layout)
            x = ((images.float() - self._mean) / self._std).to(self.dtype)
            yield self._batch(x, self.labels[index])


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {describe(value)}.")
    return value


def _is_integer_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and not (
        value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool
    )


def _check_floats(name: str, value: Any, count: int) -> tuple[float, ...]:
    """``count`` real numbers (a sequence, or a 1-D tensor or array), as floats."""
    if isinstance(value, Tensor) and value.dim() == 1:
        value = value.tolist()
    try:
        values = None if isinstance(value, str | bytes | Tensor) else list(value)
    except TypeError:  # not iterable
        values = None
    if values is None or any(
        isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values
    ):
        raise TypeError(
            f"Expected `{name}` to be a sequence of {count} floats (one per channel), but got {describe(value)}."
        )
    if len(values) != count:
        raise ValueError(
            f"Expected `mean` and `std` to give {count} values each (std > 0), "
            f"but got {len(values)} values for `{name}`: {tuple(values)}."
        )
    return tuple(float(v) for v in values)


def shard_order(
    total: int, generator: torch.Generator, *, shuffle: bool, rank: int, world_size: int
) -> tuple[Tensor, Tensor]:
    """This rank's share of an epoch's order of ``total`` samples, and which of its entries
    are originals (False for the wrap-around repeats that even out the ranks, as
    ``DistributedSampler`` pads)."""
    order = torch.randperm(total, generator=generator) if shuffle else torch.arange(total)
    per_rank = -(-total // world_size)
    original = torch.ones(per_rank * world_size, dtype=torch.bool)
    if per_rank * world_size > total:  # wrap around so every rank gets the same count
        order = torch.cat([order, order[: per_rank * world_size - total]])
        original[total:] = False
    return order[rank::world_size], original[rank::world_size]


class LoaderBatches(_Batches):
    """Batches of a map-style dataset through a ``DataLoader``, for data too large to live on
    the device (ImageNet-size images): the same interface and the same epoch order as
    [`DeviceBatches`][auxtransfer.experiments.batches.DeviceBatches].

    The dataset yields ``(image, label)`` with the image already a tensor, augmented and
    normalised by its own transforms (torchvision's); batches are moved to ``device``. The
    order of every epoch is drawn as ``DeviceBatches`` draws it for the same ``seed``, split
    over DDP ranks the same way, and the ``DataLoader``'s workers are seeded from it, so a
    run is reproducible for a given number of workers.

    Args:
        dataset: A map-style dataset of ``(image tensor, class index)``.
        batch_size: Images per batch (per rank).
        device: Where batches are returned.
        train: Shuffle; otherwise keep the order.
        seed: Seeds the order and the workers.
        partition: A ``[n, C]`` partition: batches then also carry the binary labels.
        rank: This process's rank in a DDP job.
        world_size: Number of processes in the DDP job.
        num_workers: ``DataLoader`` worker processes.
        channels_last: Return images in channels-last memory format.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        train: bool = True,
        seed: int = 0,
        partition: Tensor | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        channels_last: bool = False,
    ) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"Expected `dataset` to be a map-style dataset (with __getitem__ and __len__), "
                f"but got {describe(dataset)}."
            )
        self.dataset = dataset
        self._setup(batch_size, device, seed, partition, rank, world_size, train, channels_last)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        generator, order, original = self._epoch_order(len(self.dataset))
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order.tolist(),
            num_workers=self.num_workers,
            generator=generator,  # seeds the workers, after the order was drawn
            pin_memory=self.device.type == "cuda",
        )
        for start, (x, y) in zip(range(0, len(order), self.batch_size), loader, strict=True):
            self.last_batch_original = original[start : start + self.batch_size].to(self.device)
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield self._batch(x, torch.as_tensor(y).to(self.device, torch.long, non_blocking=True))
