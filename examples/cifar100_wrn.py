"""The paper's WRN-28-10 experiment on CIFAR-100 (Fig. 6), as plans of runs.

WRN-28-10 with dropout 0.3, batch 128 and weight decay 5e-4 (the WRN code the paper built
on), baseline against binary (weight 0.4) on paired A/B splits, with the paper's schedules:
175 epochs on A, 100 on B. The other experiments of the DenseNet example run on the WRN too,
at addresses of its layer map (stem, 1.0 .. 1.3, 2.0 .. 2.3, 3.0 .. 3.3, head: "2.3" is
block 2, layer 3); the paper ran them on DenseNet only. Ids, flags, --list/--run, skip and
resume work as in examples/cifar100_densenet.py.

  python examples/cifar100_wrn.py --smoke --out runs/wrn-smoke          # every step, tiny
  python examples/cifar100_wrn.py --data-root data --download --out runs/wrn-paired
  python examples/cifar100_wrn.py --experiment freeze --out runs/wrn-freeze --list

Every schedule, weight and count defaults to the paper's value; --smoke makes a WRN of
depth 10 and width 1, synthetic CIFAR-shaped data and 2-epoch runs unless a flag says
otherwise.
"""

import sys

from auxtransfer.experiments import protocols
from auxtransfer.experiments.cli import CifarData, Example

EXAMPLE = Example(
    protocols.WRN_CIFAR,
    CifarData(),
    __doc__,
    smoke="tiny WRN (depth 10, width 1), synthetic CIFAR-shaped data",
    figures={"paired": "Fig. 6"},
)

if __name__ == "__main__":
    sys.exit(EXAMPLE.main())
