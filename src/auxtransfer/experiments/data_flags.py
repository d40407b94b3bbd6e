"""The data flags of the example scripts: added to their parser, read into a data source.

``CifarData`` (CIFAR-100 under ``--data-root``, synthetic images with ``--smoke``),
``ImageNetData`` (ImageNet-100 from an ImageFolder tree, a generated folder with
``--smoke``) and ``DigitsData`` (scikit-learn's digits, ``--smoke`` too: no flags);
``FlagError`` is a flag's value that is wrong, named by ``parser.error``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .imagenet import ImageNet100, write_smoke_folder
from .sources import Cifar100, DataSource, Digits, SyntheticCifar100

__all__ = ["CifarData", "DataFlags", "DigitsData", "FlagError", "ImageNetData", "given"]


class FlagError(ValueError):
    """A flag's value is wrong: ``parser.error`` names ``flag`` with the message."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(message)
        self.flag = flag


def given(args: argparse.Namespace, name: str) -> bool:
    """Whether the flag of ``name`` was given: the flags whose default depends on
    ``--smoke`` or the experiment have none (``argparse.SUPPRESS``) and are then absent."""
    return getattr(args, name, None) is not None


class DataFlags:
    """The data flags of an example: added to its parser, read into a data source.

    Attributes:
        flags: Run options and data-record keys by the flag that sets them, for messages.
    """

    flags: Mapping[str, str] = MappingProxyType({})

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the data flags."""
        raise NotImplementedError

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """Changes to the plan's ``RunOptions`` (e.g. ``num_workers``)."""
        return {}

    def check(self, args: argparse.Namespace) -> None:
        """Raise ``FlagError`` for a flag value that is wrong whatever the files hold."""

    def source(self, args: argparse.Namespace, scratch: contextlib.ExitStack) -> DataSource:
        """The data source: the real data, or with ``--smoke`` synthetic data (made in a
        temporary folder entered on ``scratch`` where it needs files). Not yet checked."""
        raise NotImplementedError

    def record(self, source: DataSource) -> dict[str, Any] | None:
        """What the runs' configs do not say about their data, kept in ``<out>/data.json``
        (None: nothing)."""
        return None


class CifarData(DataFlags):
    """CIFAR-100 under ``--data-root`` (``--download``); ``--smoke``: synthetic images."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-root", default="data", help="folder holding cifar-100-python")
        parser.add_argument(
            "--download", action="store_true", help="download CIFAR-100 when it is missing"
        )

    def source(self, args: argparse.Namespace, scratch: contextlib.ExitStack) -> DataSource:
        if args.smoke:
            return SyntheticCifar100()
        return Cifar100(args.data_root, download=args.download)


class DigitsData(DataFlags):
    """scikit-learn's digits (``Digits``), with and without ``--smoke``: they ship inside
    scikit-learn, and are small enough to smoke on. No flags."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """None: the data is fixed."""

    def source(self, args: argparse.Namespace, scratch: contextlib.ExitStack) -> DataSource:
        return Digits()


class ImageNetData(DataFlags):
    """ImageNet-100 under ``--data-root`` (``train/``, ``val/``), the classes drawn with
    ``--class-seed``, read by ``--workers`` processes; ``--smoke``: a generated folder.

    Args:
        crop_size: The network's input side (``--crop-size``'s default).
        resize_size: Evaluation: the shorter side before the centre crop.
        workers: ``DataLoader`` workers per process.
        smoke_crop_size: ``--smoke``'s input side, unless ``--crop-size`` is given.
        smoke_resize_size: ``--smoke``'s resize, unless ``--resize-size`` is given.
    """

    flags = MappingProxyType(
        {
            "classes": "--data-root/--class-seed",
            "class_seed": "--class-seed",
            "crop_size": "--crop-size",
            "resize_size": "--resize-size",
            "num_workers": "--workers",
        }
    )

    def __init__(
        self,
        *,
        crop_size: int = 224,
        resize_size: int = 256,
        workers: int = 8,
        smoke_crop_size: int = 32,
        smoke_resize_size: int = 36,
    ) -> None:
        self.crop_size, self.resize_size, self.workers = crop_size, resize_size, workers
        self.smoke_crop_size, self.smoke_resize_size = smoke_crop_size, smoke_resize_size

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--data-root", default="data/imagenet", help="ImageNet folder holding train/ and val/, one subfolder per class in each (torchvision's ImageFolder layout)")  # fmt: skip
        parser.add_argument("--class-seed", type=int, default=0, help="draws the 100 classes from the class folders of train/")  # fmt: skip
        parser.add_argument("--workers", type=int, default=argparse.SUPPRESS, help=f"DataLoader worker processes per training process, part of each run's settings (--smoke: 0) (default: {self.workers})")  # fmt: skip
        parser.add_argument("--crop-size", type=int, default=argparse.SUPPRESS, help=f"input side: RandomResizedCrop for training, CenterCrop for testing (--smoke: {self.smoke_crop_size}) (default: {self.crop_size})")  # fmt: skip
        parser.add_argument("--resize-size", type=int, default=argparse.SUPPRESS, help=f"testing: Resize of the shorter side before the centre crop (--smoke: {self.smoke_resize_size}) (default: {self.resize_size})")  # fmt: skip

    def _sizes(self, args: argparse.Namespace) -> tuple[int, int]:
        crop = self.smoke_crop_size if args.smoke else self.crop_size
        resize = self.smoke_resize_size if args.smoke else self.resize_size
        return (
            args.crop_size if given(args, "crop_size") else crop,
            args.resize_size if given(args, "resize_size") else resize,
        )

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"num_workers": args.workers if given(args, "workers") else (0 if args.smoke else self.workers)}  # fmt: skip

    def check(self, args: argparse.Namespace) -> None:
        crop, resize = self._sizes(args)
        if crop < 1:
            raise FlagError("--crop-size", f"Expected a side of at least 1 pixel, but got {crop}.")
        if resize < crop:
            raise FlagError(
                "--resize-size",
                f"Expected at least the crop size ({crop}) to centre-crop from, but got {resize}.",
            )
        if args.class_seed < 0 or args.class_seed >= 2**64:
            raise FlagError(
                "--class-seed", f"Expected a seed in [0, 2**64), but got {args.class_seed}."
            )

    def source(self, args: argparse.Namespace, scratch: contextlib.ExitStack) -> DataSource:
        crop, resize = self._sizes(args)
        root = args.data_root
        if args.smoke:
            folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix="auxtransfer-smoke-"))
            root = write_smoke_folder(folder)
        return ImageNet100(root, class_seed=args.class_seed, crop_size=crop, resize_size=resize)

    def record(self, source: DataSource) -> dict[str, Any] | None:
        return source.record() if isinstance(source, ImageNet100) else None
