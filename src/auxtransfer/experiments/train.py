"""One training run: a plain, exact-to-resume loop writing its own run directory.

``train_run`` puts the pieces together: the run directory
([`rundir`][auxtransfer.experiments.rundir]: ``config.json``, ``metrics.csv``, ``results.json``),
the checkpoint ([`checkpoint`][auxtransfer.experiments.checkpoint]: ``last.pt``, every rank's random
state) and the epoch loop ([`loop`][auxtransfer.experiments.loop]). A finished run is never
overwritten; an unfinished one is continued only with ``resume=True``, from exactly where it
stopped: weights, optimizer, scheduler, epoch and random state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..heads import RandomPartitionHead
from ..partition import as_partition
from .batches import DeviceBatches, LoaderBatches
from .checkpoint import gather_rng_states, load_checkpoint, save_checkpoint, save_weights
from .graphs import GraphTrainer
from .loop import (
    evaluate,
    head_learning_rate,
    learning_rates,
    rank_and_world,
    train_averages,
    train_one_epoch,
)
from .rundir import SCORES_FILE, RunDir, format_learning_rates, summarise_metrics, write_json
from .scores import transfer_scores
from .settings import RunConfig, Schedule
from .transfer import (
    build_transfer_model,
    check_source,
    load_backbone,
    resolve_run,
    set_learning_rates,
    timm_model,
    transfer_groups,
)

__all__ = ["RunConfig", "train_run"]


def train_run(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    train_data: tuple[Tensor, Tensor] | Dataset[Any],
    test_data: tuple[Tensor, Tensor] | Dataset[Any],
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    build_model: Callable[[RunConfig], nn.Module] | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
    cuda_graphs: bool = True,
    partition: Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Train ``config.model`` on ``train_data``, evaluating on ``test_data`` every epoch.

    Under ``torchrun`` (an initialised process group) the model is wrapped in DDP, every
    rank trains on its shard of each epoch, and rank 0 alone writes the run directory.

    Args:
        config: The run's settings.
        run_dir: The run directory (created; a finished one is refused).
        train_data: ``(images, labels)`` to train on, uint8 or float images, made into
            batches on the device, augmented as ``config.pad`` and ``config.flip`` say
            ([`DeviceBatches`][auxtransfer.experiments.batches.DeviceBatches]); or a map-style
            dataset of transformed image tensors, loaded through a ``DataLoader`` with
            ``config.num_workers`` workers (``LoaderBatches``).
        test_data: The same for the data to evaluate on after every epoch.
        mean: Per-channel mean of the images, in 0-1 pixel units (tensors only).
        std: Per-channel standard deviation, in 0-1 pixel units (tensors only).
        device: Where to train.
        resume: Continue an unfinished run from its ``last.pt``.
        build_model: Makes the model from the config (default: ``timm.create_model``).
        progress: A tqdm bar on rank 0.
        stop_after: Train at most this many epochs in this call and leave the run
            unfinished (a job with a time limit); ``resume=True`` continues it.
        param_groups: Makes the optimizer's parameter groups from the model, each with its
            own starting ``lr`` (e.g. ``lambda m: layerwise_lr(m, until="2.9", lr=0.01,
            new_lr=0.1)``); the milestones scale every group from its own, or, with an
            ``lr_table``, each group takes the rate of its ``"role"``. Every group's rate is
            logged (``lr_groups``), named by its ``"addresses"`` where it has them. Default:
            one group at ``config.lr``, or a transfer run's kept and new groups.
        cuda_graphs: Replay every full training and evaluation batch as a CUDA graph
            ([`GraphTrainer`][auxtransfer.experiments.graphs.GraphTrainer]) where that is possible: on
            CUDA, in one process, without ``config.compile``. Not a setting of the run: a
            run may be resumed with it on or off.
        partition: The ``[1, num_classes]`` group ids of a run with
            ``aux_labels="coarse"`` (``run_partition_for``); None for every other run.
        log: Called on rank 0 with one line per epoch: its losses, errors and seconds
            (``--jobs`` writes them to each run's ``train.log``).

    Returns:
        The content of ``results.json``, or None when ``stop_after`` stopped the run early.
    """
    run = RunDir(run_dir)
    rank, world = rank_and_world()
    device = torch.device(device)
    settings = config.to_json()
    run.check_start(settings, resume=resume, defaults=RunConfig.defaults())
    source = resolve_run(run.path, config.transfer_from) if config.transfer_from else None
    _check_settings(config, train_data, test_data, world, stop_after, source, partition)

    net, partition, kept = _build_model(
        config, build_model or _timm_model, device, rank, source, partition
    )
    optimizer = _build_optimizer(config, net, param_groups, kept)
    batches = _batches(train_data, config, device, mean, std, train=True, rank=rank,
        world=world, partition=partition)  # fmt: skip
    tests = _batches(test_data, config, device, mean, std, train=False)
    start_epoch, saved_rows = 1, None
    if resume and run.checkpoint_path.exists():
        resumed = load_checkpoint(
            run.checkpoint_path, config=settings, model=net, optimizer=optimizer,
            rank=rank, world=world, device=device, defaults=RunConfig.defaults(),
        )  # fmt: skip
        start_epoch, saved_rows = 1 + resumed.epoch, resumed.metrics
        if rank == 0 and saved_rows is None:  # a checkpoint from before it kept the rows
            run.check_metrics(through=resumed.epoch)  # before anything is rewritten
    if rank == 0:
        run.write_config(settings)
        if saved_rows is not None:
            # The rows of the checkpoint's epochs, whatever the file holds: a row torn by a
            # kill mid-write comes back whole, and rows of later epochs are dropped.
            run.write_metrics(saved_rows)
        else:
            # Rows of epochs after the checkpoint (a run stopped between writing its
            # metrics and its checkpoint) are dropped: those epochs run again.
            run.truncate_metrics(before=start_epoch)
    if rank == 0 and source is not None and start_epoch == 1:
        # Before the first epoch on B: what the transferred features promise. No random
        # numbers are drawn (models are built on a forked generator), so the run trains as
        # it would without.
        a_net = load_backbone(source, which=config.transfer_weights).to(device)
        scored = _batches(train_data, config, device, mean, std, train=False)
        write_json(run.path / SCORES_FILE, transfer_scores(net, a_net, scored))
        del a_net
    logged = (saved_rows or run.read_metrics()) if rank == 0 and start_epoch > 1 else []
    best_error = min((float(row["test_error"]) for row in logged), default=math.inf)

    trainer = _wrap_for_training(net, config, device, world)
    use_amp = config.amp and device.type == "cuda"
    # After the checkpoint is loaded: the recorded steps read the tensors where they are.
    graphs = (
        GraphTrainer(net, optimizer, aux_weight=config.binary_weight, amp=use_amp)
        if cuda_graphs and device.type == "cuda" and world == 1 and not config.compile
        else None
    )
    schedule, roles = _schedule(config, optimizer.param_groups)
    bar = _progress(progress and rank == 0, config.epochs, start_epoch)
    last_epoch = (
        config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after - 1)
    )
    for epoch in range(start_epoch, last_epoch + 1):
        started = time.perf_counter()
        set_learning_rates(optimizer.param_groups, epoch, schedule, roles)
        lr = head_learning_rate(optimizer.param_groups)
        lr_groups = format_learning_rates(learning_rates(optimizer.param_groups))
        if graphs is not None:
            sums = graphs.train_one_epoch(batches, epoch=epoch)
            test_loss, test_error = graphs.evaluate(tests)
        else:
            sums = train_one_epoch(trainer, batches, optimizer, epoch=epoch,
                aux_weight=config.binary_weight, amp=use_amp)  # fmt: skip
            test_loss, test_error = evaluate(trainer, tests, amp=use_amp)
        averages = train_averages(sums, world=world, aux=partition is not None)
        row = {
            "phase": config.phase,
            "epoch": epoch,
            "lr": lr,
            **averages,
            "test_loss": test_loss,
            "test_error": test_error,
            "seconds": round(time.perf_counter() - started, 3),
            "lr_groups": lr_groups,
        }
        rng_states = gather_rng_states(device, world)
        if rank == 0:
            logged.append(row)
            run.append_metrics(row, fresh=epoch == 1)
            if test_error < best_error:  # the paper kept A's best epoch (on A's test set)
                best_error = test_error
                save_weights(
                    run.best_path, config=settings, epoch=epoch, test_error=test_error, model=net
                )
            save_checkpoint(
                run.checkpoint_path, config=settings, epoch=epoch, model=net,
                optimizer=optimizer, rng_states=rng_states, metrics=logged,
            )  # fmt: skip
        if world > 1:
            dist.barrier()
        if bar is not None:
            bar.set_postfix(test_error=f"{test_error:.2f}", loss=f"{row['train_loss']:.3f}")
            bar.update(1)
        if log is not None and rank == 0:
            log(f"epoch {epoch}/{config.epochs}: train loss {row['train_loss']:.4f}, error "
                f"{row['train_error']:.2f} %; test loss {test_loss:.4f}, error {test_error:.2f} % "
                f"(lr {lr:g}, {row['seconds']:.1f} s)")  # fmt: skip
    if bar is not None:
        bar.close()
    if last_epoch < config.epochs:
        return None
    results = summarise_metrics(run.read_metrics() if rank == 0 else [], epochs=config.epochs)
    if rank == 0:
        run.write_results(results)
    return results


def _batches(
    data: tuple[Tensor, Tensor] | Dataset[Any],
    config: RunConfig,
    device: torch.device,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    *,
    train: bool,
    rank: int = 0,
    world: int = 1,
    partition: Tensor | None = None,
) -> DeviceBatches | LoaderBatches:
    """Training batches (shuffled, augmented, this rank's share) or test batches (all, in
    order, 256 at a time)."""
    size = config.batch_size if train else min(256, _length(data))
    if isinstance(data, tuple):
        if mean is None or std is None:
            raise ValueError(
                "Expected `mean` and `std` with (images, labels) tensors, but got none."
            )
        return DeviceBatches(*data, batch_size=size, mean=mean, std=std, device=device,
            train=train, seed=config.seed, pad=config.pad, flip=config.flip,
            partition=partition, rank=rank, world_size=world,
            channels_last=config.channels_last)  # fmt: skip
    return LoaderBatches(data, batch_size=size, device=device, train=train, seed=config.seed,
        partition=partition, rank=rank, world_size=world, num_workers=config.num_workers,
        channels_last=config.channels_last)  # fmt: skip


def _length(data: tuple[Tensor, Tensor] | Dataset[Any]) -> int:
    return len(data[1]) if isinstance(data, tuple) else len(data)  # type: ignore[arg-type]


def _labels(data: tuple[Tensor, Tensor] | Dataset[Any]) -> Tensor | None:
    """The labels, where they are known without loading images."""
    if isinstance(data, tuple):
        return data[1]
    targets = getattr(data, "targets", None)
    return None if targets is None else torch.as_tensor(targets)


def _timm_model(config: RunConfig) -> nn.Module:
    return timm_model(config.model, config.num_classes, config.model_kwargs)


def _build_model(
    config: RunConfig,
    build_model: Callable[[RunConfig], nn.Module],
    device: torch.device,
    rank: int,
    source: Path | None,
    given: Tensor | None,
) -> tuple[nn.Module, Tensor | None, str | None]:
    """The model on ``device`` (with the auxiliary head when ``binary_weight > 0``), its
    partition (drawn, or ``given``), and a transfer run's last kept address; leaves the
    global generator seeded for this rank's dropout masks."""
    torch.manual_seed(config.seed)  # the model's initial weights: the same on every rank
    kept = None
    if source is None:
        model = build_model(config)
    else:
        model, kept = build_transfer_model(config.to_json(), source, seed=config.seed)
    # From here on each rank draws its own dropout masks.
    torch.manual_seed((config.seed + 1_000_003 * rank) % 2**63)
    net: nn.Module = model
    partition = None
    if config.binary_weight > 0 and given is not None:
        net = RandomPartitionHead(model, partition=given, seed=config.partition_seed)
        partition = net.partition
    elif config.binary_weight > 0:
        net = RandomPartitionHead(
            model,
            num_partitions=config.num_partitions,
            num_groups=config.num_groups,
            seed=config.partition_seed,
        )
        partition = net.partition
    net = net.to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, partition, kept


def _build_optimizer(
    config: RunConfig,
    net: nn.Module,
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None,
    kept: str | None,
) -> torch.optim.Optimizer:
    """SGD with momentum over the run's parameter groups; rates are set every epoch."""
    if param_groups is not None:
        groups: Any = param_groups(net)
    elif config.transfer_from is not None:
        groups = transfer_groups(net, config.schedule, until=kept)
    else:
        groups = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])  # what the milestones scale
    return optimizer


def _schedule(config: RunConfig, groups: list[dict[str, Any]]) -> tuple[Schedule, list[int]]:
    """The run's schedule and each optimizer group's role in it. With an ``lr_table`` a
    group takes the rates of its ``"role"``; without one, each group is a role of its own,
    its starting rate times ``gamma`` from each milestone on (as ``MultiStepLR``)."""
    if config.lr_table:
        return config.schedule, [g.get("role", 0) for g in groups]
    steps = range(len(config.milestones) + 1)
    rates = tuple(tuple(g["initial_lr"] * config.gamma**k for k in steps) for g in groups)
    return Schedule(config.epochs, config.milestones, rates), list(range(len(groups)))


def _wrap_for_training(
    net: nn.Module, config: RunConfig, device: torch.device, world: int
) -> nn.Module:
    """``net`` in DDP under ``torchrun``; with ``config.compile``, compiled for its full
    training batches."""
    trainer: nn.Module = net
    if world > 1:
        trainer = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        trainer = CompiledTraining(trainer, batch_size=config.batch_size,
            backend=config.compile_backend)  # fmt: skip
    return trainer


class CompiledTraining(nn.Module):
    """A model compiled once, for its full training batches; everything else runs eagerly.

    ``torch.compile`` specialises on what it sees, and recompiles when that changes: for
    the short last batch of an epoch (a second, dynamic-shape compile of forward and
    backward), then for evaluation (eval mode, no gradients). For DenseNet-BC-100 with
    inductor that is several minutes before the first epoch ends. Here the compiled module
    sees only full training batches (``dynamic=False``), so it is compiled once; the last
    short batch and evaluation (a fifth of an epoch's images, forward only) run the same
    model eagerly.

    Args:
        model: The model (or its DDP wrapper).
        batch_size: The training batch size, the one shape compiled.
        backend: ``torch.compile``'s backend.
    """

    def __init__(self, model: nn.Module, *, batch_size: int, backend: str = "inductor") -> None:
        super().__init__()
        self.model = model
        self.batch_size = batch_size
        # Not a submodule: the compiled wrapper shares ``model``'s parameters.
        self._compiled = [torch.compile(model, backend=backend, dynamic=False)]

    def forward(self, x: Tensor) -> Any:
        if self.training and torch.is_grad_enabled() and x.shape[0] == self.batch_size:
            return self._compiled[0](x)
        return self.model(x)


def _check_settings(
    config: RunConfig,
    train_data: tuple[Tensor, Tensor] | Dataset[Any],
    test_data: tuple[Tensor, Tensor] | Dataset[Any],
    world: int,
    stop_after: int | None,
    source: Path | None,
    partition: Tensor | None,
) -> None:
    """Everything that can be checked before a file is written."""
    import timm

    from .. import models  # noqa: F401  (registers the CIFAR models)

    if not timm.is_model(config.model):
        raise ValueError(
            f"Expected `model` to be a timm model name (e.g. cifar_densenet_bc_100), but got {config.model!r}."
        )
    config.check(transfer=source is not None)
    if source is not None:
        check_source(config.to_json(), source)
    _check_aux_labels(config, partition)
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"Expected `stop_after` to be at least 1 epoch, but got {stop_after}.")
    for name, data in (("train_data", train_data), ("test_data", test_data)):
        if not isinstance(data, tuple) and not (
            hasattr(data, "__getitem__") and hasattr(data, "__len__")
        ):
            raise TypeError(
                f"Expected `{name}` to be an (images, labels) pair of tensors or a map-style "
                f"dataset, but got {type(data).__name__}."
            )
        labels = _labels(data)
        if (
            labels is not None
            and len(labels)
            and (int(labels.min()) < 0 or int(labels.max()) >= config.num_classes)
        ):
            raise ValueError(
                f"Expected the labels of `{name}` to be in [0, {config.num_classes}) (`num_classes`), "
                f"but they span [{int(labels.min())}, {int(labels.max())}]: does the class split fit the data?"
            )
    augment = (config.pad, config.flip)
    if not isinstance(train_data, tuple) and augment != (RunConfig.pad, RunConfig.flip):
        raise ValueError(
            f"Expected `pad` and `flip` at their defaults ({RunConfig.pad}, {RunConfig.flip}) "
            f"for data given as a dataset, which augments in its own transforms, but got "
            f"pad={config.pad}, flip={config.flip}."
        )
    per_rank = -(-_length(train_data) // world)
    if config.batch_size > per_rank:
        raise ValueError(
            f"Expected `batch_size` to be at most the {per_rank} training images of each of the "
            f"{world} process(es), but got {config.batch_size}."
        )


def _check_aux_labels(config: RunConfig, partition: Tensor | None) -> None:
    """A run learning coarse labels is given their partition; no other run is."""
    coarse = config.aux_labels == "coarse" and config.binary_weight > 0
    if coarse and partition is None:
        raise ValueError(
            "Expected `partition`, the coarse labels of the run's classes "
            "(run_partition_for(config, source)), for aux_labels='coarse', but got None."
        )
    if not coarse and partition is not None:
        raise ValueError(
            f"Expected no `partition` for a run that draws its own (aux_labels="
            f"{config.aux_labels!r}, binary_weight={config.binary_weight:g}), but got one."
        )
    if partition is not None:
        partition = as_partition(partition, num_classes=config.num_classes)
        if partition.shape[0] != 1:
            raise ValueError(
                f"Expected `partition` to hold one row of group ids, but got {partition.shape[0]}."
            )


def _progress(enabled: bool, total: int, start: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=start - 1, unit="epoch")
