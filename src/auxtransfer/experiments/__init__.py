"""The paper's experiments on top of the core API: data, device-side batches, training.

Training runs live in ``auxtransfer.experiments.train`` (``RunConfig``, ``train_run``), put
together from ``rundir`` (the run directory), ``checkpoint`` (``last.pt`` and every rank's
random state) and ``loop`` (the epochs). Optional dependencies of this layer (progress bars,
statistics, plots) are imported where they are used.
"""

from .batches import DeviceBatches, crop_flip
from .cifar import load_cifar100

__all__ = ["DeviceBatches", "crop_flip", "load_cifar100"]
