"""One training run: a plain, exact-to-resume loop writing its own run directory.

A run directory holds ``config.json`` (every setting), ``metrics.csv`` (one row per epoch),
``last.pt`` (the last checkpoint, written to a temporary file and then ``os.replace``d)
and, once finished, ``results.json``. A finished run is never overwritten; an unfinished
one is continued only with ``resume=True``, from exactly where it stopped: weights,
optimizer, scheduler, epoch and random state.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..heads import RandomPartitionHead
from ..losses import combined_loss_terms
from .batches import DeviceBatches

__all__ = ["RunConfig", "train_run"]

_FIELDS = [
    "phase", "epoch", "lr", "train_loss", "train_error", "test_loss", "test_error",
    "train_binary_loss", "train_binary_error", "seconds",
]  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run; saved as ``config.json``.

    ``milestones`` are the epochs (1-based) at whose start the learning rate is multiplied
    by ``gamma``: the paper's pre-training is ``epochs=175, milestones=(126, 151)``.
    ``binary_weight > 0`` adds a :class:`~auxtransfer.RandomPartitionHead` with
    ``num_partitions`` partitions seeded by ``partition_seed``.
    """

    model: str
    num_classes: int
    epochs: int
    lr: float = 0.1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    batch_size: int = 64
    binary_weight: float = 0.0
    num_partitions: int = 1
    partition_seed: int = 0
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    phase: str = "train"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data


def _replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, then rename it over."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _atomic_save(obj: Any, path: Path) -> None:
    _replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def _atomic_write(text: str, path: Path) -> None:
    _replace_atomically(path, lambda tmp: tmp.write_text(text))


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_run(
    config: RunConfig,
    run_dir: str | os.PathLike[str],
    train_data: tuple[Tensor, Tensor],
    test_data: tuple[Tensor, Tensor],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: str | torch.device = "cpu",
    resume: bool = False,
    build_model: Callable[[RunConfig], nn.Module] | None = None,
    progress: bool = False,
    stop_after: int | None = None,
    param_groups: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
) -> dict[str, Any] | None:
    """Train ``config.model`` on ``train_data``, evaluating on ``test_data`` every epoch.

    Under ``torchrun`` (an initialised process group) the model is wrapped in DDP, every
    rank trains on its shard of each epoch, and rank 0 alone writes the run directory.

    Args:
        config: The run's settings.
        run_dir: The run directory (created; a finished one is refused).
        train_data: ``(images, labels)`` to train on, uint8 or float images.
        test_data: ``(images, labels)`` to evaluate on after every epoch.
        mean: Per-channel mean of the images, in 0-1 pixel units.
        std: Per-channel standard deviation, in 0-1 pixel units.
        device: Where to train.
        resume: Continue an unfinished run from its ``last.pt``.
        build_model: Makes the model from the config (default: ``timm.create_model``).
        progress: A tqdm bar on rank 0.
        stop_after: Train at most this many epochs in this call and leave the run
            unfinished (a job with a time limit); ``resume=True`` continues it.
        param_groups: Makes the optimizer's parameter groups from the model, each with its
            own starting ``lr`` (e.g. ``lambda m: layerwise_lr(m, until="2.9", lr=0.01,
            new_lr=0.1)``); the schedule scales every group from its own. Default: one
            group at ``config.lr``.

    Returns:
        The content of ``results.json``, or None when ``stop_after`` stopped the run early.
    """
    run_dir = Path(run_dir)
    rank, world = _distributed()
    device = torch.device(device)
    _check_run_dir(run_dir, config, resume)
    _check_settings(config, train_data, test_data, world, stop_after)

    torch.manual_seed(config.seed)  # the model's initial weights: the same on every rank
    model = (build_model or _timm_model)(config)
    # From here on each rank draws its own dropout masks.
    torch.manual_seed((config.seed + 1_000_003 * rank) % 2**63)
    net: nn.Module = model
    partition = None
    if config.binary_weight > 0:
        net = RandomPartitionHead(
            model, num_partitions=config.num_partitions, seed=config.partition_seed
        )
        partition = net.partition
    net = net.to(device)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        net.parameters() if param_groups is None else param_groups(net),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m - 1 for m in config.milestones], gamma=config.gamma
    )
    start_epoch = 1
    if resume and (run_dir / "last.pt").exists():
        start_epoch = _load_checkpoint(
            run_dir / "last.pt", config, net, optimizer, scheduler, rank, world
        )
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(json.dumps(config.to_json(), indent=2) + "\n", run_dir / "config.json")
        # Rows of epochs after the checkpoint (a run stopped between writing its metrics and
        # its checkpoint) are dropped: those epochs run again.
        _truncate_metrics(run_dir / "metrics.csv", before=start_epoch)

    trainer: nn.Module = net
    if world > 1:
        trainer = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        trainer = torch.compile(trainer, backend=config.compile_backend)  # type: ignore[assignment]

    batches = DeviceBatches(
        *train_data, batch_size=config.batch_size, mean=mean, std=std, device=device, train=True,
        seed=config.seed, partition=partition, rank=rank, world_size=world, channels_last=config.channels_last,
    )  # fmt: skip
    tests = DeviceBatches(
        *test_data, batch_size=min(256, len(test_data[1])), mean=mean, std=std, device=device, train=False,
        channels_last=config.channels_last,
    )  # fmt: skip
    use_amp = config.amp and device.type == "cuda"
    bar = _progress(progress and rank == 0, config.epochs, start_epoch)
    last_epoch = (
        config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after - 1)
    )
    for epoch in range(start_epoch, last_epoch + 1):
        started = time.perf_counter()
        lr = optimizer.param_groups[-1]["lr"]  # the last group: the head's rate
        batches.set_epoch(epoch)
        trainer.train()
        sums = torch.zeros(
            5, device=device, dtype=torch.float64
        )  # loss, errors, binary loss, binary errors, count
        for batch in batches:
            x, y = batch[0], batch[1]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = trainer(x)
            # One per-sample loss serves the step and the metrics, in float32 whatever
            # precision the forward ran in. Metrics count each image once: the wrap-around
            # repeats that even out the DDP ranks take part in the step, not in the averages
            # (a 0/1 weight, not a boolean index, so the step never waits for the device).
            kept = batches.last_batch_original.double()
            if partition is not None:
                logits, aux_logits = out[0].float(), out[1].float()
                terms = combined_loss_terms(
                    (logits, aux_logits), y, batch[2], config.binary_weight, reduction="none"
                )
                per_sample = terms.total
                binary_wrong = (aux_logits.argmax(-1) != batch[2]).double().mean(1)
                sums[2] += (terms.binary.detach().double() * kept).sum()
                sums[3] += (binary_wrong * kept).sum()
            else:
                logits = out.float()
                per_sample = F.cross_entropy(logits, y, reduction="none")
            loss = per_sample.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums[0] += (per_sample.detach().double() * kept).sum()
            sums[1] += ((logits.argmax(1) != y).double() * kept).sum()
            sums[4] += kept.sum()
        scheduler.step()
        if world > 1:
            dist.all_reduce(sums)
        test_loss, test_error = _evaluate(trainer, tests, use_amp, device)
        count = float(sums[4])
        row = {
            "phase": config.phase,
            "epoch": epoch,
            "lr": lr,
            "train_loss": float(sums[0]) / count,
            "train_error": 100.0 * float(sums[1]) / count,
            "test_loss": test_loss,
            "test_error": test_error,
            "train_binary_loss": float(sums[2]) / count if partition is not None else "",
            "train_binary_error": 100.0 * float(sums[3]) / count if partition is not None else "",
            "seconds": round(time.perf_counter() - started, 3),
        }
        rng = _gather_rng(device, world)
        if rank == 0:
            _append_metrics(run_dir / "metrics.csv", row, fresh=epoch == 1)
            _atomic_save(
                {
                    "format": "auxtransfer-run-v1",
                    "config": config.to_json(),
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng,
                },
                run_dir / "last.pt",
            )
        if world > 1:
            dist.barrier()
        if bar is not None:
            bar.set_postfix(test_error=f"{test_error:.2f}", loss=f"{row['train_loss']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    if last_epoch < config.epochs:
        return None
    rows = _read_metrics(run_dir / "metrics.csv") if rank == 0 else []
    best = min(rows, key=lambda r: float(r["test_error"])) if rows else None
    results = {
        "epochs": config.epochs,
        "final_test_error": float(rows[-1]["test_error"]) if rows else math.nan,
        "best_test_error": float(best["test_error"]) if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else None,
    }
    if rank == 0:
        _atomic_write(json.dumps(results, indent=2) + "\n", run_dir / "results.json")
    return results


def _timm_model(config: RunConfig) -> nn.Module:
    import timm

    return timm.create_model(
        config.model, pretrained=False, num_classes=config.num_classes, **config.model_kwargs
    )


def _check_run_dir(run_dir: Path, config: RunConfig, resume: bool) -> None:
    if (run_dir / "results.json").exists():
        raise FileExistsError(
            f"{run_dir} holds a finished run (results.json); choose another run directory."
        )
    if (run_dir / "last.pt").exists() and not resume:
        raise FileExistsError(
            f"{run_dir} holds an unfinished run (last.pt); pass resume=True to continue it."
        )
    saved = run_dir / "config.json"
    if resume and saved.exists():
        previous, current = json.loads(saved.read_text()), _normalised(config.to_json())
        if previous != current:
            changed = sorted(
                k for k in set(previous) | set(current) if previous.get(k) != current.get(k)
            )
            raise ValueError(
                f"Expected the settings of the run in {run_dir} to resume it, but these differ: {changed}."
            )


def _load_checkpoint(
    path: Path,
    config: RunConfig,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rank: int,
    world: int,
) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Expected {path} to be an auxtransfer checkpoint, but it cannot be read: {error}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != "auxtransfer-run-v1":
        raise ValueError(
            f"Expected {path} to be an auxtransfer run checkpoint, but it is not (no 'format' tag)."
        )
    if _normalised(state["config"]) != _normalised(config.to_json()):
        raise ValueError(
            f"Expected {path} to belong to this run's settings, but it was written by another run."
        )
    if len(state["rng"]) != world:
        raise ValueError(
            f"Expected to resume {path} with the {len(state['rng'])} processes that wrote it, but got {world}."
        )
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    cpu, accelerator = state["rng"][rank]
    torch.set_rng_state(cpu)
    if accelerator is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(accelerator)
    return int(state["epoch"]) + 1


def _gather_rng(device: torch.device, world: int) -> list[tuple[Tensor, Tensor | None]]:
    """Every rank's (CPU, current CUDA device) random state, in rank order."""
    mine = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )
    if world == 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return [(cpu.cpu(), None if cuda is None else cuda.cpu()) for cpu, cuda in gathered]


def _normalised(data: dict[str, Any]) -> Any:
    """The config as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(data))


def _check_settings(
    config: RunConfig,
    train_data: tuple[Tensor, Tensor],
    test_data: tuple[Tensor, Tensor],
    world: int,
    stop_after: int | None,
) -> None:
    """Everything that can be checked before a file is written."""
    import timm

    from .. import models  # noqa: F401  (registers the CIFAR models)

    if not timm.is_model(config.model):
        raise ValueError(
            f"Expected `model` to be a timm model name (e.g. cifar_densenet_bc_100), but got {config.model!r}."
        )
    if config.epochs < 1:
        raise ValueError(f"Expected `epochs` to be at least 1, but got {config.epochs}.")
    milestones = list(config.milestones)
    if milestones != sorted(set(milestones)) or any(not 1 < m <= config.epochs for m in milestones):
        raise ValueError(
            f"Expected `milestones` to be increasing epochs in [2, {config.epochs}] (the epochs whose "
            f"start lowers the learning rate), but got {milestones}."
        )
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"Expected `stop_after` to be at least 1 epoch, but got {stop_after}.")
    for name, (_, labels) in (("train_data", train_data), ("test_data", test_data)):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= config.num_classes):
            raise ValueError(
                f"Expected the labels of `{name}` to be in [0, {config.num_classes}) (`num_classes`), "
                f"but they span [{int(labels.min())}, {int(labels.max())}]: does the class split fit the data?"
            )
    per_rank = -(-len(train_data[1]) // world)
    if config.batch_size > per_rank:
        raise ValueError(
            f"Expected `batch_size` to be at most the {per_rank} training images of each of the "
            f"{world} process(es), but got {config.batch_size}."
        )


def _truncate_metrics(path: Path, *, before: int) -> None:
    if not path.exists():
        return
    rows = [row for row in _read_metrics(path) if int(row["epoch"]) < before]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    _replace_atomically(path, write)


@torch.no_grad()
def _evaluate(
    model: nn.Module, batches: DeviceBatches, amp: bool, device: torch.device
) -> tuple[float, float]:
    model.eval()
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss, errors: read once at the end
    count = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        logits = (out[0] if isinstance(out, tuple) else out).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) != y).sum()
        count += len(y)
    loss, wrong = sums.tolist()
    return loss / count, 100.0 * wrong / count


def _append_metrics(path: Path, row: dict[str, Any], *, fresh: bool) -> None:
    new = fresh or not path.exists()
    with path.open("w" if new else "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _progress(enabled: bool, total: int, start: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=start - 1, unit="epoch")
