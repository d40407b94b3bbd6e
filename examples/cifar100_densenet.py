"""The paper's DenseNet-BC experiments on CIFAR-100, as plans of runs.

An experiment expands to runs with stable ids (split0/binary/pretrain,
split0/binary/freeze-2.9, ...), each a run directory under --out. A plain call runs them
all; calling again skips finished runs and resumes an unfinished one. --list prints the
ids in dependency order, --run executes some of them (one per SLURM array task, say).

  python examples/cifar100_densenet.py --smoke --out runs/smoke          # every step, tiny
  python examples/cifar100_densenet.py --data-root data --download --out runs/paired
  python examples/cifar100_densenet.py --experiment freeze --out runs/freeze --list
  torchrun --nproc_per_node=4 examples/cifar100_densenet.py --out runs/paired   # DDP

Every schedule, weight and count defaults to the paper's value; --smoke makes a tiny
DenseNet, synthetic CIFAR-shaped data and 2-epoch runs unless a flag says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from auxtransfer.experiments import plan as plans
from auxtransfer.experiments import protocols
from auxtransfer.experiments.sources import Cifar100, SyntheticCifar100

# Experiment parameters by flag (the builders' own names).
FLAGS = {
    "splits": "--splits/--split-seeds", "replications": "--replications",
    "binary_weight": "--binary-weight", "weights": "--weights", "partitions": "--partitions",
    "head_weight": "--head-weight", "heads": "--heads", "freeze_at": "--freeze-at",
    "reset_at": "--reset-at", "per_class": "--per-class", "batch_size": "--batch-size",
    "seed": "--seed", "partition_seed": "--partition-seed", "weight_decay": "--weight-decay",
}  # fmt: skip


class Given:
    """A flag's default as --help shows it; its value means "not given on the command line"."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def shown(parameter: str, show: Any = None) -> Given:
    """The default of an experiment parameter, per experiment where they differ."""
    show = show or (lambda value: " ".join(map(str, value)) if isinstance(value, tuple) else value)
    by_value: dict[str, list[str]] = {}
    for experiment, value in protocols.defaults(parameter).items():
        by_value.setdefault(str(show(value)), []).append(experiment)
    if len(by_value) == 1:
        return Given(next(iter(by_value)))
    return Given("; ".join(f"{v} ({', '.join(names)})" for v, names in by_value.items()))


def build_parser() -> argparse.ArgumentParser:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            # On/off flags are off, --out is required: no "(default: False/None)" for them.
            if action.default in (None, False):
                return action.help or ""
            return super()._get_help_string(action) or ""

    p = argparse.ArgumentParser(
        usage="%(prog)s --out DIR [--experiment NAME] [--list | --run ID [ID ...]] [options]",
        description=__doc__,
        formatter_class=Formatter,
    )
    p.add_argument("--experiment", choices=list(protocols.EXPERIMENTS), default="paired",
        help="paired: baseline vs binary on each split (Fig. 5); freeze: Exp. 1 (Figs. 2, 7, 9); "
        "reset: Exp. 2 (Figs. 3, 8); weight-sweep: Fig. 4; heads: Fig. 10; long-tail: Table 1")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder: one run directory per run id")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--list", action="store_true", help="print the run ids in dependency order and exit"
    )
    what.add_argument("--run", nargs="+", metavar="ID", default=None, help="execute these runs only")  # fmt: skip
    splits = p.add_mutually_exclusive_group()
    splits.add_argument("--splits", type=int, default=shown("splits"), help="A/B class splits (seeds 0 .. N-1)")  # fmt: skip
    splits.add_argument("--split-seeds", type=int, nargs="+", default=None, help="the split seeds themselves")  # fmt: skip
    p.add_argument(
        "--replications", type=int, default=shown("replications"), help="tests per split"
    )
    p.add_argument("--binary-weight", type=float, default=shown("binary_weight"), help="loss weight of the binary condition")  # fmt: skip
    p.add_argument("--weights", type=float, nargs="+", default=shown("weights"), help="weight-sweep: the binary weights")  # fmt: skip
    p.add_argument("--partitions", type=int, default=shown("partitions"), help="weight-sweep: heads sharing each weight")  # fmt: skip
    p.add_argument("--head-weight", type=float, default=shown("head_weight"), help="heads: the weight b of each head (B = b x n)")  # fmt: skip
    p.add_argument("--heads", type=int, nargs="+", default=shown("heads"), help="heads: the numbers of heads n")  # fmt: skip
    p.add_argument("--freeze-at", nargs="+", metavar="ADDRESS", default=shown("freeze_at"), help="freeze: freeze up to and including each address ('0': nothing)")  # fmt: skip
    p.add_argument("--reset-at", nargs="+", metavar="ADDRESS", default=shown("reset_at"), help="reset: keep up to each address, re-initialise the rest")  # fmt: skip
    p.add_argument("--per-class", type=int, default=shown("per_class"), help="long-tail: training images per class of B")  # fmt: skip
    epochs = lambda s: s.epochs  # noqa: E731
    steps = lambda s: " ".join(map(str, s.milestones)) or "none"  # noqa: E731
    p.add_argument(
        "--pretrain-epochs", type=int, default=shown("pretrain", epochs), help="epochs on A"
    )
    p.add_argument("--pretrain-milestones", type=int, nargs="*", default=shown("pretrain", steps), help="epochs from which on the next rate applies; scaled with --pretrain-epochs unless given")  # fmt: skip
    p.add_argument("--pretrain-lr", type=float, nargs="+", default=shown("pretrain", lambda s: _rates(s, 0)), help="rate of each phase on A")  # fmt: skip
    p.add_argument(
        "--transfer-epochs", type=int, default=shown("transfer", epochs), help="epochs on B"
    )
    p.add_argument("--transfer-milestones", type=int, nargs="*", default=shown("transfer", steps), help="on B; scaled with --transfer-epochs unless given")  # fmt: skip
    p.add_argument("--body-lr", type=float, nargs="+", default=shown("transfer", lambda s: _rates(s, 0)), help="on B, rate of each phase of the transferred (kept) layers")  # fmt: skip
    p.add_argument("--new-lr", type=float, nargs="+", default=shown("transfer", lambda s: _rates(s, 1)), help="on B, rate of each phase of the new classifier (and re-initialised layers)")  # fmt: skip
    options = protocols.RunOptions()
    p.add_argument("--batch-size", type=int, default=Given(str(options.batch_size)), help="images per step and process")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=Given(str(options.weight_decay)), help="SGD weight decay")  # fmt: skip
    p.add_argument("--momentum", type=float, default=Given(str(options.momentum)), help="SGD momentum")  # fmt: skip
    p.add_argument("--seed", type=int, default=Given(str(options.seed)), help="replication r trains with seed + r")  # fmt: skip
    p.add_argument("--partition-seed", type=int, default=Given("seed + r: each replication its own"), help="binary partition seed of every run")  # fmt: skip
    p.add_argument("--transfer-from", choices=["best", "last"], default="best", help="A's weights to start B from: its best epoch (as the paper) or its last")  # fmt: skip
    p.add_argument("--bn", choices=["freeze", "update"], default="freeze", help="BatchNorm of frozen layers: keep A's statistics, or let them follow B")  # fmt: skip
    p.add_argument("--data-root", default="data", help="folder holding cifar-100-python")
    p.add_argument("--download", action="store_true", help="download CIFAR-100 when it is missing")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N; under torchrun each process takes cuda:LOCAL_RANK")  # fmt: skip
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many epochs of training (a job with a time limit); calling again continues")  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="tiny DenseNet, synthetic data, 2-epoch runs, one split: every step in seconds; the runs say they are not results")  # fmt: skip
    return p


def _rates(schedule: protocols.Schedule, role: int) -> str:
    return " ".join(f"{r:g}" for r in schedule.rates[role])


def given(args: argparse.Namespace, name: str) -> bool:
    value = getattr(args, name)
    return value is not None and not isinstance(value, Given)


def experiment_parameters(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Any]:
    """The builder's parameters: the flags given, else --smoke's values, else its defaults."""
    accepted = protocols.defaults  # parameter -> {experiment: default}
    params: dict[str, Any] = protocols.smoke_parameters(args.experiment) if args.smoke else {}
    for name in ("replications", "binary_weight", "weights", "partitions", "head_weight",
                 "heads", "freeze_at", "reset_at", "per_class"):  # fmt: skip
        if given(args, name):
            if args.experiment not in accepted(name):
                parser.error(f"argument --{name.replace('_', '-')}: not used by --experiment "
                             f"{args.experiment} (only by {', '.join(accepted(name))})")  # fmt: skip
            params[name] = getattr(args, name)
    if given(args, "splits"):
        params["splits"] = args.splits
    elif args.split_seeds is not None:
        params["splits"] = args.split_seeds
    for step, rates in (("pretrain", ("pretrain_lr",)), ("transfer", ("body_lr", "new_lr"))):
        flags = [f"{step}_epochs", f"{step}_milestones", *rates]
        if not any(given(args, flag) for flag in flags):
            continue
        default = accepted(step)[args.experiment]
        try:
            params[step] = default.adjusted(
                epochs=args.__dict__[flags[0]] if given(args, flags[0]) else (protocols.SMOKE_EPOCHS if args.smoke else None),
                milestones=args.__dict__[flags[1]] if given(args, flags[1]) else None,
                rates=[getattr(args, r) if given(args, r) else None for r in rates],
            )  # fmt: skip
        except ValueError as error:
            names = "/".join("--" + f.replace("_", "-") for f in flags if given(args, f))
            parser.error(f"argument {names}: {error}")
    changes = {
        name: getattr(args, name)
        for name in ("batch_size", "weight_decay", "momentum", "seed", "partition_seed")
        if given(args, name)
    }
    try:
        params["options"] = dataclasses.replace(
            params.get("options", protocols.RunOptions()), **changes,
            transfer_weights=args.transfer_from, bn=args.bn, amp=args.amp,
            channels_last=args.channels_last, compile=args.compile,
        )  # fmt: skip
    except (TypeError, ValueError) as error:
        parser.error(flagged(str(error)))
    return params


def flagged(message: str) -> str:
    """``message`` with the parameters it names in backticks replaced by their flags."""
    return re.sub(r"`(\w+)`", lambda m: FLAGS.get(m.group(1), m.group(0)), message)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = protocols.build(args.experiment, **experiment_parameters(args, parser))
    except (TypeError, ValueError) as error:
        parser.error(flagged(str(error)))
    if args.list:
        if int(os.environ.get("RANK", "0")) == 0:
            print("\n".join(plan.ids))
        return
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"argument --stop-after: expected at least 1 epoch, got {args.stop_after}")
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f"argument --device: {error}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"argument --device: {args.device!r}, but CUDA is not available here")
    source = SyntheticCifar100() if args.smoke else Cifar100(args.data_root, download=args.download)
    if args.smoke and "OMP_NUM_THREADS" not in os.environ:
        # Tiny models: a second thread saves little, and on a busy CPU threads that wait
        # for each other make a run many times slower.
        torch.set_num_threads(1)
    try:
        plans.check_plan(plan, args.out, args.run)
    except plans.RunDirConflictError as error:
        parser.error(f"argument --out: {error}")
    except ValueError as error:
        parser.error(f"argument --run: {error}")
    try:
        plans.check_data(plan, source, args.run)
    except FileNotFoundError as error:
        parser.error(f"argument --data-root: {error}")
    except ValueError as error:
        parser.error(flagged(str(error)))

    device = plans.distributed_device(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    say = print if rank == 0 else None
    outcomes = plans.execute(
        plan, args.out, source, ids=args.run, device=device, progress=rank == 0 and sys.stderr.isatty(),
        stop_after=args.stop_after, report=say,
    )  # fmt: skip
    if rank == 0:
        if args.smoke:
            print("smoke runs: a tiny model on synthetic data, every step once; not results")
        print(plans.format_summary(plans.summarise(plan, args.out, args.run)))
        if outcomes and outcomes[-1].status == "stopped":
            print(f"stopped in {outcomes[-1].id} after --stop-after {args.stop_after} epochs: "
                  f"run the same command again to continue")  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
