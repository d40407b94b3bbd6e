"""Train one model on CIFAR-100 (or one side of an A/B class split) into a run directory.

    python examples/train_cifar.py --data-root data --download --run-dir runs/densenet-a \\
        --model cifar_densenet_bc_100 --classes A --split-seed 0 --binary-weight 0.4
    torchrun --nproc_per_node=4 examples/train_cifar.py ...     # the same, with DDP
    python examples/train_cifar.py --synthetic 256 --epochs 2 --run-dir runs/smoke

The paper's pre-training schedule is the default: 175 epochs, lr 0.1, x0.1 at epochs 126
and 151. ``--resume`` continues an unfinished run; ``--stop-after N`` ends this call after
N epochs (a job with a time limit).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer import split_classes, subset_classes
from auxtransfer.experiments import load_cifar100
from auxtransfer.experiments.train import RunConfig, train_run
from auxtransfer.models import CIFAR100_MEAN, CIFAR100_STD


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cifar_densenet_bc_100")
    parser.add_argument(
        "--model-kwargs", type=json.loads, default={}, help="JSON, e.g. '{\"depth\": 40}'"
    )
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--data-root", default="data", help="folder holding cifar-100-python")
    parser.add_argument("--download", action="store_true", help="download CIFAR-100 when missing")
    parser.add_argument(
        "--synthetic", type=int, default=0, help="use N random CIFAR-shaped images instead"
    )
    parser.add_argument(
        "--classes", choices=["all", "A", "B"], default="all", help="one side of the A/B split"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=175)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--milestones", type=int, nargs="*", default=[126, 151])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument(
        "--binary-weight", type=float, default=0.0, help="w of the combined loss; 0: no binary head"
    )
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    args = parser.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)

    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)
        train = (
            torch.randint(0, 256, (args.synthetic, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.arange(args.synthetic) % 100,
        )
        test = (
            train[0][: max(100, args.synthetic // 5)],
            train[1][: max(100, args.synthetic // 5)],
        )
    else:
        if distributed and dist.get_rank() != 0:
            dist.barrier()  # rank 0 downloads, if need be, before the others read
        train = load_cifar100(args.data_root, train=True, download=args.download)
        test = load_cifar100(args.data_root, train=False)
        if distributed and dist.get_rank() == 0:
            dist.barrier()
    num_classes = 100
    if args.classes != "all":
        a, b = split_classes(100, seed=args.split_seed)
        kept = a if args.classes == "A" else b
        train, test = [
            (x[s.indices], s.labels) for x, y in (train, test) for s in [subset_classes(y, kept)]
        ]
        num_classes = len(kept)

    config = RunConfig(
        model=args.model, model_kwargs=args.model_kwargs, num_classes=num_classes, epochs=args.epochs, lr=args.lr,
        milestones=tuple(args.milestones), weight_decay=args.weight_decay, batch_size=args.batch_size,
        binary_weight=args.binary_weight, num_partitions=args.partitions, seed=args.seed,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        phase=f"pretrain-{args.classes}-split{args.split_seed}",
    )  # fmt: skip
    results = train_run(
        config, args.run_dir, train, test, mean=CIFAR100_MEAN, std=CIFAR100_STD, device=device,
        resume=args.resume, progress=True, stop_after=args.stop_after,
    )  # fmt: skip
    if results is not None and (not distributed or dist.get_rank() == 0):
        print(
            f"{args.run_dir}: final test error {results['final_test_error']:.2f}%, best {results['best_test_error']:.2f}% (epoch {results['best_epoch']})"
        )
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
