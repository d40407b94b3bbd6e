"""auxtransfer: auxiliary random-partition labels for transfer learning.

Pre-train with a binary head beside the classifier that learns a random balanced two-way
partition of the classes, then transfer the features.

This package is the library: the names below work on any backbone and import nothing of
the paper's reference application (``auxtransfer.experiments``, ``auxtransfer.report``)
or of the Lightning integration (``auxtransfer.lightning``).
"""

from .classifier import find_classifier, reset_classifier
from .data import binary_relabel
from .freezing import FreezeSummary, ResetSummary, freeze_until, reset_after, unfreeze
from .heads import AuxOutput, RandomPartitionHead
from .layers import LayerMap, layer_groups, layer_map, layer_names
from .losses import CombinedLoss, combined_loss
from .optim import layerwise_lr
from .partition import class_partition, group_partition

__version__ = "0.1.0.dev0"

__all__ = [
    "AuxOutput",
    "CombinedLoss",
    "FreezeSummary",
    "LayerMap",
    "RandomPartitionHead",
    "ResetSummary",
    "__version__",
    "binary_relabel",
    "class_partition",
    "combined_loss",
    "find_classifier",
    "freeze_until",
    "group_partition",
    "layer_groups",
    "layer_map",
    "layer_names",
    "layerwise_lr",
    "reset_after",
    "reset_classifier",
    "unfreeze",
]
