"""Baseline against binary on scikit-learn's handwritten digits: a real, small experiment in
six to ten minutes on two CPU cores.

scikit-learn ships 1,797 8x8 images of the digits 0 to 9 inside its wheel (no download:
pip install "auxtransfer[digits]"). Each A/B split draws 5 of the 10 digits for A and
leaves the other 5 for B. A small CNN (digits_cnn, 75,114 parameters) pre-trains on A
without and with the binary head (weight 0.4), then each is fine-tuned on B cut to 10
training images per digit, and tested on all of B's 300 test images. Ids, flags,
--list/--run, skip and resume work as in examples/cifar100_densenet.py.

  python examples/digits.py --smoke --out runs/digits-smoke             # every step, tiny
  python examples/digits.py --out runs/digits                           # 80 runs
  python -m auxtransfer.report runs/digits                              # runs/digits/report.md
  python examples/digits.py --experiment aux-labels --out runs/digits-aux

The default experiment is long-tail on 20 splits of one replication each: per split two
pre-trainings of 30 epochs on A (the paper's schedule scaled) and two fine-tunings of 100
epochs on B (the paper's), batch 32, training images shifted by up to one pixel and never
mirrored. paired fine-tunes on all of B instead; aux-labels adds 3 random groups of A's
digits beside binary, on all of B. Runs train with one thread (unless OMP_NUM_THREADS
says otherwise): the network is too small for a second one to help. --smoke trains a CNN
of width 4 for 2 epochs on one split.
"""

import sys

from auxtransfer.experiments import protocols
from auxtransfer.experiments.cli import DigitsData, Example

EXAMPLE = Example(
    protocols.DIGITS,
    DigitsData(),
    __doc__,
    smoke="tiny CNN (width 4), scikit-learn's digits",
    figures={"long-tail": "Table 1 in miniature"},
    one_thread=True,
)

if __name__ == "__main__":
    sys.exit(EXAMPLE.main())
