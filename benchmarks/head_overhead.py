"""Train-step time of a backbone wrapped in RandomPartitionHead over the plain backbone.

The two are timed interleaved in one process (plain, wrapped, plain, ...) so that load on
a shared machine affects both alike; the ratio of medians is what to read.

    python benchmarks/head_overhead.py --model resnet18 --size 32 --batch 64
    python benchmarks/head_overhead.py --device cuda --amp --compile
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

from auxtransfer import CombinedLoss, RandomPartitionHead

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preflight import checked_device


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = checked_device(parser, args.device)
    torch.manual_seed(0)
    plain = timm.create_model(args.model, num_classes=args.classes).to(device)
    wrapped = RandomPartitionHead(copy.deepcopy(plain)).to(device)
    if device.type == "cuda":
        plain, wrapped = (m.to(memory_format=torch.channels_last) for m in (plain, wrapped))
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    y_b = wrapped.relabel(y)
    loss_fn = CombinedLoss(0.4)

    def plain_step(model):
        return F.cross_entropy(model(x), y)

    def wrapped_step(model):
        return loss_fn(model(x), y, y_b)

    runs = []
    for model, step in ((plain, plain_step), (wrapped, wrapped_step)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        run = torch.compile(model) if args.compile else model

        def train_step(run=run, step=step, opt=opt):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                loss = step(run)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        runs.append(train_step)

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in runs:  # warm-up (and compilation)
        for _ in range(3):
            timed(fn)
    times: list[list[float]] = [[], []]
    for _ in range(args.steps):
        for i, fn in enumerate(runs):
            times[i].append(timed(fn))
    plain_ms, wrapped_ms = (1000 * statistics.median(t) for t in times)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{args.model} {args.size}px batch {args.batch} on {name}"
        f"{' bf16' if args.amp else ''}{' compiled' if args.compile else ''}: "
        f"plain {plain_ms:.2f} ms, with binary head {wrapped_ms:.2f} ms, ratio {wrapped_ms / plain_ms:.3f}"
    )


if __name__ == "__main__":
    main()
