"""The data of a run: CIFAR-100, synthetic CIFAR-shaped images or scikit-learn's digits,
cut to what the run saw.

A data source loads the whole data set once, ``(images, labels)`` for training and for
testing; ``run_data`` cuts a run's share out of it from the fields of its
[`RunConfig`][auxtransfer.experiments.settings.RunConfig]. A source too large to hold as
tensors (ImageNet-100, ``auxtransfer.experiments.imagenet``) is a ``DatasetSource``: it
makes each run's map-style datasets itself, by the same rules. ``run_data_for`` gives a
run its data from either kind:

- ``side="A"`` or ``"B"``: the classes of that side of ``split_classes(num_classes,
  seed=split_seed)`` (the source's ``num_classes``: 100 split into 50 + 50 for CIFAR-100,
  10 into 5 + 5 for the digits), relabelled from 0, in the training and the test set
  alike; ``side="all"``: every class.
- ``per_class=n``: ``n`` training images of every class, drawn by ``limit_per_class``
  with the run's ``seed`` (the test set stays whole). Baseline and binary runs of one
  replication share their seed, so they see the same images.

A source whose data comes with a grouping of its classes (CIFAR-100's 20 superclasses) has
``coarse_labels()``; ``run_partition_for`` gives a run with ``aux_labels="coarse"`` the
partition table of its own classes from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int, check_seed
from ..models import CIFAR100_MEAN, CIFAR100_STD, DIGITS_MEAN, DIGITS_STD
from ..partition import class_partition, group_partition
from .cifar import cifar100_superclasses, load_cifar100
from .splits import limit_per_class, side_classes, subset_classes

__all__ = [
    "Cifar100",
    "DataSource",
    "DatasetSource",
    "Digits",
    "Images",
    "SyntheticCifar100",
    "run_data",
    "run_data_for",
    "run_partition_for",
]

#: ``(images, labels)``: ``[N, C, H, W]`` uint8 (``[N, 3, 32, 32]`` for CIFAR) and ``[N]`` long.
Images = tuple[Tensor, Tensor]


class DataSource(Protocol):
    """Where the images of a plan's runs come from."""

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the images, in 0-1 pixel units."""

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the images, in 0-1 pixel units."""

    @property
    def num_classes(self) -> int:
        """The number of classes of the whole data set."""

    @property
    def train_per_class(self) -> int:
        """Training images of each class (of the class with the fewest)."""

    def check(self) -> None:
        """Raise unless ``load`` can work, before anything is written."""

    def load(self) -> Any:
        """The whole data set, loaded once and kept: the training and test sets as
        ``(images, labels)`` (a ``DatasetSource`` returns what it cuts runs' data from)."""


@runtime_checkable
class DatasetSource(DataSource, Protocol):
    """A data source whose runs train on map-style datasets (through a ``DataLoader``),
    not on tensors held on the device: data too large for that, such as ImageNet."""

    def run_datasets(self, config: Any) -> tuple[Dataset[Any], Dataset[Any]]:
        """A run's training and test datasets, from its config's ``side``, ``split_seed``,
        ``per_class`` and ``seed`` (as ``run_data`` reads them)."""


class _Loadable:
    """A source that loads its data once and keeps it; pickled without it (a run's process
    under ``--jobs`` loads its own copy rather than receive 180 MB through a pipe)."""

    _data: Any

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}


class Cifar100(_Loadable):
    """CIFAR-100 from ``root/cifar-100-python``, downloaded there when asked.

    Args:
        root: The folder holding (or to hold) ``cifar-100-python``.
        download: Download the data set when it is missing.
    """

    mean = CIFAR100_MEAN
    std = CIFAR100_STD
    num_classes = 100
    train_per_class = 500

    def __init__(self, root: str | os.PathLike[str], *, download: bool = False) -> None:
        self.root = Path(root)
        self.download = download
        self._data: tuple[Images, Images] | None = None
        self._coarse: Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, download={self.download})"

    def coarse_labels(self) -> Tensor:
        """``[100]``: the superclass (0 to 19) of every class, from the data's own files
        ([`cifar100_superclasses`][auxtransfer.experiments.cifar.cifar100_superclasses])."""
        if self._coarse is None:
            self._coarse = cifar100_superclasses(self.root, download=self.download)
        return self._coarse

    def check(self) -> None:
        """Raise ``FileNotFoundError`` when the data is missing and ``download`` is off."""
        folder = self.root / "cifar-100-python"
        missing = [name for name in ("train", "test") if not (folder / name).is_file()]
        if missing and not self.download:
            raise FileNotFoundError(
                f"CIFAR-100 is not under {self.root} (no {folder / missing[0]}): pass --download "
                f"(download=True in Python) on a machine with a network, or copy the unpacked "
                f"'cifar-100-python' folder there."
            )

    def load(self) -> tuple[Images, Images]:
        if self._data is None:
            train = load_cifar100(self.root, train=True, download=self.download)
            test = load_cifar100(self.root, train=False)
            self._data = train, test
        return self._data


class SyntheticCifar100(_Loadable):
    """Random images shaped like CIFAR-100, for smoke runs: no download, a few seconds.

    Every class has its own coarse colour pattern (a random 4x4 image, scaled up to 32x32)
    under pixel noise, so a network can learn something and transfer it; the images are
    drawn from a private generator seeded with ``seed``.

    Args:
        train_per_class: Training images of each of the 100 classes.
        test_per_class: Test images of each class.
        seed: Seeds the patterns and the noise.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    num_classes = 100

    def __init__(self, train_per_class: int = 4, test_per_class: int = 2, *, seed: int = 0):
        self.train_per_class = check_int("train_per_class", train_per_class, minimum=1)
        self.test_per_class = check_int("test_per_class", test_per_class, minimum=1)
        self.seed = check_seed("seed", seed)
        self._data: tuple[Images, Images] | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train_per_class={self.train_per_class}, "
            f"test_per_class={self.test_per_class}, seed={self.seed})"
        )

    def check(self) -> None:
        """Nothing to check: the images are made on the spot."""

    def coarse_labels(self) -> Tensor:
        """``[100]``: 20 synthetic superclasses of five classes each, drawn with ``seed``
        (``class_partition(100, num_groups=20, seed=seed)``), shaped like CIFAR-100's."""
        return class_partition(self.num_classes, num_groups=20, seed=self.seed)[0]

    def load(self) -> tuple[Images, Images]:
        if self._data is None:
            g = torch.Generator().manual_seed(self.seed)
            patterns = torch.randint(0, 256, (self.num_classes, 3, 4, 4), generator=g)
            patterns = patterns.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)

            def draw(per_class: int) -> Images:
                labels = torch.arange(self.num_classes).repeat(per_class)
                noise = torch.randint(-64, 65, (len(labels), 3, 32, 32), generator=g)
                images = (patterns[labels] + noise).clamp(0, 255).to(torch.uint8)
                return images, labels

            self._data = draw(self.train_per_class), draw(self.test_per_class)
        return self._data


class Digits(_Loadable):
    """scikit-learn's handwritten digits (``sklearn.datasets.load_digits``): 1,797 grey 8x8
    images of the digits 0 to 9, shipped inside scikit-learn (no download; ``pip install
    "auxtransfer[digits]"`` installs it).

    The train/test split is fixed, seeded and stratified: ``test_per_class`` images of every
    digit are the test set, drawn by ``limit_per_class(labels, test_per_class, seed=seed)``
    from the data's own order, and the rest the training set (with the defaults, 600 test
    images and 1,197 training images, 114 to 123 of each digit). Images are ``[N, 1, 8, 8]``
    uint8, the data's values 0 to 16 scaled to 0 to 255 (``round(v * 255 / 16)``); ``mean``
    and ``std`` are those of the default training set.

    Args:
        test_per_class: Test images of each digit.
        seed: Draws the test images.

    Examples:
        >>> (train_images, train_labels), (test_images, test_labels) = Digits().load()
        >>> tuple(train_images.shape), train_images.dtype, test_labels.bincount().tolist()
        ((1197, 1, 8, 8), torch.uint8, [60, 60, 60, 60, 60, 60, 60, 60, 60, 60])
    """

    mean = DIGITS_MEAN
    std = DIGITS_STD
    num_classes = 10

    def __init__(self, test_per_class: int = 60, *, seed: int = 0) -> None:
        # The smallest digit (8) has 174 images: at least one stays for training.
        self.test_per_class = check_int("test_per_class", test_per_class, minimum=1)
        if self.test_per_class > 173:
            raise ValueError(
                f"Expected `test_per_class` to be at most 173 (the digit 8 has 174 images, one "
                f"of which stays for training), but got {test_per_class}."
            )
        self.seed = check_seed("seed", seed)
        self._data: tuple[Images, Images] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(test_per_class={self.test_per_class}, seed={self.seed})"

    @property
    def train_per_class(self) -> int:
        """Training images of the digit with the fewest (114 with the defaults)."""
        return int(self.load()[0][1].bincount().min())

    def check(self) -> None:
        """Raise ``ImportError`` when scikit-learn is not installed."""
        try:
            import sklearn.datasets  # noqa: F401
        except ImportError:
            raise ImportError(
                "scikit-learn is not installed, whose wheel holds the digits: pip install "
                "'auxtransfer[digits]' (or scikit-learn)"
            ) from None

    def load(self) -> tuple[Images, Images]:
        if self._data is None:
            self.check()
            from sklearn.datasets import load_digits

            digits = load_digits()
            labels = torch.as_tensor(digits.target, dtype=torch.long)
            pixels = torch.as_tensor(digits.images, dtype=torch.float64)
            images = (pixels * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
            test = torch.zeros(len(labels), dtype=torch.bool)
            test[limit_per_class(labels, self.test_per_class, seed=self.seed)] = True
            self._data = (images[~test], labels[~test]), (images[test], labels[test])
        return self._data


def run_data(
    data: tuple[Images, Images],
    *,
    num_classes: int,
    side: str = "all",
    split_seed: int | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[Images, Images]:
    """A run's training and test sets, cut out of a whole data set.

    Args:
        data: The whole training and test sets (``DataSource.load()``).
        num_classes: The number of classes of the whole data set.
        side: ``"A"`` or ``"B"`` (a side of the class split), or ``"all"``.
        split_seed: The seed of ``split_classes``; required for a side.
        per_class: Keep this many training images of every class (``None``: all).
        seed: Draws the kept images (``limit_per_class``).

    Returns:
        ``(train, test)``, each ``(images, labels)`` with labels ``0 .. k-1``.

    Examples:
        >>> whole = SyntheticCifar100(train_per_class=3, test_per_class=1).load()
        >>> train, test = run_data(whole, num_classes=100, side="B", split_seed=0, per_class=2)
        >>> len(train[1]), len(test[1]), int(train[1].max())
        (100, 50, 49)
    """
    train, test = data
    if side == "all" and split_seed is not None:
        raise ValueError(
            f"Expected `split_seed` to be None for side='all' (every class), but got {split_seed}."
        )
    if side != "all":
        kept = side_classes(num_classes, side, split_seed)
        train, test = (_subset(images, labels, kept) for images, labels in (train, test))
    if per_class is not None:
        chosen = limit_per_class(train[1], per_class, seed=seed)
        train = train[0][chosen], train[1][chosen]
    return train, test


def run_data_for(
    config: Any, source: DataSource
) -> tuple[Images, Images] | tuple[Dataset[Any], Dataset[Any]]:
    """``run_data`` with the fields of a ``RunConfig`` (``side``, ``split_seed``,
    ``per_class``, ``seed``) and the data of ``source``; a ``DatasetSource``'s
    ``run_datasets``."""
    if isinstance(source, DatasetSource):
        return source.run_datasets(config)
    return run_data(
        source.load(),
        num_classes=source.num_classes,
        side=config.side,
        split_seed=config.split_seed,
        per_class=config.per_class,
        seed=config.seed,
    )


def _subset(images: Tensor, labels: Tensor, classes: list[int]) -> Images:
    subset = subset_classes(labels, classes)
    return images[subset.indices], subset.labels


def run_partition_for(config: Any, source: DataSource) -> Tensor | None:
    """The partition of a run that learns the data's coarse labels, else None.

    For a ``RunConfig`` with ``binary_weight > 0`` and ``aux_labels="coarse"``: the coarse
    label of every class of the run (``side`` of ``split_seed``'s split, in the order
    ``run_data`` relabels them), the groups that side holds renumbered
    ([`group_partition`][auxtransfer.group_partition]), as ``train_run(partition=...)``
    takes it. Runs that draw their own partition, or have no auxiliary head, get None.

    Raises:
        ValueError: The source has no coarse labels, or not ``config.num_groups`` of them.

    Examples:
        >>> from auxtransfer.experiments import RunConfig
        >>> config = RunConfig("cifar_densenet_bc_100", num_classes=50, epochs=1,
        ...     binary_weight=0.4, aux_labels="coarse", num_groups=20, side="A", split_seed=0)
        >>> run_partition_for(config, SyntheticCifar100()).shape
        torch.Size([1, 50])
    """
    if config.binary_weight <= 0 or config.aux_labels != "coarse":
        return None
    coarse_labels = getattr(source, "coarse_labels", None)
    if coarse_labels is None:
        raise ValueError(
            f"Expected a data source with coarse labels for aux_labels='coarse' (such as "
            f"CIFAR-100's superclasses), but {source!r} has none."
        )
    coarse = torch.as_tensor(coarse_labels())
    groups = int(coarse.max()) + 1
    if groups != config.num_groups:
        raise ValueError(
            f"Expected `num_groups` to be the {groups} coarse classes of {source!r}, but got "
            f"{config.num_groups}."
        )
    classes = side_classes(source.num_classes, config.side, config.split_seed)
    return group_partition(coarse, num_groups=groups, classes=classes)
