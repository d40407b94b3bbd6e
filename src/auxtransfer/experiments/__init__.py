"""The paper's experiments on top of the core API: data, device-side batches, training.

Training runs live in ``auxtransfer.experiments.train`` (``RunConfig``, ``train_run``), put
together from ``rundir`` (the run directory), ``checkpoint`` (``last.pt``, ``best.pt`` and
every rank's random state), ``loop`` (the epochs), ``graphs`` (the same steps replayed as CUDA graphs) and ``transfer`` (an A run as the start
of a B run: ``load_backbone``, freezing, re-initialising, learning-rate tables). The
paper's experiments are plans of runs: ``protocols`` builds them, ``plan`` executes them
(skipping finished runs, resuming unfinished ones) on data from ``sources``. Optional dependencies of this layer (progress bars,
statistics, plots) are imported where they are used.
"""

from .batches import DeviceBatches, crop_flip
from .cifar import cifar100_superclasses, load_cifar100
from .graphs import GraphTrainer
from .train import RunConfig, train_run
from .transfer import load_backbone

__all__ = [
    "DeviceBatches",
    "GraphTrainer",
    "RunConfig",
    "cifar100_superclasses",
    "crop_flip",
    "load_backbone",
    "load_cifar100",
    "train_run",
]
