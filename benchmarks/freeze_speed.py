"""Train-step time of DenseNet-BC-100 frozen through block 2, over a full fine-tune step.

Autograd stops at the first parameter that needs a gradient, so after
``freeze_until(model, "2")`` no backward runs through blocks 1 and 2 (and their
BatchNorm layers run in eval mode). The goal is a ratio of at most 0.55. The two models are
timed interleaved in one process (full, frozen, full, ...); the ratio of medians is printed.

    python benchmarks/freeze_speed.py                  # CPU, the CIFAR DenseNet-BC-100
    python benchmarks/freeze_speed.py --device cuda --amp
    python benchmarks/freeze_speed.py --stem imagenet  # torchvision's DenseNet class
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torchvision

import auxtransfer.models  # noqa: F401  (registers cifar_densenet_bc_100 with timm)
from auxtransfer import freeze_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preflight import checked_device


def densenet_bc_100(num_classes: int, stem: str) -> torch.nn.Module:
    """DenseNet-BC, L=100, k=12: 3 blocks of 16 bottleneck layers, compression 0.5."""
    if stem == "cifar":
        return timm.create_model("cifar_densenet_bc_100", num_classes=num_classes)
    # torchvision's DenseNet keeps its ImageNet stem, which shrinks 32 px inputs to 8 px.
    return torchvision.models.DenseNet(
        growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=num_classes
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--until", default="2", help="freeze through this address")
    parser.add_argument(
        "--stem",
        choices=["cifar", "imagenet"],
        default="cifar",
        help="the CIFAR model, or torchvision's DenseNet",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15, help="timed steps of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args()
    device = checked_device(parser, args.device)
    torch.manual_seed(0)
    full = densenet_bc_100(50, args.stem).to(device)
    frozen = copy.deepcopy(full)
    summary = freeze_until(frozen, args.until)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 50, (args.batch,), device=device)

    def make_step(model: torch.nn.Module):
        opt = torch.optim.SGD(
            [p for p in model.parameters() if p.requires_grad],
            lr=0.01,
            momentum=0.9,
            weight_decay=1e-4,
        )
        model.train()

        def step() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        return step

    steps = [make_step(full), make_step(frozen)]
    for step in steps:  # warm-up
        for _ in range(3):
            step()
    times: list[list[float]] = [[], []]
    for _ in range(args.steps):
        for i, step in enumerate(steps):
            times[i].append(step())
    full_ms, frozen_ms = (1000 * statistics.median(t) for t in times)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(summary)
    print(
        f"DenseNet-BC-100 ({args.stem} stem) {args.size}px batch {args.batch} on {name}{' bf16' if args.amp else ''}: "
        f"full fine-tune {full_ms:.1f} ms/step, frozen through {args.until!r} {frozen_ms:.1f} ms/step, "
        f"ratio {frozen_ms / full_ms:.3f} (goal <= 0.55)"
    )


if __name__ == "__main__":
    main()
