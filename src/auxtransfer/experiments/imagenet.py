"""ImageNet-100: 100 classes drawn by seed from an ImageNet folder, as map-style datasets.

The root holds ``train/`` and ``val/``, each with one folder per class (the layout
torchvision's ``ImageFolder`` reads, with the validation images sorted into class folders).
``ImageNet100`` draws 100 of the class folders with ``class_seed`` (``draw_classes``),
numbers them ``0 .. 99`` in name order, and gives every run of a plan its side of them as a
``DatasetSource``: ``side="A"`` or ``"B"`` of ``split_classes(100, seed=split_seed)``
relabelled ``0 .. 49``, ``per_class`` training images per class drawn with the run's
``seed``, as for CIFAR-100.
Images are read from their files by a ``DataLoader`` with the standard ImageNet
augmentation (``imagenet_transforms``). ``write_smoke_folder`` writes a tiny folder of the
same layout, of generated images, for smoke runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._checks import check_int, check_seed
from .._rng import SplitMix64
from .splits import limit_per_class, side_classes, subset_classes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFiles",
    "ImageNet100",
    "draw_classes",
    "imagenet_transforms",
    "write_smoke_folder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# draw_classes has a SplitMix64 stream of its own (split_classes and limit_per_class have
# theirs), so the same seed draws unrelated classes and splits.
_DRAW_STREAM = 0xD4A3_C1A5_0003

#: ``(image file, class index)`` pairs.
Samples = list[tuple[str, int]]


def draw_classes(names: Sequence[str], count: int, *, seed: int) -> list[str]:
    """``count`` of ``names`` drawn at random with ``seed``, in name order.

    Algorithm (fixed, like ``split_classes``): the names are sorted, shuffled by a
    Fisher-Yates shuffle driven by SplitMix64 seeded with ``(seed + 0xD4A3C1A50003) mod
    2**64``, and the first ``count`` kept. The draw depends on the set of names only.

    Examples:
        >>> names = [f"n{i:08d}" for i in range(1000)]
        >>> drawn = draw_classes(names, 100, seed=0)
        >>> len(drawn), drawn == sorted(drawn), drawn == draw_classes(names[::-1], 100, seed=0)
        (100, True, True)
    """
    ordered = sorted(set(names))
    if len(ordered) != len(names):
        raise ValueError(
            f"Expected `names` to be distinct class names, but got {len(names) - len(ordered)} repeats."
        )
    count = check_int("count", count, minimum=1)
    if count > len(ordered):
        raise ValueError(
            f"Expected `count` to be at most the {len(ordered)} classes to draw from, but got {count}."
        )
    order = SplitMix64((check_seed("seed", seed) + _DRAW_STREAM) % 2**64).permutation(len(ordered))
    return sorted(ordered[i] for i in order[:count])


def imagenet_transforms(
    *,
    train: bool,
    crop_size: int = 224,
    resize_size: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Any], Tensor]:
    """The standard ImageNet augmentation, as torchvision's reference scripts apply it.

    Training: ``RandomResizedCrop(crop_size)``, ``RandomHorizontalFlip()``, ``ToTensor()``,
    ``Normalize(mean, std)``; evaluation: ``Resize(resize_size)``, ``CenterCrop(crop_size)``,
    ``ToTensor()``, ``Normalize(mean, std)``.

    Args:
        train: The training augmentation, else the evaluation one.
        crop_size: Side of the square the network sees.
        resize_size: Evaluation: the shorter side before the centre crop.
        mean: Per-channel mean, in 0-1 pixel units.
        std: Per-channel standard deviation, in 0-1 pixel units.
    """
    from torchvision import transforms

    crop_size = check_int("crop_size", crop_size, minimum=1)
    resize_size = check_int("resize_size", resize_size, minimum=1)
    if resize_size < crop_size:
        raise ValueError(
            f"Expected `resize_size` to be at least `crop_size` ({crop_size}), but got {resize_size}."
        )
    if train:
        steps = [transforms.RandomResizedCrop(crop_size), transforms.RandomHorizontalFlip()]
    else:
        steps = [transforms.Resize(resize_size), transforms.CenterCrop(crop_size)]
    normalize = transforms.Normalize(list(mean), list(std))
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


class ImageFiles(Dataset[tuple[Tensor, int]]):
    """Images read from their files (RGB, PIL) and transformed: ``(image, label)``.

    Args:
        samples: ``(path, class index)`` pairs.
        transform: Makes the image tensor from the PIL image.

    Attributes:
        targets: The class index of every sample, as ``ImageFolder`` has them.
    """

    def __init__(self, samples: Samples, transform: Callable[[Any], Tensor]) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        return self.transform(default_loader(path)), label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.samples)} images)"


class ImageNet100:
    """100 classes of an ImageNet folder (``root/train``, ``root/val``), drawn by seed.

    ``check()`` lists the class folders, draws the classes and lists their images (once;
    ``load()`` returns them), raising before anything is written when the folder does not
    fit. Each run then gets its datasets from ``run_datasets(config)``.

    Args:
        root: The folder holding ``train/`` and ``val/``.
        class_seed: Draws the 100 classes (``draw_classes``).
        crop_size: Side of the network's input (``imagenet_transforms``).
        resize_size: Evaluation: the shorter side before the centre crop.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     source = ImageNet100(write_smoke_folder(folder, classes=101), crop_size=32,
        ...                          resize_size=36)
        ...     source.check()
        ...     len(source.classes), source.train_per_class
        (100, 3)
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes = 100

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        class_seed: int = 0,
        crop_size: int = 224,
        resize_size: int = 256,
    ) -> None:
        self.root = Path(root)
        self.class_seed = check_seed("class_seed", class_seed)
        self.crop_size = check_int("crop_size", crop_size, minimum=1)
        self.resize_size = check_int("resize_size", resize_size, minimum=1)
        if self.resize_size < self.crop_size:
            raise ValueError(
                f"Expected `resize_size` to be at least `crop_size` ({crop_size}), but got {resize_size}."
            )
        self._scan: tuple[list[str], tuple[Samples, Samples]] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, class_seed={self.class_seed})"

    @property
    def classes(self) -> list[str]:
        """The drawn class folders, in name order: class ``i`` is ``classes[i]``."""
        return list(self._scanned()[0])

    @property
    def train_per_class(self) -> int:
        """The training images of the drawn class with the fewest."""
        train, _ = self.load()
        counts = torch.bincount(torch.tensor([label for _, label in train]), minlength=100)
        return int(counts.min())

    def check(self) -> None:
        """Raise unless the folder holds ``train/`` and ``val/`` with at least 100 class
        folders, and images of every drawn class in both.

        Raises:
            FileNotFoundError: ``root``, ``train/`` or ``val/`` is missing.
            ValueError: Fewer than 100 class folders, or a drawn class without images.
        """
        self._scanned()

    def load(self) -> tuple[Samples, Samples]:
        """The training and validation images of the drawn classes, ``(path, class)``."""
        return self._scanned()[1]

    def _scanned(self) -> tuple[list[str], tuple[Samples, Samples]]:
        """The drawn classes and their images, listed once."""
        if self._scan is None:
            folders = {part: self.root / part for part in ("train", "val")}
            for folder in folders.values():
                if not folder.is_dir():
                    raise FileNotFoundError(
                        f"Expected an ImageNet folder with train/ and val/, one subfolder per "
                        f"class in each, but {folder} is not a folder."
                    )
            found = _class_folders(folders["train"])
            if len(found) < self.num_classes:
                raise ValueError(
                    f"Expected at least {self.num_classes} class folders in {folders['train']} "
                    f"to draw {self.num_classes} from, but found {len(found)}."
                )
            classes = draw_classes(found, self.num_classes, seed=self.class_seed)
            in_val = set(_class_folders(folders["val"]))
            missing = [name for name in classes if name not in in_val]
            if missing:
                raise ValueError(
                    f"Expected a folder in {folders['val']} for every drawn class of train/ (the "
                    f"validation images sorted into class folders), but {len(missing)} are "
                    f"missing: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}."
                )
            train, val = (_images(folders[part], classes) for part in ("train", "val"))
            self._scan = classes, (train, val)
        return self._scan

    def record(self) -> dict[str, Any]:
        """What the runs' configs do not say about their data: the drawn classes, the seed
        that drew them, and the image sizes."""
        return {
            "classes": self.classes,
            "class_seed": self.class_seed,
            "crop_size": self.crop_size,
            "resize_size": self.resize_size,
        }

    def run_datasets(self, config: Any) -> tuple[ImageFiles, ImageFiles]:
        """A run's training and validation sets: its ``side`` of the drawn classes
        relabelled ``0 .. 49`` (``"all"``: every class), ``per_class`` training images of
        each drawn with its ``seed``; augmented for training, centre-cropped for testing."""
        train, val = self.load()
        kept = side_classes(self.num_classes, config.side, config.split_seed)
        train, val = _subset(train, kept), _subset(val, kept)
        if config.per_class is not None:
            labels = torch.tensor([label for _, label in train])
            train = [
                train[i]
                for i in limit_per_class(labels, config.per_class, seed=config.seed).tolist()
            ]
        crop, resize = self.crop_size, self.resize_size
        return (
            ImageFiles(train, imagenet_transforms(train=True, crop_size=crop, resize_size=resize)),
            ImageFiles(val, imagenet_transforms(train=False, crop_size=crop, resize_size=resize)),
        )


def write_smoke_folder(
    root: str | os.PathLike[str],
    *,
    classes: int = 102,
    train_per_class: int = 3,
    val_per_class: int = 1,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write a tiny ImageNet-style folder of generated PNG images: ``root/train/<class>/``
    and ``root/val/<class>/``, for smoke runs.

    Every class has its own coarse colour pattern (a random 4x4 image scaled up) under pixel
    noise, so a network can learn something; the images come from a private generator
    seeded with ``seed``. The default of 102 classes leaves two for the draw of 100 to
    leave out.

    Returns:
        ``Path(root)``.
    """
    from PIL import Image

    classes = check_int("classes", classes, minimum=1)
    size = check_int("size", size, minimum=4)
    counts = {
        "train": check_int("train_per_class", train_per_class, minimum=1),
        "val": check_int("val_per_class", val_per_class, minimum=1),
    }
    g = torch.Generator().manual_seed(check_seed("seed", seed))
    patterns = torch.randint(0, 256, (classes, 3, 4, 4), generator=g)
    patterns = torch.nn.functional.interpolate(patterns.float(), size=(size, size))
    root = Path(root)
    for part, count in counts.items():
        for c in range(classes):
            folder = root / part / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            noise = torch.randint(-48, 49, (count, 3, size, size), generator=g)
            images = (patterns[c] + noise).clamp(0, 255).to(torch.uint8)
            for i, image in enumerate(images):
                pixels = image.permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(folder / f"{part}_{c:03d}_{i}.png")
    return root


def _class_folders(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _images(folder: Path, classes: list[str]) -> Samples:
    """The image files of every class folder, class ``i`` being ``classes[i]``; a class
    without images is refused."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    index = {name: i for i, name in enumerate(classes)}
    samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    have = {label for _, label in samples}
    empty = [name for name in classes if index[name] not in have]
    if empty:
        raise ValueError(
            f"Expected images ({', '.join(IMG_EXTENSIONS)}) in every drawn class folder of "
            f"{folder}, but {len(empty)} have none: {', '.join(empty[:5])}"
            f"{', ...' if len(empty) > 5 else ''}."
        )
    return [(path, label) for path, label in samples]


def _subset(samples: Samples, kept: list[int]) -> Samples:
    """The samples of the classes ``kept``, relabelled ``0 .. len(kept) - 1`` as
    ``subset_classes`` does for tensors."""
    if not samples:
        return []
    subset = subset_classes(torch.tensor([label for _, label in samples]), kept)
    return [
        (samples[i][0], int(label))
        for i, label in zip(subset.indices.tolist(), subset.labels.tolist(), strict=True)
    ]
