"""Projected wall-clock of the paper's CIFAR experiments on one GPU, from measured speeds.

The work of each experiment is counted from its plan (the examples' defaults): every run's
epochs times its training images (50 classes of CIFAR-100 at 500 images, or the
``per_class`` of a long-tail run) and its test images (evaluated every epoch, 5,000). The
time is that work at given training images/s, runs one after the other; an evaluated image
counts as a third of a trained one (a forward pass against forward and backward). Frozen
layers skip their backward, so ``freeze`` and ``reset`` come out a little long.

The speeds come from a ``benchmarks/run.py --device cuda --json FILE`` table (``--rates
FILE``: the graphed images/s of each model, else the eager ones), or are given by hand
(``--densenet`` / ``--wrn`` images/s, e.g. a goal, to see what it would mean).

Under ``torchrun`` the steps are not replayed as CUDA graphs (a graph holds one process's
step; DDP's gradient allreduce happens between processes), so every GPU trains at the eager
speed: ``--eager`` projects with the eager images/s of the table, the speed of each GPU of
a DDP run (the allreduce's own cost is not counted).

    python benchmarks/projection.py --rates runs/benchmarks/run.json
    python benchmarks/projection.py --densenet 950 --wrn 6300    # the speeds before graphs
    python benchmarks/projection.py --rates runs/benchmarks/run.json --eager   # per GPU under torchrun
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from auxtransfer.experiments import protocols

CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 500, 100
EVAL_COST = 1 / 3  # an evaluated image, in trained images
SETUPS = {"DenseNet-BC-100": protocols.DENSENET_CIFAR, "WRN-28-10": protocols.WRN_CIFAR}
RATE_KEYS = {
    "DenseNet-BC-100": ("cifar_densenet_bc_100_b64_graph", "cifar_densenet_bc_100_b64_eager"),
    "WRN-28-10": ("cifar_wrn_28_10_b128_graph", "cifar_wrn_28_10_b128_eager"),
}


def work(experiment: str, setup: protocols.Setup) -> tuple[int, int, float]:
    """Runs, epochs and image-equivalents (trained + a third of evaluated) of a plan."""
    plan = protocols.build(experiment, setup=setup)
    epochs, images = 0, 0.0
    for run in plan:
        config = run.config
        per_class = config.per_class or CIFAR_TRAIN_PER_CLASS
        train = config.num_classes * per_class
        test = config.num_classes * CIFAR_TEST_PER_CLASS
        epochs += config.epochs
        images += config.epochs * (train + EVAL_COST * test)
    return len(plan), epochs, images


def rates_from(path: Path, *, eager: bool = False) -> dict[str, tuple[float, str]]:
    """Each model's training images/s in a run.py table: graphed where measured, else
    eager; with ``eager``, the eager figure only (a GPU of a ``torchrun`` run)."""
    table = json.loads(path.read_text())
    measured = table.get("images_per_s", {})
    rates = {}
    for model, keys in RATE_KEYS.items():
        for key in keys[1:] if eager else keys:
            if key in measured:
                rates[model] = (float(measured[key]), f"{key} on {table.get('device', '?')}")
                break
    return rates


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=Path, help="a benchmarks/run.py --json table")
    parser.add_argument("--densenet", type=float, help="DenseNet-BC-100 training images/s")
    parser.add_argument("--wrn", type=float, help="WRN-28-10 training images/s")
    parser.add_argument(
        "--eager",
        action="store_true",
        help="the table's eager speeds: each GPU of a torchrun run, where the steps are not "
        "replayed as CUDA graphs",
    )
    args = parser.parse_args(argv)
    try:
        rates = rates_from(args.rates, eager=args.eager) if args.rates else {}
    except (OSError, ValueError, AttributeError) as error:
        parser.error(f"argument --rates: expected a benchmarks/run.py --json table, but {error}")
    for model, given in (("DenseNet-BC-100", args.densenet), ("WRN-28-10", args.wrn)):
        if given is not None:
            if given <= 0:
                parser.error(f"argument --{model.split('-')[0].lower()}: expected images/s > 0")
            rates[model] = (given, "given")
    print(f"{'model':<16} {'experiment':<13} {'runs':>5} {'epochs':>7} {'images':>13}  wall-clock")
    for model, setup in SETUPS.items():
        rate = rates.get(model)
        for experiment in setup.offered():
            runs, epochs, images = work(experiment, setup)
            clock = f"{images / rate[0] / 3600:6.1f} h" if rate else "(no speed)"
            print(f"{model:<16} {experiment:<13} {runs:>5} {epochs:>7} {images:>13,.0f}  {clock}")
    for model, (rate, source) in rates.items():
        print(f"{model}: {rate:,.0f} images/s ({source})")
    missing = [model for model in SETUPS if model not in rates]
    if missing:
        where = f"{args.rates} holds none of their images/s" if args.rates else "none given"
        print(f"(no speed) for {', '.join(missing)}: {where} (the CIFAR models are timed on "
              f"CUDA only: benchmarks/run.py --device cuda --json FILE; or --densenet, --wrn)")  # fmt: skip


if __name__ == "__main__":
    main()
