"""The graphed training step against the plain loop, from the same weights and data.

``GraphTrainer`` replays every full batch's step as a CUDA graph. This trains one model
through it and a copy through ``train_one_epoch`` (eager), epoch by epoch with the same
learning rates and the same dropout masks, and compares what each epoch leaves:

- the epoch's mean training loss (relative difference at most ``loss_rtol``) and training
  error (at most ``error_atol`` percentage points apart);
- the weights: ``|w_graph - w_eager| / |w_eager - w_start|`` over all parameters (the
  distance between the two as a fraction of how far training moved them) at most
  ``drift``;
- every BatchNorm's ``num_batches_tracked``, equal;
- the number of replayed steps: every full batch but the very first one (the optimizer's
  own first step), ``epochs x full batches - 1``.

The two sides are not bitwise equal on a GPU (other cuBLAS workspaces, atomics in the
backward of the loss, bf16), so the bounds are loose enough for that and still far below
what a replay of a stale batch (the graph's inputs not refilled) or a stale learning rate
(a drop the replay never sees) does: the CPU tests show both, with the code broken on
purpose. The bounds were chosen, not measured on a GPU; a GPU run records the measured
values beside them.

    PYTHONPATH=src python benchmarks/parity.py --device cuda --json parity.json
    PYTHONPATH=src python benchmarks/parity.py --tiny          # CPU: GraphTrainer eagerly

Needs torch, timm and torchvision only.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer import RandomPartitionHead
from auxtransfer.experiments import DeviceBatches, GraphTrainer
from auxtransfer.experiments.loop import train_one_epoch
from auxtransfer.experiments.rundir import replace_atomically


@dataclass(frozen=True)
class Tolerance:
    """How far the graphed side may be from the eager one after each epoch."""

    loss_rtol: float = 0.02
    error_atol: float = 2.0
    drift: float = 0.05


@dataclass(frozen=True)
class Case:
    """A model at its batch size, the images per epoch and the rate of each epoch."""

    label: str
    model: str
    kwargs: dict[str, Any]
    batch_size: int
    images: int
    rates: tuple[float, ...] = (0.1, 0.01)  # a tenfold drop: a stale rate shows
    binary_weight: float = 0.4


#: The paper's two networks at their batch sizes, two short epochs each.
FULL = (
    Case("DenseNet-BC-100", "cifar_densenet_bc_100", {}, 64, 64 * 12 + 40),
    Case("WRN-28-10 (dropout 0.3)", "cifar_wrn_28_10", {"drop_rate": 0.3}, 128, 128 * 8 + 40),
)
#: A tiny DenseNet-BC with dropout, for the CPU.
TINY = Case(
    "DenseNet-BC L=10 k=4 (tiny)",
    "cifar_densenet_bc_100",
    {"depth": 10, "growth_rate": 4, "drop_rate": 0.2},
    8,
    8 * 5 + 4,
    rates=(0.05, 0.005),
)


def build(case: Case, device: torch.device, channels_last: bool) -> tuple[nn.Module, DeviceBatches]:
    """The model with its binary head, and the training batches, from fixed seeds."""
    torch.manual_seed(0)
    model = timm.create_model(case.model, num_classes=50, **case.kwargs)
    net: nn.Module = RandomPartitionHead(model, seed=3).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (case.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 50, (case.images,), generator=g)
    batches = DeviceBatches(
        images, labels, batch_size=case.batch_size, mean=(0.5,) * 3, std=(0.25,) * 3,
        device=device, train=True, seed=0, partition=net.partition, channels_last=channels_last,
    )  # fmt: skip
    return net, batches


def _optimizer(model: nn.Module, rate: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=rate, momentum=0.9, weight_decay=5e-4)


def _epoch_numbers(sums: torch.Tensor) -> tuple[float, float]:
    loss, wrong, _, _, count, _ = sums.tolist()
    return loss / count, 100.0 * wrong / count


def train_both(
    case: Case,
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
    capture: bool | None = None,
    reference: str = "loop",
) -> dict[str, Any]:
    """Train ``case``'s model through ``GraphTrainer`` and a copy through ``reference``:
    ``"loop"``, the plain loop (``train_one_epoch``, SGD's own step), or ``"steps"``, the
    same trainer's steps run eagerly (``capture=False``); what ``judge`` compares."""
    if reference not in ("loop", "steps"):
        raise ValueError(f"Expected `reference` to be 'loop' or 'steps', but got {reference!r}.")
    graphed, batches = build(case, device, channels_last)
    eager = copy.deepcopy(graphed)
    start = [p.detach().clone() for p in eager.parameters()]
    optimizers = _optimizer(eager, case.rates[0]), _optimizer(graphed, case.rates[0])
    trainer = GraphTrainer(
        graphed, optimizers[1], aux_weight=case.binary_weight, amp=amp, capture=capture
    )
    steps = (
        GraphTrainer(eager, optimizers[0], aux_weight=case.binary_weight, amp=amp, capture=False)
        if reference == "steps"
        else None
    )
    epochs = []
    for epoch, rate in enumerate(case.rates, 1):
        numbers = []
        for side in ("eager", "graphed"):
            optimizer = optimizers[side == "graphed"]
            optimizer.param_groups[0]["lr"] = rate
            torch.manual_seed(100 + epoch)  # the same dropout masks on both sides
            if side == "eager" and steps is not None:
                sums = steps.train_one_epoch(batches, epoch=epoch)
            elif side == "eager":
                sums = train_one_epoch(
                    eager, batches, optimizer, epoch=epoch, aux_weight=case.binary_weight,
                    amp=amp,
                )  # fmt: skip
            else:
                sums = trainer.train_one_epoch(batches, epoch=epoch)
            numbers.append(_epoch_numbers(sums))
        (loss, error), (graph_loss, graph_error) = numbers
        epochs.append(
            {"epoch": epoch, "rate": rate, "eager_loss": loss, "graph_loss": graph_loss,
             "eager_error": error, "graph_error": graph_error}
        )  # fmt: skip
    apart = moved = 0.0
    for p, q, p0 in zip(eager.parameters(), graphed.parameters(), start, strict=True):
        apart += float((q.detach().double() - p.detach().double()).pow(2).sum())
        moved += float((p.detach().double() - p0.double()).pow(2).sum())
    counts = [
        (a.num_batches_tracked.item(), b.num_batches_tracked.item())
        for a, b in zip(eager.modules(), graphed.modules(), strict=True)
        if isinstance(a, nn.modules.batchnorm._BatchNorm) and a.num_batches_tracked is not None
    ]
    full = len(batches) - (len(batches.labels) % case.batch_size != 0)
    return {
        "case": case.label,
        "epochs": epochs,
        "drift": math.sqrt(apart) / math.sqrt(moved) if moved else math.inf,
        "bn_counts_equal": all(a == b for a, b in counts) and bool(counts),
        "bn_layers": len(counts),
        "replays": trainer.replays[0],
        "expected_replays": len(case.rates) * full - 1 if trainer.capture else 0,
    }


def judge(result: dict[str, Any], tolerance: Tolerance = Tolerance()) -> list[str]:
    """What is out of ``tolerance`` (an empty list: the two sides agree)."""
    failures = []
    for row in result["epochs"]:
        at = f"epoch {row['epoch']}"
        loss, graph_loss = row["eager_loss"], row["graph_loss"]
        if not abs(graph_loss - loss) <= tolerance.loss_rtol * abs(loss):
            failures.append(
                f"{at}: training loss {graph_loss:.6g} graphed against {loss:.6g} eager "
                f"(relative difference above {tolerance.loss_rtol:g})"
            )
        error, graph_error = row["eager_error"], row["graph_error"]
        if not abs(graph_error - error) <= tolerance.error_atol:
            failures.append(
                f"{at}: training error {graph_error:.2f} % graphed against {error:.2f} % eager "
                f"(more than {tolerance.error_atol:g} points apart)"
            )
    if not result["drift"] <= tolerance.drift:
        failures.append(
            f"weights {result['drift']:.3g} apart, as a fraction of how far training moved them "
            f"(at most {tolerance.drift:g})"
        )
    if not result["bn_counts_equal"]:
        failures.append("BatchNorm num_batches_tracked differ")
    if result["replays"] != result["expected_replays"]:
        failures.append(
            f"{result['replays']} steps replayed, expected {result['expected_replays']}"
        )
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="parity.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (any device)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("parity.py: no GPU: nothing compared (--device cuda, but torch sees no CUDA device)")
        return 0
    fast = device.type == "cuda"  # bf16 autocast and channels-last, as the GPU runs train
    tolerance = Tolerance()
    results = []
    for case in (TINY,) if args.tiny or not fast else FULL:
        started = time.perf_counter()
        result = train_both(case, device, amp=fast, channels_last=fast)
        result["failures"] = judge(result, tolerance)
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        verdict = "agree" if not result["failures"] else "DIFFER: " + "; ".join(result["failures"])
        last = result["epochs"][-1]
        print(
            f"{case.label}: weights {result['drift']:.2e} apart (of their movement), last "
            f"epoch's loss {last['graph_loss']:.5f} graphed / {last['eager_loss']:.5f} eager, "
            f"{result['replays']} replays: {verdict} ({result['seconds']} s)",
            flush=True,
        )
        if args.json is not None:  # after every case: a killed run keeps the cases done
            data = {"device": str(device), "torch": torch.__version__,
                    "tolerance": asdict(tolerance), "results": results}  # fmt: skip
            text = json.dumps(data, indent=2) + "\n"
            replace_atomically(args.json, lambda tmp, text=text: tmp.write_text(text))
    return 1 if any(r["failures"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
