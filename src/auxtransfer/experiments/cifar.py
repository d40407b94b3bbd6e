"""CIFAR-100 read once into uint8 tensors."""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["cifar100_superclasses", "load_cifar100"]

_FOLDER = "cifar-100-python"


def load_cifar100(
    root: str | os.PathLike[str], *, train: bool, download: bool = False
) -> tuple[Tensor, Tensor]:
    """CIFAR-100's training or test split as ``(images, labels)`` tensors.

    Reads ``root/cifar-100-python/{train,test}`` (the folder of the Python version of the
    data set) with an unpickler that accepts plain containers and numpy arrays only. When
    the folder is missing and ``download`` is true, torchvision downloads and unpacks it
    into a temporary folder that is moved into place only once complete; a failed download
    leaves nothing behind.

    Args:
        root: Folder that holds (or will hold) ``cifar-100-python``.
        train: The 50,000 training images, else the 10,000 test images.
        download: Download the data set when it is not under ``root``.

    Returns:
        ``images`` ``[N, 3, 32, 32]`` uint8 and ``labels`` ``[N]`` long (the 100 fine classes).

    Raises:
        FileNotFoundError: when the data is not under ``root`` and was not (or could not be)
            downloaded; the message says both ways to provide it.
        ValueError: when a file is not a CIFAR-100 batch.
    """
    path, entry = _read(root, train=train, download=download)
    try:
        data = np.asarray(entry["data"])
        labels = np.asarray(entry["fine_labels"])
    except (
        pickle.UnpicklingError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as error:
        raise ValueError(
            f"Expected {path} to be a CIFAR-100 batch with 'data' and 'fine_labels', but reading "
            f"it failed: {error}"
        ) from None
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels.shape != (len(data),)
    ):
        raise ValueError(
            f"Expected {path} to hold [N, 3072] uint8 images and N labels, but got {data.dtype} "
            f"{data.shape} and {labels.shape}."
        )
    if len(labels) and (labels.min() < 0 or labels.max() > 99):
        raise ValueError(
            f"Expected the labels in {path} to be in [0, 100), but they span [{labels.min()}, {labels.max()}]."
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def cifar100_superclasses(root: str | os.PathLike[str], *, download: bool = False) -> Tensor:
    """CIFAR-100's 20 superclasses: the coarse class of each of the 100 fine classes.

    Read from the training file's own ``coarse_labels`` beside its ``fine_labels``, and
    checked: every fine class occurs, always with one coarse class. For a side of an A/B
    split, ``group_partition(superclasses, classes=a_classes)`` gives the partition table
    of the superclasses that side holds (renumbered; 50 classes rarely cover all 20 five
    each).

    Args:
        root: Folder that holds (or will hold) ``cifar-100-python``.
        download: Download the data set when it is not under ``root``.

    Returns:
        ``[100]`` long: ``superclasses[c]`` is the coarse class (0 to 19) of fine class ``c``.
    """
    path, entry = _read(root, train=True, download=download)
    try:
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"Expected {path} to be a CIFAR-100 batch with 'fine_labels' and 'coarse_labels', "
            f"but reading them failed: {error!r}"
        ) from None
    if fine.shape != coarse.shape or fine.ndim != 1:
        raise ValueError(
            f"Expected {path} to hold one coarse label per fine label, but got {coarse.shape} "
            f"coarse and {fine.shape} fine labels."
        )
    superclasses = []
    for c in range(100):
        found = np.unique(coarse[fine == c])
        if len(found) != 1 or not 0 <= found[0] < 20:
            raise ValueError(
                f"Expected fine class {c} in {path} to have one coarse class in [0, 20), but it "
                f"has {found.tolist()}."
            )
        superclasses.append(int(found[0]))
    return torch.tensor(superclasses, dtype=torch.long)


def _read(root: str | os.PathLike[str], *, train: bool, download: bool) -> tuple[Path, Any]:
    """The path of a split's file and its unpickled entry (downloading it if asked)."""
    root = Path(root)
    folder = root / _FOLDER
    if not (folder / "train").is_file() and download:
        _download(root)
    path = folder / ("train" if train else "test")
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-100 not found: expected the file {path}. Either pass --download "
            f"(download=True in Python) on a machine with a network, or copy the unpacked 'cifar-100-python' "
            f"folder of the Python version of CIFAR-100 into {root}."
        )
    try:
        with path.open("rb") as handle:
            return path, _CifarUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f"Expected {path} to be a CIFAR-100 batch with 'data' and 'fine_labels', but reading "
            f"it failed: {error}"
        ) from None


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a crafted file cannot run code."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _download(root: Path) -> None:
    import torchvision

    # Into a temporary folder first, moved into place only once complete: a failed or
    # interrupted download leaves nothing under `root`.
    with tempfile.TemporaryDirectory(prefix="auxtransfer-cifar100-") as scratch:
        try:
            torchvision.datasets.CIFAR100(scratch, train=True, download=True)
        except Exception as error:  # no network, a refused or truncated download, ...
            raise FileNotFoundError(
                f"CIFAR-100 is not under {root} and downloading it failed ({type(error).__name__}: "
                f"{error}). Copy the unpacked 'cifar-100-python' folder into {root} instead."
            ) from error
        root.mkdir(parents=True, exist_ok=True)
        if not (root / _FOLDER).exists():
            shutil.move(str(Path(scratch) / _FOLDER), str(root / _FOLDER))
