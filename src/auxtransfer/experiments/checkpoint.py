"""The checkpoint of a run: everything needed to continue it exactly where it stopped.

A checkpoint (``last.pt``) is a dict tagged ``"format": "auxtransfer-run-v1"`` holding the
run's settings, the last finished epoch, the model and optimizer states (the learning rates
are a function of the epoch), and the random state of every process of the run (CPU, and
CUDA on the run's device). The weights of the best epoch so far (``best.pt``, tagged
``"auxtransfer-weights-v1"``) sit beside it. Both are written to a temporary file and
renamed over the old one, and read with ``torch.load(..., weights_only=True)``: a file that
is not what it should be is refused, never loaded in a weaker way.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .rundir import RunDir, as_json, differing_keys, replace_atomically

__all__ = [
    "CHECKPOINT_FORMAT",
    "RngState",
    "epochs_done",
    "gather_rng_states",
    "load_checkpoint",
    "read_checkpoint",
    "read_weights",
    "restore_rng_state",
    "save_checkpoint",
    "save_weights",
]

CHECKPOINT_FORMAT = "auxtransfer-run-v1"
WEIGHTS_FORMAT = "auxtransfer-weights-v1"

#: One process's random state: the CPU generator's, and the CUDA generator's of the run's
#: device (None when the run is not on CUDA).
RngState: TypeAlias = tuple[Tensor, Tensor | None]


def gather_rng_states(device: torch.device, world: int) -> list[RngState]:
    """Every process's random state, in rank order (a collective under DDP: call it on all).

    Args:
        device: The run's device; its CUDA generator is saved when it is a CUDA device.
        world: The number of processes of the run.

    Returns:
        One ``RngState`` per rank, on the CPU.
    """
    mine = (
        torch.get_rng_state(),
        torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )
    if world == 1:
        return [mine]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return [(cpu.cpu(), None if cuda is None else cuda.cpu()) for cpu, cuda in gathered]


def restore_rng_state(state: RngState, device: torch.device) -> None:
    """Set the CPU generator, and the CUDA generator of ``device``, to a saved state.

    The CUDA state goes to the run's device, not to whichever device is current: a process
    may train on ``cuda:1`` while ``cuda:0`` is current. A saved CUDA state is ignored when
    the run is not on CUDA.

    Args:
        state: One process's saved state (see ``gather_rng_states``).
        device: The run's device.
    """
    cpu, accelerator = state
    torch.set_rng_state(cpu)
    if accelerator is not None and device.type == "cuda":
        torch.cuda.set_rng_state(accelerator, device)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng_states: list[RngState],
    metrics: Sequence[Mapping[str, Any]] | None = None,
) -> None:
    """Write a checkpoint atomically (a temporary file renamed over ``path``).

    Args:
        path: Where to write it (``last.pt`` of the run directory).
        config: The run's settings (JSON-able).
        epoch: The last finished epoch.
        model: The model, unwrapped from DDP and ``torch.compile``.
        optimizer: The optimizer.
        rng_states: Every process's random state (``gather_rng_states``).
        metrics: The rows of ``metrics.csv`` up to ``epoch``: a resume rewrites the file
            from them, so a row torn by a kill mid-write comes back whole.
    """
    extra: dict[str, Any] = {"optimizer": optimizer.state_dict(), "rng": rng_states}
    if metrics is not None:  # as metrics.csv holds them: text
        extra["metrics"] = [{k: "" if v is None else str(v) for k, v in r.items()} for r in metrics]
    _save(path, CHECKPOINT_FORMAT, config, epoch, model, **extra)


def save_weights(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    epoch: int,
    test_error: float,
    model: nn.Module,
) -> None:
    """Write a model's weights atomically, with the settings and epoch they come from.

    Args:
        path: Where to write them (``best.pt`` of the run directory).
        config: The run's settings (JSON-able).
        epoch: The epoch after which the weights were taken.
        test_error: Their test error, in percent.
        model: The model, unwrapped from DDP and ``torch.compile``.
    """
    _save(path, WEIGHTS_FORMAT, config, epoch, model, test_error=test_error)


def _save(path: Any, tag: str, config: Mapping[str, Any], epoch: int, model: nn.Module,
          **extra: Any) -> None:  # fmt: skip
    state = {"format": tag, "config": dict(config), "epoch": epoch, "model": model.state_dict()}
    replace_atomically(Path(path), lambda tmp: torch.save({**state, **extra}, tmp))


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The model state saved by ``save_weights``, read onto the CPU with ``weights_only=True``.

    Raises:
        ValueError: The file cannot be read that way, or is not such a file.
    """
    return dict(_read(path, WEIGHTS_FORMAT, "weights file")["model"])


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``weights_only=True``, checking its format tag.

    Raises:
        ValueError: The file cannot be read that way, or is not a run checkpoint.
    """
    return _read(path, CHECKPOINT_FORMAT, "run checkpoint")


def _read(path: str | os.PathLike[str], tag: str, kind: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Expected {path} to be an auxtransfer checkpoint, but it cannot be read: "
            f"{_unreadable(path, error)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != tag:
        raise ValueError(
            f"Expected {path} to be an auxtransfer {kind}, but it is not (no {tag!r} tag)."
        )
    return state


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    config: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int,
    world: int,
    device: torch.device,
    defaults: Mapping[str, Any] | None = None,
) -> Resumed:
    """Continue a run from its checkpoint: load the states and this process's random state.

    Everything is checked before anything is loaded.

    Args:
        path: The checkpoint.
        config: The settings of the run being continued; they must be the checkpoint's.
        model: The model to load the weights into.
        optimizer: The optimizer to load the state into.
        rank: This process's rank.
        world: The number of processes; it must be the number that wrote the checkpoint.
        device: The run's device, whose CUDA generator gets the saved CUDA state.
        defaults: The value of a setting the checkpoint's settings lack (one added since
            it was written).

    Returns:
        The last epoch the checkpoint finished, and the rows of ``metrics.csv`` it keeps
        (None for a checkpoint written before it kept them).

    Raises:
        ValueError: The file is not a run checkpoint, or was written by another run or by
            another number of processes.
    """
    state = read_checkpoint(path)
    if differing_keys(as_json(state["config"]), as_json(config), missing_as=defaults):
        raise ValueError(
            f"Expected {path} to belong to this run's settings, but it was written by another run."
        )
    if len(state["rng"]) != world:
        raise ValueError(
            f"Expected to resume {path} with the {len(state['rng'])} processes that wrote it, but got {world}."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    restore_rng_state(state["rng"][rank], device)
    metrics = state.get("metrics")
    return Resumed(int(state["epoch"]), None if metrics is None else list(metrics))


class Resumed(NamedTuple):
    """What ``load_checkpoint`` restored: the last finished epoch and its metrics rows."""

    epoch: int
    metrics: list[dict[str, Any]] | None


def _unreadable(path: str | os.PathLike[str], error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, without torch's advice to load
    it with ``weights_only=False`` (a damaged file is not an untrusted one)."""
    if isinstance(error, OSError):
        return str(error)
    if not zipfile.is_zipfile(path):
        return "it is damaged or not a checkpoint (not the zip archive that torch.save writes)"
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    if refused is not None:
        return f"it holds what weights_only=True does not load ({refused[1].strip()})"
    return str(error).strip().split("\n", 1)[0]


def epochs_done(run_dir: str | os.PathLike[str]) -> int:
    """The epochs an unfinished run resumes after: its checkpoint's (read mapped, not
    loaded), else the rows of its ``metrics.csv``; the run itself says what is wrong with a
    checkpoint that cannot be read."""
    run = RunDir(run_dir)
    try:
        state = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"])
    except Exception:
        pass
    try:
        return len(run.read_metrics()) if run.metrics_path.exists() else 0
    except (OSError, ValueError):
        return 0
