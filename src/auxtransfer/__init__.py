"""auxtransfer: auxiliary random-partition labels for transfer learning.

Pre-train with a binary head beside the classifier that learns a random balanced two-way
partition of the classes, then transfer the features.
"""

from .data import BinaryRelabeled, binary_relabel
from .heads import AuxOutput, RandomPartitionHead, find_classifier
from .losses import CombinedLoss, LossTerms, combined_loss, combined_loss_terms
from .partition import class_partition

__version__ = "0.1.0.dev0"

__all__ = [
    "AuxOutput",
    "BinaryRelabeled",
    "CombinedLoss",
    "LossTerms",
    "RandomPartitionHead",
    "__version__",
    "binary_relabel",
    "class_partition",
    "combined_loss",
    "combined_loss_terms",
    "find_classifier",
]
