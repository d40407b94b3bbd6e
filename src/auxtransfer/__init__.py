"""auxtransfer: auxiliary random-partition labels for transfer learning.

Pre-train with a binary head beside the classifier that learns a random balanced two-way
partition of the classes, then transfer the features.
"""

from .classifier import find_classifier, reset_classifier
from .data import (
    BinaryRelabeled,
    ClassSubset,
    binary_relabel,
    limit_per_class,
    split_classes,
    subset_classes,
)
from .freezing import FreezeSummary, ResetSummary, freeze_until, reset_after, unfreeze
from .heads import AuxOutput, RandomPartitionHead
from .layers import LayerGroup, LayerMap, layer_groups, layer_map, layer_names
from .losses import CombinedLoss, LossTerms, combined_loss, combined_loss_terms
from .optim import layerwise_lr
from .partition import class_partition, group_partition

__version__ = "0.1.0.dev0"

__all__ = [
    "AuxOutput",
    "BinaryRelabeled",
    "ClassSubset",
    "CombinedLoss",
    "FreezeSummary",
    "LayerGroup",
    "LayerMap",
    "LossTerms",
    "RandomPartitionHead",
    "ResetSummary",
    "__version__",
    "binary_relabel",
    "class_partition",
    "combined_loss",
    "combined_loss_terms",
    "find_classifier",
    "freeze_until",
    "group_partition",
    "layer_groups",
    "layer_map",
    "layer_names",
    "layerwise_lr",
    "limit_per_class",
    "reset_after",
    "reset_classifier",
    "split_classes",
    "subset_classes",
    "unfreeze",
]
