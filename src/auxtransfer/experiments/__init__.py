"""The paper's reference application, on top of the library: data, plans, training.

The library (``auxtransfer``) is what the package promises; this is one paper's
application of it, like torchvision's ``references/``. Its modules, each one concern:
``settings`` (every setting of a run: one default and one check each), ``splits`` (the
A/B class splits), ``protocols`` (the paper's experiments as data), ``plan`` (a plan of
runs and its checks), ``execute`` (running a plan: skipping finished runs, resuming
unfinished ones; ``processes`` for ``--jobs``), ``sources``, ``cifar`` and ``imagenet``
(data), ``batches`` (device-side batches), ``train`` (one run), ``loop`` and ``graphs``
(the epochs, eagerly or as CUDA graphs), ``checkpoint`` and ``rundir`` (what a run
writes), ``transfer`` (an A run as the start of a B run), ``cli``, ``data_flags`` and
``torchrun`` (the examples' command line) and ``submit`` (SLURM through submitit). Importing this package loads none of them: each is
loaded when it, or one of the names below, is first used, so that reading run folders
(``auxtransfer.report``) or listing a plan does not load the training engine.
"""

from __future__ import annotations

import importlib
from typing import Any

#: The names this package offers, by the module that defines them.
_NAMES = {
    "DeviceBatches": "batches",
    "crop_flip": "batches",
    "cifar100_superclasses": "cifar",
    "load_cifar100": "cifar",
    "GraphTrainer": "graphs",
    "RunConfig": "settings",
    "train_run": "train",
    "load_backbone": "transfer",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])
