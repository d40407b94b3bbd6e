"""The benchmark table: every speed ratio of the project, measured side by side in one process.

Each ratio times two (or more) ways of doing the same work on the same device with one
harness (``interleaved``, on ``torch.utils.benchmark``): rounds of measurements taken in
turn (a, b, b, a, ...), so that load on a shared machine affects them alike, each call
timed after an untimed one; each side's median counts. The table prints each ratio beside
its goal and whether the goal holds; ``--json FILE`` saves it.

    aux_step           train step with RandomPartitionHead + CombinedLoss / plain model +
                       cross-entropy (goal <= 1.02)
    relabel_epoch      a batch of a torchvision-style CIFAR dataset through binary_relabel /
                       of the plain dataset, DataLoader, no model (goal <= 1.02)
    frozen_step        train step frozen through block "2" (--until) / full step (goal <= 0.55)
    batches            DeviceBatches / the faster of torchvision's PIL pipeline through a
                       DataLoader with 0 and --workers workers (goal >= 5x on CPU)
    loop_vs_reference  training images/s of our loop over DeviceBatches, as train_run trains
                       (on CUDA GraphTrainer, every step replayed as a CUDA graph; on CPU
                       train_one_epoch) / a loop written as CIFAR code of 2017 was: fp32,
                       PIL transforms, DataLoader, eager, the loss read every step; same
                       model, same device (goal >= 10x on GPU; reported on CPU too)
    graph_vs_eager_densenet, graph_vs_eager_wrn
                       training images/s of GraphTrainer / of train_one_epoch (eager):
                       DenseNet-BC-100 at batch 64, WRN-28-10 at batch 128 (CUDA; no goal)
    jobsN_vs_jobs1     aggregate training images/s of N runs at once / of one run, for each
                       N of --jobs-counts but 1 (no goal: without NVIDIA MPS the processes'
                       kernels take turns on one GPU, and a graphed step keeps the GPU
                       busy, so expect about 1.0-1.3x; the JSON says whether MPS ran)
    logme              auxtransfer.probe.logme / a float64 numpy implementation of the same
                       algorithm (the authors'), 50,000 x 1,024 features, 50 classes, on
                       the CPU (goal <= 1.0) or the device (goal none)
    features_vs_forward
                       probe.features at every address but the head / a plain no-grad
                       forward pass of the steps' model and batch (no goal)

On CUDA the model steps and our loops run in bf16 autocast with channels-last (the setting
of the GPU goals; ``--fp32``: neither). The images/s table adds, on CUDA, both CIFAR models
eager and as a CUDA graph (``cifar_densenet_bc_100_b64_eager``,
``cifar_densenet_bc_100_b64_graph``, ``cifar_wrn_28_10_b128_eager``,
``cifar_wrn_28_10_b128_graph``), and concurrent runs: ``jobsN`` is N processes started
with "spawn", each training its own DenseNet-BC-100 through GraphTrainer on synthetic data
made on its device (worker i on cuda:(i % GPUs) for ``--device cuda``); after one warm-up
epoch (which records the CUDA graph) they wait for each other, then each runs an epoch
untimed and one timed: their images over the slowest one's seconds. ``--jobs-counts``
picks the Ns (default: 1 2 4 8 on CUDA, none on CPU, where the workers run GraphTrainer's
steps eagerly). A measurement whose worker crashed or timed out is marked failed in the
table and in the JSON (``"failed"``: what failed and why), and the script then exits with
status 1. The tiny preset (tests) measures a tiny DenseNet-BC eager and through
GraphTrainer on any device, so that the CPU runs the code of the CUDA rows. All data are
synthetic CIFAR-shaped images (no download).

``--only`` measures some rows; ``--model``, ``--size``, ``--batch``, ``--until`` and
``--compile`` set the train steps of aux_step and frozen_step (any timm model, or
torchvision's DenseNet-BC-100 with its ImageNet stem).

    python benchmarks/run.py --quick --json bench.json   # CPU, a few minutes
    python benchmarks/run.py --device cuda --json bench.json   # about 2 minutes on an H100
    python benchmarks/run.py --only aux_step --device cuda --model resnet50 --size 224
    python benchmarks/run.py --only frozen_step --model torchvision_densenet_bc_100
    python benchmarks/run.py --only batches   # CPU: 10,000 images, batch 128
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import itertools
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

import timm
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch import Tensor, nn
from torch.utils.benchmark import Timer
from torch.utils.data import DataLoader, Dataset

from auxtransfer import (
    CombinedLoss,
    RandomPartitionHead,
    binary_relabel,
    class_partition,
    freeze_until,
    layer_names,
)
from auxtransfer.experiments import DeviceBatches, GraphTrainer
from auxtransfer.experiments.loop import train_one_epoch
from auxtransfer.experiments.processes import job_devices, job_threads
from auxtransfer.experiments.rundir import replace_atomically
from auxtransfer.models import CIFAR100_MEAN, CIFAR100_STD  # (and registers the CIFAR models)
from auxtransfer.probe import features, logme

sys.path.insert(0, str(Path(__file__).resolve().parent))
from logme_reference import logme_numpy
from preflight import checked_device, mps_running

NUM_CLASSES = 50  # one half of CIFAR-100, as A and B are
MEAN, STD = CIFAR100_MEAN, CIFAR100_STD
ROWS = (
    "aux_step", "relabel_epoch", "frozen_step", "batches", "loop_vs_reference", "graph_vs_eager",
    "jobs", "logme", "features",
)  # fmt: skip
TV_DENSENET = "torchvision_densenet_bc_100"


@dataclass(frozen=True)
class ModelSpec:
    """A timm model (or ``TV_DENSENET``) and the name the table gives it."""

    label: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        if self.name == TV_DENSENET:  # keeps its ImageNet stem: 32 px inputs shrink to 8 px
            return torchvision.models.DenseNet(
                12, (16, 16, 16), num_init_features=24, num_classes=NUM_CLASSES
            )
        return timm.create_model(self.name, num_classes=NUM_CLASSES, **self.kwargs)

    @property
    def family(self) -> str:
        """``densenet`` or ``wrn``: the model's name in a ratio's name."""
        return self.name.split("_")[1]


DENSENET = ModelSpec("DenseNet-BC-100", "cifar_densenet_bc_100")
SMALL_DENSENET = ModelSpec("DenseNet-BC L=22 k=12 (small)", "cifar_densenet_bc_100", {"depth": 22})
TINY_DENSENET = ModelSpec(
    "DenseNet-BC L=10 k=4 (tiny)", "cifar_densenet_bc_100", {"depth": 10, "growth_rate": 4}
)
WRN = ModelSpec("WRN-28-10", "cifar_wrn_28_10")


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does: ``*_repeats`` rounds of ``interleaved``."""

    step_model: ModelSpec
    step_batch: int
    step_repeats: int
    loop_model: ModelSpec
    loop_images: int
    loop_batch: int
    loop_repeats: int
    data_images: int
    data_batch: int
    data_repeats: int  # rounds of epochs (relabel_epoch: this many epochs' worth of batches)
    # Images/s of each (model, batch), eager and through GraphTrainer (none: skipped).
    model_rates: tuple[tuple[ModelSpec, int], ...]
    model_images: int  # per epoch
    model_repeats: int
    # Concurrent runs (--jobs-counts): what each worker process trains.
    jobs_model: ModelSpec
    jobs_batch: int
    jobs_images: int  # per epoch, per worker
    jobs_timeout: float  # seconds for all the workers of one jobsN to report
    step_size: int = 32  # pixels of the steps' square images
    # LogME: samples, feature width, classes (the 50,000 x 1,024 with 50 classes).
    logme_shape: tuple[int, int, int] = (50_000, 1_024, 50)
    logme_repeats: int = 3


CIFAR_MODELS = ((DENSENET, 64), (WRN, 128))


def sizes_for(preset: str, device: torch.device) -> Sizes:
    """``full`` (the default), ``quick`` (a few minutes on 2 CPU cores) or ``tiny`` (tests)."""
    if preset == "tiny":
        return Sizes(
            step_model=TINY_DENSENET, step_batch=8, step_repeats=3,
            loop_model=TINY_DENSENET, loop_images=64, loop_batch=16, loop_repeats=2,
            data_images=256, data_batch=64, data_repeats=2,
            model_rates=((TINY_DENSENET, 16),), model_images=64, model_repeats=2,
            jobs_model=TINY_DENSENET, jobs_batch=16, jobs_images=64, jobs_timeout=300,
            logme_shape=(600, 32, 5), logme_repeats=2,
        )  # fmt: skip
    if device.type == "cuda":
        if preset == "quick":
            return Sizes(
                step_model=DENSENET, step_batch=64, step_repeats=6,
                loop_model=DENSENET, loop_images=1_536, loop_batch=64, loop_repeats=2,
                data_images=3_840, data_batch=128, data_repeats=2,
                model_rates=CIFAR_MODELS, model_images=1_024, model_repeats=2,
                jobs_model=DENSENET, jobs_batch=64, jobs_images=1_600, jobs_timeout=150, logme_repeats=1,
            )  # fmt: skip
        # About 2 minutes on an H100, at ~950 images/s for an eager DenseNet-BC-100 step at
        # batch 64 (launch-bound; the fp32 reference loop about the same), ~6,000 through
        # GraphTrainer, ~12,000 for WRN-28-10 at batch 128. Every timed call follows an
        # untimed one. Start-up and imports ~5 s; aux_step and frozen_step 2 x 24 eager
        # steps each, ~6 s; relabel_epoch and batches, PIL pipelines over 77,000 images
        # each, ~15 s; loop_vs_reference 6 epochs of 3,200 images each way, ~20 s reference
        # + ~4 s ours + capture; the CIFAR models 6 epochs of 1,792 images each way, ~11 s
        # eager DenseNet + ~5 s the rest; jobs1, 2, 4, 8: 3 epochs of 4,800 images per
        # worker (~2 s at jobs1, ~6 s at jobs8 if the GPU is shared well) after ~10 s of
        # start-up each (spawn, imports, CUDA context, capture), ~55 s. Total ~125 s.
        return Sizes(
            step_model=DENSENET, step_batch=64, step_repeats=12,
            loop_model=DENSENET, loop_images=3_200, loop_batch=64, loop_repeats=3,
            data_images=6_400, data_batch=128, data_repeats=3,
            model_rates=CIFAR_MODELS, model_images=1_792, model_repeats=3,
            jobs_model=DENSENET, jobs_batch=64, jobs_images=4_800, jobs_timeout=180, logme_repeats=1,
        )  # fmt: skip
    if preset == "quick":
        # A DenseNet-BC-100 step at batch 8 takes about half a second on 2 quiet cores; an
        # epoch of it would take minutes, so the loops run a smaller DenseNet-BC.
        # The goals of 1.02 ask for a resolution finer than a shared CPU's drift: more
        # repetitions of the steps and epochs than elsewhere.
        return Sizes(
            step_model=DENSENET, step_batch=8, step_repeats=11,
            loop_model=SMALL_DENSENET, loop_images=512, loop_batch=32, loop_repeats=3,
            data_images=4_000, data_batch=128, data_repeats=5,
            model_rates=(), model_images=0, model_repeats=0,
            jobs_model=SMALL_DENSENET, jobs_batch=32, jobs_images=256, jobs_timeout=900,
            logme_shape=(20_000, 512, 50),
        )  # fmt: skip
    return Sizes(
        step_model=DENSENET, step_batch=64, step_repeats=15,
        loop_model=DENSENET, loop_images=512, loop_batch=64, loop_repeats=3,
        data_images=10_000, data_batch=128, data_repeats=3,
        model_rates=(), model_images=0, model_repeats=0,
        jobs_model=DENSENET, jobs_batch=64, jobs_images=512, jobs_timeout=1_800,
    )  # fmt: skip


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


# The ratios with a goal; the others (graph_vs_eager_*, jobsN_vs_jobs1) inform.
GOALS = {
    "aux_step": Goal("<=", 1.02),
    "relabel_epoch": Goal("<=", 1.02),
    "frozen_step": Goal("<=", 0.55),
    "batches": Goal(">=", 5.0, ("cpu",)),
    "loop_vs_reference": Goal(">=", 10.0, ("cuda",)),
    "logme": Goal("<=", 1.0, ("cpu",)),
}


def judged(name: str, value: float | None, device: torch.device) -> dict[str, Any]:
    """The ``goals`` entry of a ratio: its goal (None: none) and whether it holds (None: not
    judged on ``device``, or no goal). A measurement that failed (``value`` None) does not
    hold its goal where the goal is judged."""
    goal = GOALS.get(name)
    if goal is None:
        return {"goal": None, "holds": None}
    holds = goal.holds(math.nan if value is None else value, device)
    return {"goal": str(goal), "holds": None if holds is None else value is not None and holds}


def interleaved(works: Sequence[Callable[[], object]], rounds: int) -> list[float]:
    """Median seconds of a call of each of ``works``, all timed side by side.

    Each work gets a ``torch.utils.benchmark.Timer`` (at this process's thread count: a
    Timer's default is 1). Every round takes one ``Measurement`` of each work in turn, in
    order on even rounds and in reverse on odd ones (a, b, b, a, ...), so that load on a
    shared machine affects them alike and none always goes first. A measurement is
    ``blocked_autorange(min_run_time=0)``: one untimed call (its warm-up, which sizes the
    block), then one timed call; the Timer synchronises the accelerator around it.
    """
    threads = torch.get_num_threads()
    timers = [Timer("work()", globals={"work": work}, num_threads=threads) for work in works]
    seconds: list[list[float]] = [[] for _ in works]
    for index in range(rounds):
        for side in range(len(works))[:: 1 if index % 2 == 0 else -1]:
            seconds[side].append(timers[side].blocked_autorange(min_run_time=0).median)
    return [statistics.median(each) for each in seconds]


class PilCifar(Dataset[tuple[Tensor, int]]):
    """torchvision.datasets.CIFAR100's __getitem__ (HWC uint8 -> PIL -> transforms), with
    the augmentation of CIFAR code of the paper's era."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.data, self.targets = images.permute(0, 2, 3, 1).numpy(), labels.tolist()
        crop, flip = T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()
        self.transform = T.Compose([crop, flip, T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def train_step(
    model: nn.Module, x: Tensor, loss_of: Callable[[Any], Tensor], *, amp: bool, compiled: bool
) -> Callable[[], None]:
    """One SGD step of ``model`` on the batch ``x``, its trainable parameters only."""
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4
    )
    model.train()
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward(x)
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
    x = torch.randn(sizes.step_batch, 3, sizes.step_size, sizes.step_size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, NUM_CLASSES, (sizes.step_batch,), generator=g).to(device)


def measure_aux_step(
    sizes: Sizes, device: torch.device, fast: bool, compiled: bool = False
) -> tuple[float, float]:
    """Median seconds of a plain step and of a step with the binary head."""
    torch.manual_seed(0)
    plain = on_device(sizes.step_model.build(), device, fast)
    wrapped = on_device(RandomPartitionHead(copy.deepcopy(plain), seed=0), device, fast)
    x, y = step_batch(sizes, device, fast)
    y_b, combined = wrapped.relabel(y), CombinedLoss(0.4)
    steps = [
        train_step(plain, x, lambda o: F.cross_entropy(o.float(), y), amp=fast, compiled=compiled),
        train_step(wrapped, x, lambda o: combined(o, y, y_b), amp=fast, compiled=compiled),
    ]
    plain_s, aux_s = interleaved(steps, sizes.step_repeats)
    return plain_s, aux_s


def measure_frozen_step(
    sizes: Sizes, device: torch.device, fast: bool, compiled: bool = False, until: str = "2"
) -> tuple[float, float]:
    """Median seconds of a full step and of a step frozen through block ``until``."""
    torch.manual_seed(0)
    full = on_device(sizes.step_model.build(), device, fast)
    frozen = copy.deepcopy(full)
    freeze_until(frozen, until)
    x, y = step_batch(sizes, device, fast)
    steps = [
        train_step(m, x, lambda o: F.cross_entropy(o.float(), y), amp=fast, compiled=compiled)
        for m in (full, frozen)
    ]
    full_s, frozen_s = interleaved(steps, sizes.step_repeats)
    return full_s, frozen_s


def synthetic_cifar(
    images: int, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """uint8 CIFAR-shaped images and labels of ``NUM_CLASSES`` classes, made on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    return (
        torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g, device=device),
        torch.randint(0, NUM_CLASSES, (images,), generator=g, device=device),
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
    """Median seconds of a batch of the PIL dataset, plain and through ``binary_relabel``.

    The two differ by a few microseconds an image against a few hundred for its PIL
    transforms, finer than a shared machine's drift over a second. So the unit timed is a
    batch: both loaders walk their epochs in lockstep (the same order, the same batches),
    for ``data_repeats`` epochs' worth of rounds.
    """
    images, labels = synthetic_cifar(sizes.data_images)
    plain = PilCifar(images, labels)
    relabeled = binary_relabel(plain, class_partition(NUM_CLASSES, seed=0))
    loaders = [loader(d, sizes.data_batch, 0, device) for d in (plain, relabeled)]
    batches = [itertools.chain.from_iterable(itertools.repeat(each)) for each in loaders]
    draws = [lambda b=b: next(b)[0].to(device, non_blocking=True) for b in batches]
    plain_s, relabel_s = interleaved(draws, sizes.data_repeats * len(loaders[0]))
    return plain_s, relabel_s


def measure_batches(
    sizes: Sizes, device: torch.device, workers: int
) -> tuple[float, dict[int, float]]:
    """Median seconds of an epoch of DeviceBatches and of the DataLoader with each of 0 and
    ``workers`` workers."""
    images, labels = synthetic_cifar(sizes.data_images)
    ours = DeviceBatches(
        images, labels, batch_size=sizes.data_batch, mean=MEAN, std=STD, device=device
    )
    counts = sorted({0, workers})
    loaders = [loader(PilCifar(images, labels), sizes.data_batch, w, device) for w in counts]
    ours_s, *loader_s = interleaved(
        [through(each, device) for each in (ours, *loaders)], sizes.data_repeats
    )
    return ours_s, dict(zip(counts, loader_s, strict=True))


def our_epoch(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batch: int,
    device: torch.device,
    fast: bool,
    *,
    graphs: bool | None = None,
) -> Callable[[], object]:
    """An epoch of our loop over ``DeviceBatches``, as ``train_run`` trains: ``graphs`` None
    picks what it picks, ``GraphTrainer`` on CUDA (every full batch's step replayed as a
    CUDA graph; its first epoch records it) and ``train_one_epoch`` elsewhere; True is
    ``GraphTrainer`` on any device (it captures on CUDA only, and steps eagerly elsewhere),
    False ``train_one_epoch``."""
    batches = DeviceBatches(
        images, labels, batch_size=batch, mean=MEAN, std=STD, device=device, channels_last=fast
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    epochs = iter(range(1, 1_000_000))
    if graphs is None:
        graphs = device.type == "cuda"
    # .tolist() reads the epoch's sums: the one read of a real run's epoch.
    if graphs:
        trainer = GraphTrainer(model, optimizer, amp=fast)
        return lambda: trainer.train_one_epoch(batches, epoch=next(epochs)).tolist()
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
    epochs = [
        our_epoch(ours, images, labels, sizes.loop_batch, device, fast),
        reference_epoch(reference, images, labels, sizes.loop_batch, device, workers),
    ]
    ours_s, reference_s = interleaved(epochs, sizes.loop_repeats)
    return ours_s, reference_s


def measure_models(
    sizes: Sizes, device: torch.device, fast: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """Training images/s of each model of ``sizes.model_rates`` at its batch, through
    ``train_one_epoch`` (``..._eager``) and through ``GraphTrainer`` (``..._graph``), and
    ``graph_vs_eager_<model>``, the one over the other. Same initial weights, one model
    each (a recorded step holds on to its model's gradients)."""
    images, labels = synthetic_cifar(sizes.model_images)
    epochs, names = [], []
    for spec, batch in sizes.model_rates:
        torch.manual_seed(0)
        eager = on_device(spec.build(), device, fast)
        graph = copy.deepcopy(eager)
        for kind, model in (("eager", eager), ("graph", graph)):
            epochs.append(
                our_epoch(model, images, labels, batch, device, fast, graphs=kind == "graph")
            )
            names.append(f"{spec.name}_b{batch}_{kind}")
    # GraphTrainer's first epoch, untimed, records its step.
    medians = interleaved(epochs, sizes.model_repeats)
    rates = {name: sizes.model_images / s for name, s in zip(names, medians, strict=True)}
    ratios = {
        f"graph_vs_eager_{spec.family}": rates[f"{spec.name}_b{batch}_graph"]
        / rates[f"{spec.name}_b{batch}_eager"]
        for spec, batch in sizes.model_rates
    }
    return rates, ratios


@dataclass(frozen=True)
class JobTask:
    """What one worker process of a ``jobsN`` measurement does."""

    index: int
    device: str
    model: ModelSpec
    batch: int
    images: int
    fast: bool
    threads: int | None
    timeout: float
    crash: str | None = None  # "raise" or "exit": fail on purpose (tests of the failure path)


def job_worker(task: JobTask, barrier: Any, reports: Any) -> None:
    """One worker of a ``jobsN`` measurement, in a process of its own ("spawn": a function at
    the top of the module). Trains through ``GraphTrainer`` on data made on its device: one
    warm-up epoch, the barrier, then an untimed epoch and a timed one (``interleaved``).
    Reports ``(index, ("done", images, seconds))`` or ``(index, ("failed", traceback))``."""
    try:
        if task.crash == "exit":
            os._exit(70)  # as a crash ends a process: no report
        if task.crash == "raise":
            raise RuntimeError(f"worker {task.index} raised on purpose (crash={task.crash!r})")
        if task.threads is not None:
            torch.set_num_threads(task.threads)
        device = torch.device(task.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # the graph is recorded on the current device
        torch.manual_seed(task.index)
        model = on_device(task.model.build(), device, task.fast)
        images, labels = synthetic_cifar(task.images, seed=task.index, device=device)
        epoch = our_epoch(model, images, labels, task.batch, device, task.fast, graphs=True)
        epoch()  # warm-up; on CUDA it records the step (its .tolist() waits for the device)
        barrier.wait(task.timeout)
        (seconds,) = interleaved([epoch], 1)
        reports.put((task.index, ("done", task.images, seconds)))
    except Exception:
        reports.put((task.index, ("failed", traceback.format_exc())))


def run_jobs(
    count: int,
    sizes: Sizes,
    device: torch.device,
    fast: bool,
    log: Callable[[str], None],
    crash: tuple[int, str] | None = None,
) -> float | str:
    """Aggregate training images/s of ``count`` workers at once (``job_worker``): the sum of
    their images over the slowest one's seconds; or, when a worker failed, died or did not
    report within ``sizes.jobs_timeout`` seconds, why (a line; the traceback goes to
    ``log``). The other workers are then stopped: nothing waits for a dead one.

    ``crash``: ``(i, "raise" or "exit")`` makes worker i (where there is one) fail.
    """
    context = multiprocessing.get_context("spawn")  # no CUDA state of this process inherited
    barrier = context.Barrier(count)
    reports = context.Queue()
    threads = job_threads(device, count)
    processes = []
    for index, where in enumerate(job_devices(device, count)):
        task = JobTask(
            index, str(where), sizes.jobs_model, sizes.jobs_batch, sizes.jobs_images, fast,
            threads, sizes.jobs_timeout, crash[1] if crash is not None and crash[0] == index else None,
        )  # fmt: skip
        processes.append(
            context.Process(
                target=job_worker,
                args=(task, barrier, reports),
                name=f"jobs{count} worker {index}",
                daemon=True,
            )
        )
    done: dict[int, tuple[float, float]] = {}
    failure: str | None = None
    ended: dict[int, float] = {}  # worker -> when it was first seen ended without a report
    deadline = time.monotonic() + sizes.jobs_timeout
    try:
        for process in processes:
            process.start()
        while failure is None and len(done) < count:
            try:
                index, report = reports.get(timeout=0.5)
            except Empty:
                now = time.monotonic()
                for index, process in enumerate(processes):
                    if index in done or process.exitcode is None:
                        continue
                    # A report put before the end is in the queue by then: allow for reading it.
                    if now - ended.setdefault(index, now) > 2.0:
                        failure = (
                            f"worker {index} ended with exit code {process.exitcode} "
                            f"without reporting"
                        )
                        break
                if failure is None and now > deadline:
                    failure = (
                        f"timed out: {count - len(done)} of {count} workers had not reported "
                        f"after {sizes.jobs_timeout:g} s"
                    )
                continue
            if report[0] == "done":
                done[index] = (float(report[1]), float(report[2]))
            else:
                lines = report[1].strip().splitlines()
                log(f"jobs{count}: worker {index} failed:\n{report[1].rstrip()}")
                failure = f"worker {index}: {lines[-1] if lines else 'failed'}"
    finally:
        if failure is not None or len(done) < count:
            barrier.abort()  # the others stop waiting for the failed one
        grace = time.monotonic() + (30.0 if failure is None else 3.0)
        for process in processes:
            if process.pid is not None:
                process.join(timeout=max(0.1, grace - time.monotonic()))
        for process in processes:
            if process.pid is not None and process.is_alive():
                process.kill()
                process.join(timeout=10)
        reports.close()
    if failure is not None:
        log(f"jobs{count} failed: {failure}")
        return failure
    images = sum(images for images, _ in done.values())
    return images / max(seconds for _, seconds in done.values())


def measure_jobs(
    sizes: Sizes,
    device: torch.device,
    fast: bool,
    counts: Sequence[int],
    log: Callable[[str], None],
    crash: tuple[int, str] | None = None,
) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """``jobsN`` (aggregate images/s of N workers, ``run_jobs``) for each N of ``counts``,
    ``jobsN_vs_jobs1`` for each N but 1 (where 1 is one of them), and what failed and why."""
    rates: dict[str, float] = {}
    failed: dict[str, str] = {}
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()  # the workers' memory, not this process's cache
    for count in counts:
        log(f"jobs{count} ...")
        outcome = run_jobs(count, sizes, device, fast, log, crash)
        if isinstance(outcome, str):
            failed[f"jobs{count}"] = outcome
        else:
            rates[f"jobs{count}"] = outcome
    ratios: dict[str, float] = {}
    if 1 in counts:
        for count in counts:
            name = f"jobs{count}_vs_jobs1"
            if count == 1:
                continue
            if f"jobs{count}" in rates and "jobs1" in rates:
                ratios[name] = rates[f"jobs{count}"] / rates["jobs1"]
            else:
                failed[name] = "jobs1 failed" if "jobs1" in failed else f"jobs{count} failed"
    return rates, ratios, failed


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def measure_logme(sizes: Sizes, device: torch.device) -> tuple[float, float, float]:
    """Seconds of ``probe.logme`` on ``device`` and of the numpy reference (CPU) on the same
    float64 features, and how far their scores differ (relative)."""
    n, d, classes = sizes.logme_shape
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=generator, dtype=torch.float64)
    f = centres[labels] + 2 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    ours, reference = (f.to(device), labels.to(device)), (f.numpy(), labels.numpy())
    ours_s, numpy_s = interleaved(
        [lambda: logme(*ours), lambda: logme_numpy(*reference)], sizes.logme_repeats
    )
    expected = logme_numpy(*reference)
    return ours_s, numpy_s, abs(logme(*ours) - expected) / abs(expected)


def measure_features(sizes: Sizes, device: torch.device, fast: bool) -> tuple[float, float, int]:
    """Seconds of a forward pass of the steps' model on its batch, plain and through
    ``probe.features`` at every address but the head; the number of addresses."""
    model = on_device(sizes.step_model.build(), device, fast).eval()
    x, _ = step_batch(sizes, device, fast)
    addresses = layer_names(model)[:-1]

    def plain() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            model(x)

    def hooked() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            features(model, x, addresses, batch_size=len(x))

    plain_s, features_s = interleaved([plain, hooked], sizes.step_repeats)
    return plain_s, features_s, len(addresses)


def measure(sizes: Sizes, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The rows of ``args.only``: ratios, images/s, settings, goals and what failed."""
    device, workers, only = args.device, args.workers, args.only
    fast = device.type == "cuda" and not args.fp32  # bf16 autocast and channels-last
    precision = "bf16, channels-last" if fast else "fp32"
    graph = "GraphTrainer, captured" if device.type == "cuda" else "GraphTrainer, eager on CPU"
    pixels = "" if sizes.step_size == 32 else f", {sizes.step_size} px"
    step = (
        f"{sizes.step_model.label}{pixels}, batch {sizes.step_batch}, {precision}"
        f"{', compiled' if args.compile else ''}, median of {sizes.step_repeats} steps"
    )
    data = f"{sizes.data_images:,} images, batch {sizes.data_batch}"
    ratios: dict[str, float] = {}
    rates: dict[str, float] = {}
    settings: dict[str, str] = {}
    failed: dict[str, str] = {}

    if "aux_step" in only:
        log("aux_step ...")
        plain_s, aux_s = measure_aux_step(sizes, device, fast, args.compile)
        ratios["aux_step"], settings["aux_step"] = aux_s / plain_s, step
        rates["plain_step"] = sizes.step_batch / plain_s
        rates["head_step"] = sizes.step_batch / aux_s

    if "relabel_epoch" in only:
        log("relabel_epoch ...")
        plain_s, relabel_s = measure_relabel_epoch(sizes, device)
        ratios["relabel_epoch"] = relabel_s / plain_s
        batches = sizes.data_repeats * math.ceil(sizes.data_images / sizes.data_batch)
        settings["relabel_epoch"] = (
            f"PIL dataset, DataLoader 0 workers, {data}, median of {batches} batches in lockstep"
        )

    if "frozen_step" in only:
        log("frozen_step ...")
        full_s, frozen_s = measure_frozen_step(sizes, device, fast, args.compile, args.until)
        ratios["frozen_step"] = frozen_s / full_s
        rates["full_step"] = sizes.step_batch / full_s
        rates["frozen_model_step"] = sizes.step_batch / frozen_s
        settings["frozen_step"] = f"{step}; frozen through {args.until!r}"

    if "batches" in only:
        log("batches ...")
        ours_s, loader_s = measure_batches(sizes, device, workers)
        ratios["batches"] = min(loader_s.values()) / ours_s
        settings["batches"] = (
            f"DataLoader with 0 and {workers} workers, the faster; {data}, "
            f"median of {sizes.data_repeats} epochs"
        )
        rates["device_batches"] = sizes.data_images / ours_s
        rates["pil_dataloader"] = sizes.data_images / min(loader_s.values())
        for count, seconds in loader_s.items():
            rates[f"pil_dataloader_{count}_workers"] = sizes.data_images / seconds

    if "loop_vs_reference" in only:
        log("loop_vs_reference ...")
        ours_s, reference_s = measure_loops(sizes, device, fast, workers)
        ratios["loop_vs_reference"] = reference_s / ours_s
        settings["loop_vs_reference"] = (
            f"{sizes.loop_model.label}, {sizes.loop_images:,} images, batch {sizes.loop_batch}, "
            f"median of {sizes.loop_repeats} epochs; ours: "
            f"{graph if device.type == 'cuda' else 'train_one_epoch'}; reference: fp32, "
            f"{workers} workers"
        )
        rates["our_loop"] = sizes.loop_images / ours_s
        rates["reference_loop"] = sizes.loop_images / reference_s

    if "graph_vs_eager" in only and sizes.model_rates:
        log("models, eager and through GraphTrainer ...")
        model_rates, model_ratios = measure_models(sizes, device, fast)
        rates.update(model_rates)
        ratios.update(model_ratios)
        for spec, batch in sizes.model_rates:
            settings[f"graph_vs_eager_{spec.family}"] = (
                f"{spec.label}, batch {batch}, {precision}, {sizes.model_images:,} images, "
                f"median of {sizes.model_repeats} epochs; {graph} / train_one_epoch"
            )

    if "jobs" in only and args.jobs_counts:
        counts = args.jobs_counts
        jobs_rates, jobs_ratios, jobs_failed = measure_jobs(sizes, device, fast, counts, log)
        rates.update(jobs_rates)
        ratios.update(jobs_ratios)
        failed.update(jobs_failed)
        settings["jobs"] = (
            f"N processes at once, each {sizes.jobs_model.label}, batch {sizes.jobs_batch}, "
            f"{precision}, {graph}, {sizes.jobs_images:,} images an epoch; 1 warm-up epoch, "
            f"then 1 untimed and 1 timed; their images / the slowest one's seconds"
        )
        for count in counts:
            if count != 1 and 1 in counts:
                settings[f"jobs{count}_vs_jobs1"] = f"jobs{count} / jobs1 images/s"

    if "logme" in only:
        log("logme ...")
        ours_s, numpy_s, differ = measure_logme(sizes, device)
        n, d, classes = sizes.logme_shape
        ratios["logme"] = ours_s / numpy_s
        settings["logme"] = (
            f"probe.logme on {device.type} / float64 numpy (the authors' algorithm), "
            f"{n:,} x {d:,} features, {classes} classes, median of {sizes.logme_repeats}; "
            f"scores differ by {differ:.1e} (relative)"
        )

    if "features" in only:
        log("features ...")
        plain_s, features_s, count = measure_features(sizes, device, fast)
        ratios["features_vs_forward"] = features_s / plain_s
        rates["forward"] = sizes.step_batch / plain_s
        rates["features"] = sizes.step_batch / features_s
        settings["features_vs_forward"] = (
            f"probe.features at {count} addresses / a plain forward pass (no_grad, eval), {step}"
        )

    # Every ratio, measured or failed, in the order measured.
    names = [name for name in settings if name in ratios or name in failed]
    assert set(ratios) <= set(names), "every ratio needs a setting"
    goals = {name: judged(name, ratios.get(name), device) for name in names}
    return {
        "ratios": ratios,
        "images_per_s": rates,
        "settings": settings,
        "goals": goals,
        "failed": failed,
    }


def format_table(result: dict[str, Any]) -> str:
    failed = result.get("failed", {})
    lines = [
        f"{result['device']}, torch {result['torch']}, {result['date']}, {result['preset']} sizes",
        "",
        f"{'ratio':<24} {'value':>8}  {'goal':<16} {'holds':<6} setting",
    ]
    for name, goal in result["goals"].items():
        holds = {True: "yes", False: "NO", None: "-"}[goal["holds"]]
        text = "-" if goal["goal"] is None else goal["goal"]
        if goal["goal"] is not None and goal["holds"] is None:
            text = f"({text})"
        value = f"{result['ratios'][name]:>8.3f}" if name in result["ratios"] else f"{'failed':>8}"
        setting = result["settings"][name]
        if name in failed:
            setting = f"FAILED: {failed[name]}; {setting}"
        lines.append(f"{name:<24} {value}  {text:<16} {holds:<6} {setting}")
    lines += ["", f"{'images/s':<34} {'value':>10}"]
    lines += [f"{name:<34} {value:>10,.0f}" for name, value in result["images_per_s"].items()]
    lines += [
        f"{name:<34} {'failed':>10}  {reason}"
        for name, reason in failed.items()
        if name not in result["goals"]
    ]
    if "jobs" in result["settings"]:
        lines.append(f"(jobsN: {result['settings']['jobs']})")
    lines += ["", f"measured in {result['seconds']:.0f} s"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py",
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
        "--only", nargs="+", choices=ROWS, default=ROWS, metavar="ROW", help="measure these rows"
    )
    parser.add_argument(
        "--model",
        help=f"the steps' model (aux_step, frozen_step): a timm model, or {TV_DENSENET} "
        "(torchvision's DenseNet class, ImageNet stem) (default: the preset's DenseNet-BC)",
    )
    parser.add_argument("--size", type=int, default=32, help="pixels of the steps' images")
    parser.add_argument("--batch", type=int, help="the steps' batch (default: the preset's)")
    parser.add_argument("--until", default="2", help="frozen_step freezes through this")
    parser.add_argument("--compile", action="store_true", help="torch.compile the steps' models")
    parser.add_argument(
        "--fp32", action="store_true", help="on CUDA too: no bf16 autocast, no channels-last"
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
    parser.add_argument(
        "--jobs-counts",
        type=int,
        nargs="*",
        metavar="N",
        default=argparse.SUPPRESS,
        help="measure N concurrent runs (jobsN) for each N; the flag alone: none (default: "
        "1 2 4 8 on CUDA, none on CPU)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save the table here")
    args = parser.parse_args(argv)
    args.device = checked_device(parser, args.device)
    if args.device.type not in ("cpu", "cuda"):
        parser.error(
            f"argument --device: expected cpu, cuda or cuda:N, but got {args.device.type!r}"
        )
    if args.model not in (None, TV_DENSENET) and not timm.is_model(args.model):
        parser.error(
            f"argument --model: expected a timm model or {TV_DENSENET}, but got {args.model!r}"
        )
    for name, least in (("threads", 1), ("size", 1), ("batch", 1), ("workers", 0)):
        if (value := getattr(args, name)) is not None and value < least:
            parser.error(f"argument --{name}: expected a count >= {least}, but got {value}")
    if "jobs_counts" not in args:
        args.jobs_counts = [1, 2, 4, 8] if args.device.type == "cuda" else []
    if any(n < 1 for n in args.jobs_counts):
        parser.error(f"argument --jobs-counts: expected counts >= 1, but got {args.jobs_counts}")
    args.jobs_counts = sorted(set(args.jobs_counts))
    if args.json is not None and (args.json.is_dir() or not args.json.parent.is_dir()):
        parser.error(
            f"argument --json: expected a file in an existing folder, but got {str(args.json)!r}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = sizes_for(preset, args.device)
    sizes = dataclasses.replace(
        sizes,
        step_model=ModelSpec(args.model, args.model) if args.model else sizes.step_model,
        step_batch=args.batch or sizes.step_batch,
        step_size=args.size,
    )
    torch.set_num_threads(args.threads)
    if args.device.type == "cuda" and args.device.index is not None:
        torch.cuda.set_device(args.device)  # where GraphTrainer records its graphs
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    measured = measure(sizes, args, log)
    result: dict[str, Any] = {
        "device": device_name(args.device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "command": shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "preset": preset,
        "mps": mps_running() if args.device.type == "cuda" else None,
        **measured,
        "seconds": time.perf_counter() - started,
    }
    bad = [
        k for k, v in {**result["ratios"], **result["images_per_s"]}.items() if not math.isfinite(v)
    ]
    if bad:
        raise RuntimeError(f"Expected finite measurements, but got {bad} (a zero time?)")
    print(format_table(result))
    if args.json is not None:
        text = json.dumps(result, indent=2) + "\n"
        replace_atomically(args.json, lambda tmp: tmp.write_text(text))
    if result["failed"]:
        print(
            f"run.py: {len(result['failed'])} measurement(s) failed: "
            + "; ".join(f"{name}: {why}" for name, why in result["failed"].items()),
            file=sys.stderr,
        )
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
