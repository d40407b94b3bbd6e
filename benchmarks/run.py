"""The benchmark table: every speed ratio of the project, measured side by side in one process.

Each ratio times two (or three) ways of doing the same work on the same device, interleaved
(a, b, a, b, ...) so that load on a shared machine affects them alike, after a warm-up
round; each side's median counts. The table prints each ratio beside its goal and whether
the goal holds; ``--json FILE`` saves it.

    aux_step           train step with RandomPartitionHead + CombinedLoss / plain model +
                       cross-entropy (goal <= 1.02)
    relabel_epoch      an epoch of a torchvision-style CIFAR dataset through binary_relabel /
                       the plain dataset, DataLoader, no model (goal <= 1.02)
    frozen_step        train step frozen through block "2" / full step (goal <= 0.55)
    batches            DeviceBatches / the faster of torchvision's PIL pipeline through a
                       DataLoader with 0 and --workers workers (goal >= 5x on CPU)
    loop_vs_reference  training images/s of train_one_epoch over DeviceBatches / a loop
                       written as CIFAR code of 2017 was: fp32, PIL transforms, DataLoader,
                       eager, the loss read every step; same model, same device
                       (goal >= 10x on GPU; reported on CPU too)

On CUDA the model steps and our loop run in bf16 autocast with channels-last (the setting
of the GPU goals) and the table adds training images/s of both CIFAR models (eager; a step
captured as a CUDA graph and concurrent runs on one GPU are not measured: neither exists
yet). All data are synthetic CIFAR-shaped images (no download).

    python benchmarks/run.py --quick --json bench.json   # CPU, a few minutes
    python benchmarks/run.py --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer import (
    CombinedLoss,
    RandomPartitionHead,
    binary_relabel,
    class_partition,
    freeze_until,
)
from auxtransfer.experiments import DeviceBatches
from auxtransfer.experiments.loop import train_one_epoch

# The torchvision CIFAR pipeline of the paper's era lives in batches_speed.py (this folder).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batches_speed import MEAN, STD, PilCifar

NUM_CLASSES = 50  # one half of CIFAR-100, as A and B are


@dataclass(frozen=True)
class ModelSpec:
    """A timm model and the name the table gives it."""

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return timm.create_model(self.name, num_classes=NUM_CLASSES, **self.kwargs)


DENSENET = ModelSpec("DenseNet-BC-100", "cifar_densenet_bc_100")
SMALL_DENSENET = ModelSpec("DenseNet-BC L=22 k=12 (small)", "cifar_densenet_bc_100", {"depth": 22})
TINY_DENSENET = ModelSpec(
    "DenseNet-BC L=10 k=4 (tiny)", "cifar_densenet_bc_100", {"depth": 10, "growth_rate": 4}
)
WRN = ModelSpec("WRN-28-10", "cifar_wrn_28_10")


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does."""

    step_model: ModelSpec
    step_batch: int
    step_repeats: int
    loop_model: ModelSpec
    loop_images: int
    loop_batch: int
    loop_repeats: int
    data_images: int
    data_batch: int
    data_repeats: int
    cuda_images: int  # per epoch of each CIFAR model's images/s (CUDA only)


def sizes_for(preset: str, device: torch.device) -> Sizes:
    """``full`` (the default), ``quick`` (a few minutes on 2 CPU cores) or ``tiny`` (tests)."""
    if preset == "tiny":
        return Sizes(TINY_DENSENET, 8, 3, TINY_DENSENET, 64, 16, 2, 256, 64, 2, 256)
    if device.type == "cuda":
        if preset == "quick":
            return Sizes(DENSENET, 64, 10, DENSENET, 2_048, 64, 2, 5_000, 128, 2, 2_048)
        return Sizes(DENSENET, 64, 20, DENSENET, 5_000, 64, 3, 10_000, 128, 3, 5_000)
    if preset == "quick":
        # A DenseNet-BC-100 step at batch 8 takes about half a second on 2 quiet cores; an
        # epoch of it would take minutes, so the loops run a smaller DenseNet-BC.
        return Sizes(DENSENET, 8, 5, SMALL_DENSENET, 512, 32, 3, 4_000, 128, 3, 0)
    return Sizes(DENSENET, 64, 15, DENSENET, 512, 64, 3, 10_000, 128, 3, 0)


@dataclass(frozen=True)
class Goal:
    """``value <op> bound``, a goal only on ``devices``."""

    op: str  # "<=" or ">="
    bound: float
    devices: tuple[str, ...] = ("cpu", "cuda")

    def __str__(self) -> str:
        where = (
            "" if len(self.devices) > 1 else f" on {'GPU' if self.devices[0] == 'cuda' else 'CPU'}"
        )
        return f"{self.op} {self.bound:g}{'x' if self.op == '>=' else ''}{where}"

    def holds(self, value: float, device: torch.device) -> bool | None:
        if device.type not in self.devices:
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound


GOALS = {
    "aux_step": Goal("<=", 1.02),
    "relabel_epoch": Goal("<=", 1.02),
    "frozen_step": Goal("<=", 0.55),
    "batches": Goal(">=", 5.0, ("cpu",)),
    "loop_vs_reference": Goal(">=", 10.0, ("cuda",)),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    runs: Sequence[Callable[[], float]], *, repeats: int, warmup: int = 1
) -> list[float]:
    """Call ``runs`` in turn, ``warmup`` rounds untimed, then ``repeats`` rounds; each run
    returns the seconds it measured. The median of each run's seconds, in order."""
    for _ in range(warmup):
        for run in runs:
            run()
    seconds: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, times in zip(runs, seconds, strict=True):
            times.append(run())
    return [statistics.median(times) for times in seconds]


def timed(device: torch.device, work: Callable[[], object]) -> Callable[[], float]:
    """``work`` as a run that returns its wall-clock seconds, the device's queue drained."""

    def run() -> float:
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        return time.perf_counter() - start

    return run


def train_step(
    model: nn.Module,
    x: Tensor,
    loss_of: Callable[[Any], Tensor],
    *,
    amp: bool,
) -> Callable[[], None]:
    """One SGD step of ``model`` on the batch ``x``, its trainable parameters only."""
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4
    )
    model.train()

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = loss_of(out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def on_device(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_batch(sizes: Sizes, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(sizes.step_batch, 3, 32, 32, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, NUM_CLASSES, (sizes.step_batch,), generator=g).to(device)


def measure_aux_step(sizes: Sizes, device: torch.device, fast: bool) -> tuple[float, float]:
    """Median seconds of a plain step and of a step with the binary head."""
    torch.manual_seed(0)
    plain = on_device(sizes.step_model.build(), device, fast)
    wrapped = on_device(RandomPartitionHead(copy.deepcopy(plain), seed=0), device, fast)
    x, y = step_batch(sizes, device, fast)
    y_b = wrapped.relabel(y)
    combined = CombinedLoss(0.4)
    runs = [
        timed(device, train_step(plain, x, lambda out: F.cross_entropy(out.float(), y), amp=fast)),
        timed(device, train_step(wrapped, x, lambda out: combined(out, y, y_b), amp=fast)),
    ]
    plain_s, aux_s = interleaved_medians(runs, repeats=sizes.step_repeats)
    return plain_s, aux_s


def measure_frozen_step(sizes: Sizes, device: torch.device, fast: bool) -> tuple[float, float]:
    """Median seconds of a full step and of a step frozen through block ``"2"``."""
    torch.manual_seed(0)
    full = on_device(sizes.step_model.build(), device, fast)
    frozen = copy.deepcopy(full)
    freeze_until(frozen, "2")
    x, y = step_batch(sizes, device, fast)
    runs = [
        timed(device, train_step(m, x, lambda out: F.cross_entropy(out.float(), y), amp=fast))
        for m in (full, frozen)
    ]
    full_s, frozen_s = interleaved_medians(runs, repeats=sizes.step_repeats)
    return full_s, frozen_s


def synthetic_cifar(images: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """uint8 CIFAR-shaped images and labels of ``NUM_CLASSES`` classes."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.randint(0, NUM_CLASSES, (images,), generator=g),
    )


def through(batches: Iterable[Any], device: torch.device) -> Callable[[], None]:
    """Take every batch of ``batches`` onto ``device`` (the work of an epoch without a model)."""

    def epoch() -> None:
        for batch in batches:
            batch[0].to(device, non_blocking=True)

    return epoch


def loader(dataset: Any, batch: int, workers: int, device: torch.device) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def measure_relabel_epoch(sizes: Sizes, device: torch.device) -> tuple[float, float]:
    """Median seconds of an epoch of the PIL dataset, plain and through ``binary_relabel``."""
    images, labels = synthetic_cifar(sizes.data_images)
    plain = PilCifar(images, labels)
    relabeled = binary_relabel(plain, class_partition(NUM_CLASSES, seed=0))
    runs = [
        timed(device, through(loader(d, sizes.data_batch, 0, device), device))
        for d in (plain, relabeled)
    ]
    plain_s, relabel_s = interleaved_medians(runs, repeats=sizes.data_repeats)
    return plain_s, relabel_s


def measure_batches(sizes: Sizes, device: torch.device, workers: int) -> tuple[float, float]:
    """Median seconds of an epoch of DeviceBatches and of the faster DataLoader."""
    images, labels = synthetic_cifar(sizes.data_images)
    ours = DeviceBatches(
        images, labels, batch_size=sizes.data_batch, mean=MEAN, std=STD, device=device
    )
    dataset = PilCifar(images, labels)
    counts = sorted({0, workers})
    runs = [timed(device, through(ours, device))] + [
        timed(device, through(loader(dataset, sizes.data_batch, w, device), device)) for w in counts
    ]
    ours_s, *loader_s = interleaved_medians(runs, repeats=sizes.data_repeats)
    return ours_s, min(loader_s)


def our_epoch(
    model: nn.Module, images: Tensor, labels: Tensor, batch: int, device: torch.device, fast: bool
) -> Callable[[], object]:
    """An epoch of ``train_one_epoch`` over ``DeviceBatches``, as ``train_run`` trains."""
    batches = DeviceBatches(
        images, labels, batch_size=batch, mean=MEAN, std=STD, device=device, channels_last=fast
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    epochs = iter(range(1, 1_000_000))
    # .tolist() reads the epoch's sums: the one read of a real run's epoch.
    return lambda: train_one_epoch(model, batches, optimizer, epoch=next(epochs), amp=fast).tolist()


def reference_epoch(
    model: nn.Module, images: Tensor, labels: Tensor, batch: int, device: torch.device, workers: int
) -> Callable[[], None]:
    """An epoch as CIFAR training code of 2017 ran: fp32, torchvision's PIL transforms per
    image through a DataLoader, eager, every batch copied to the device, the loss read
    every step for the running average it printed."""
    batches = loader(PilCifar(images, labels), batch, workers, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def epoch() -> None:
        model.train()
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()

    return epoch


def measure_loops(
    sizes: Sizes, device: torch.device, fast: bool, workers: int
) -> tuple[float, float]:
    """Median seconds of an epoch of our loop and of the reference loop, same model."""
    torch.manual_seed(0)
    ours = on_device(sizes.loop_model.build(), device, fast)
    reference = copy.deepcopy(ours).to(memory_format=torch.contiguous_format)
    images, labels = synthetic_cifar(sizes.loop_images)
    runs = [
        timed(device, our_epoch(ours, images, labels, sizes.loop_batch, device, fast)),
        timed(
            device, reference_epoch(reference, images, labels, sizes.loop_batch, device, workers)
        ),
    ]
    ours_s, reference_s = interleaved_medians(runs, repeats=sizes.loop_repeats)
    return ours_s, reference_s


def measure_cuda_models(sizes: Sizes, device: torch.device) -> dict[str, float]:
    """Training images/s (eager, bf16, channels-last) of both CIFAR models at their batch."""
    images, labels = synthetic_cifar(sizes.cuda_images)
    runs, names = [], []
    for spec, batch in ((DENSENET, 64), (WRN, 128)):
        torch.manual_seed(0)
        model = on_device(spec.build(), device, True)
        runs.append(timed(device, our_epoch(model, images, labels, batch, device, True)))
        names.append(f"{spec.name}_b{batch}_eager")
    medians = interleaved_medians(runs, repeats=sizes.loop_repeats)
    return {name: sizes.cuda_images / s for name, s in zip(names, medians, strict=True)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def measure(
    sizes: Sizes, device: torch.device, workers: int, log: Callable[[str], None]
) -> dict[str, Any]:
    fast = device.type == "cuda"  # bf16 autocast and channels-last
    precision = "bf16, channels-last" if fast else "fp32"
    step = f"{sizes.step_model.label}, batch {sizes.step_batch}, {precision}, median of {sizes.step_repeats} steps"
    data = f"{sizes.data_images:,} images, batch {sizes.data_batch}, median of {sizes.data_repeats} epochs"
    loop = (
        f"{sizes.loop_model.label}, {sizes.loop_images:,} images, batch {sizes.loop_batch}, "
        f"median of {sizes.loop_repeats} epochs; reference: fp32, {workers} workers"
    )
    ratios: dict[str, float] = {}
    rates: dict[str, float] = {}
    settings: dict[str, str] = {}

    log("aux_step ...")
    plain_s, aux_s = measure_aux_step(sizes, device, fast)
    ratios["aux_step"], settings["aux_step"] = aux_s / plain_s, step
    rates["plain_step"] = sizes.step_batch / plain_s

    log("relabel_epoch ...")
    plain_s, relabel_s = measure_relabel_epoch(sizes, device)
    ratios["relabel_epoch"] = relabel_s / plain_s
    settings["relabel_epoch"] = f"PIL dataset, DataLoader 0 workers, {data}"

    log("frozen_step ...")
    full_s, frozen_s = measure_frozen_step(sizes, device, fast)
    ratios["frozen_step"], settings["frozen_step"] = frozen_s / full_s, step

    log("batches ...")
    ours_s, loader_s = measure_batches(sizes, device, workers)
    ratios["batches"] = loader_s / ours_s
    settings["batches"] = f"DataLoader with 0 and {workers} workers, the faster; {data}"
    rates["device_batches"] = sizes.data_images / ours_s
    rates["pil_dataloader"] = sizes.data_images / loader_s

    log("loop_vs_reference ...")
    ours_s, reference_s = measure_loops(sizes, device, fast, workers)
    ratios["loop_vs_reference"], settings["loop_vs_reference"] = reference_s / ours_s, loop
    rates["our_loop"] = sizes.loop_images / ours_s
    rates["reference_loop"] = sizes.loop_images / reference_s

    if device.type == "cuda":
        log("CIFAR models ...")
        rates.update(measure_cuda_models(sizes, device))
    return {"ratios": ratios, "images_per_s": rates, "settings": settings}


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['device']}, torch {result['torch']}, {result['date']}, {result['preset']} sizes",
        "",
        f"{'ratio':<18} {'value':>8}  {'goal':<16} {'holds':<6} setting",
    ]
    for name, value in result["ratios"].items():
        goal = result["goals"][name]
        holds = {True: "yes", False: "NO", None: "-"}[goal["holds"]]
        text = goal["goal"] if goal["holds"] is not None else f"({goal['goal']})"
        lines.append(f"{name:<18} {value:>8.3f}  {text:<16} {holds:<6} {result['settings'][name]}")
    lines += ["", f"{'images/s':<34} {'value':>10}"]
    lines += [f"{name:<34} {value:>10,.0f}" for name, value in result["images_per_s"].items()]
    lines += ["", f"measured in {result['seconds']:.0f} s"]
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then ``os.replace`` it."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=type(
            "Formatter",
            (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter),
            {},
        ),
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny DenseNet-BC and the smallest sizes (checks that the script runs; the "
        "ratios mean little)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="DataLoader workers of the reference pipelines"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="intra-op CPU threads (torch.set_num_threads); on a machine busy with other "
        "work, 1 gives steadier figures: every parallel op waits for its slowest thread",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the table here")
    args = parser.parse_args(argv)
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: expected cpu, cuda or cuda:N, but got {args.device!r}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device: expected cpu, cuda or cuda:N, but got {str(args.device)!r}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device: cuda was asked for, but torch sees no CUDA device")
    if args.threads < 1:
        parser.error(f"--threads: expected a count >= 1, but got {args.threads}")
    if args.workers < 0:
        parser.error(f"--workers: expected a count >= 0, but got {args.workers}")
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(f"--json: expected a file in an existing folder, but got {str(args.json)!r}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = sizes_for(preset, args.device)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    measured = measure(sizes, args.device, args.workers, log)
    result: dict[str, Any] = {
        "device": device_name(args.device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "preset": preset,
        **measured,
        "goals": {
            name: {"goal": str(goal), "holds": goal.holds(measured["ratios"][name], args.device)}
            for name, goal in GOALS.items()
        },
        "seconds": time.perf_counter() - started,
    }
    bad = [
        k for k, v in {**result["ratios"], **result["images_per_s"]}.items() if not math.isfinite(v)
    ]
    if bad:
        raise RuntimeError(f"Expected finite measurements, but got {bad} (a zero time?)")
    print(format_table(result))
    if args.json is not None:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
