"""The paper's DenseNet-BC experiments on CIFAR-100, as plans of runs.

An experiment expands to runs with stable ids (split0/binary/pretrain,
split0/binary/freeze-2.9, ...), each a run directory under --out. A plain call runs them
all; calling again skips finished runs and resumes an unfinished one. --list prints the
ids in dependency order, --run executes some of them (one per SLURM array task, say).

  python examples/cifar100_densenet.py --smoke --out runs/smoke          # every step, tiny
  python examples/cifar100_densenet.py --data-root data --download --out runs/paired
  python examples/cifar100_densenet.py --experiment freeze --out runs/freeze --list
  python examples/cifar100_densenet.py --experiment aux-labels --aux coarse --out runs/paired
  torchrun --nproc_per_node=4 examples/cifar100_densenet.py --out runs/paired   # DDP

aux-labels goes beyond the paper: beside the baseline, the binary head, a random 20-way
partition and CIFAR-100's 20 superclasses, each fine-tuned on B as in paired (with the
same --out, its baseline and binary runs are paired's, so --aux coarse adds two runs per
split). Every schedule, weight and count defaults to the paper's value; --smoke makes a
tiny DenseNet, synthetic CIFAR-shaped data and 2-epoch runs unless a flag says otherwise.
"""

import sys

from auxtransfer.experiments import protocols
from auxtransfer.experiments.cli import CifarData, Example

EXAMPLE = Example(
    protocols.DENSENET_CIFAR,
    CifarData(),
    __doc__,
    smoke="tiny DenseNet (depth 10, growth rate 4), synthetic CIFAR-shaped data",
    figures={
        "paired": "Fig. 5",
        "freeze": "Figs. 2, 7, 9",
        "reset": "Figs. 3, 8",
        "weight-sweep": "Fig. 4",
        "heads": "Fig. 10",
        "long-tail": "Table 1, Fig. 14",
    },
)

if __name__ == "__main__":
    sys.exit(EXAMPLE.main())
