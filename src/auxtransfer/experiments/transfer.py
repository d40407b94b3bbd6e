"""The transfer phase: a finished run on A becomes the starting point of a run on B.

[`load_backbone`][auxtransfer.experiments.transfer.load_backbone] turns an A run into the plain
backbone (no binary head, no partition) with a fresh classifier for B's classes. A B run
(a [`RunConfig`][auxtransfer.experiments.settings.RunConfig] with ``transfer_from``) then freezes
or re-initialises layers up to an address and trains two groups of parameters, the kept
layers and the new ones, each on its own column of a learning-rate table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..classifier import reset_classifier
from ..freezing import freeze_until, reset_after
from ..layers import layer_map, layer_names
from ..optim import layerwise_lr
from .checkpoint import read_checkpoint, read_weights
from .rundir import RunDir
from .settings import Schedule

__all__ = ["load_backbone", "set_learning_rates", "transfer_groups"]

KEPT, NEW = 0, 1  # the roles of a transfer run's parameter groups


def load_backbone(
    run_dir: str | os.PathLike[str],
    *,
    which: str = "best",
    num_classes: int | None = None,
    seed: int = 0,
) -> nn.Module:
    """The plain backbone a finished run trained, ready for another data set.

    The model is built as the run's ``config.json`` says (``timm.create_model`` of its
    ``model`` with its ``model_kwargs``) and gets the weights of the run's best epoch
    (``best.pt``, the lowest test error, as the paper kept) or its last (``last.pt``). A
    binary head and its partition are dropped, and the ``backbone.`` prefix with them.

    Args:
        run_dir: The run directory.
        which: ``"best"`` or ``"last"``.
        num_classes: Give the backbone a fresh classifier for this many classes
            ([`reset_classifier`][auxtransfer.reset_classifier]); None keeps the run's.
        seed: Seeds the fresh classifier.

    Returns:
        The model, on the CPU, in train mode.

    Raises:
        FileNotFoundError: The folder holds no run, or not the weights asked for.
        ValueError: ``which`` is neither ``"best"`` nor ``"last"``, or the weights do not
            fit the model the run's settings describe.
    """
    if which not in ("best", "last"):
        raise ValueError(f"Expected `which` to be 'best' or 'last', but got {which!r}.")
    run = RunDir(run_dir)
    if not run.config_path.exists():
        raise FileNotFoundError(
            f"Expected `run_dir` to be a run directory with a config.json, but {run.path} has none."
        )
    config = run.read_config()
    path = run.path / f"{which}.pt"
    if not path.exists():
        why = (
            "the run has finished (results.json), so it is lost: restore it, or train the run again"
            if run.is_finished()
            else "is the run finished?"
        )
        raise FileNotFoundError(
            f"Expected {path} with the run's {which} weights, but it does not exist: {why}"
        )
    state = read_weights(path) if which == "best" else read_checkpoint(path)["model"]
    weights = {
        name.removeprefix("backbone."): tensor
        for name, tensor in state.items()
        if not (name == "partition" or name.startswith("aux_head."))
    }
    model = timm_model(config["model"], config["num_classes"], config.get("model_kwargs", {}))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"Expected the weights in {path} to fit {config['model']} as its config.json "
            f"describes it, but they do not: {error}"
        ) from None
    if num_classes is not None:
        reset_classifier(model, num_classes, seed=seed)
    return model


def transfer_groups(
    model: nn.Module, schedule: Schedule, *, until: str | None
) -> list[dict[str, Any]]:
    """Parameter groups of a transfer run: the kept layers (stem up to ``until``) and the new
    ones (after it), with their roles and the first rates of ``schedule``. ``until=None``:
    all layers are new."""
    kept, new = schedule.rates[KEPT][0], schedule.rates[NEW][0]
    if until is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        return [
            {
                "params": trainable,
                "lr": new,
                "addresses": (layer_names(model)[0], "head"),
                "role": NEW,
            }
        ]
    groups = layerwise_lr(model, until=until, lr=kept, new_lr=new)
    refined, boundary = layer_map(model).cut(until, name="until")
    order = [g.address for g in refined]
    for group in groups:
        group["role"] = KEPT if order.index(group["addresses"][-1]) <= boundary else NEW
    return groups


def set_learning_rates(
    param_groups: Sequence[dict[str, Any]],
    epoch: int,
    schedule: Schedule,
    roles: Sequence[int] | None = None,
) -> None:
    """Set every group's rate for ``epoch``: that of its role in ``schedule`` (``roles``,
    default: each group's ``"role"``, 0 where it has none)."""
    rates = schedule.rates_at(epoch)
    roles = [g.get("role", 0) for g in param_groups] if roles is None else roles
    for group, role in zip(param_groups, roles, strict=True):
        group["lr"] = rates[role]


def resolve_run(run_dir: str | os.PathLike[str], source: str) -> Path:
    """``source`` as a path: a relative one is taken from ``run_dir`` (e.g. ``"../pretrain"``)."""
    path = Path(source)
    # Lexically: the run's own directory need not exist yet for "../pretrain" to resolve.
    return path if path.is_absolute() else Path(os.path.normpath(Path(run_dir) / path))


def check_source(config: Mapping[str, Any], source: Path) -> None:
    """The A run a B run starts from must be finished and of the same model."""
    run = RunDir(source)
    if not run.is_finished():
        raise ValueError(
            f"Expected `transfer_from` to name a finished run, but {source} has no results.json."
        )
    theirs = run.read_config()
    for key in ("model", "model_kwargs"):
        if theirs.get(key) != config.get(key):
            raise ValueError(
                f"Expected `{key}` to be the one of the run in {source} ({theirs.get(key)!r}), "
                f"but got {config.get(key)!r}."
            )


def timm_model(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    import timm

    from .. import models  # noqa: F401  (registers the CIFAR models)

    with torch.random.fork_rng(devices=[]):
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def build_transfer_model(
    config: Mapping[str, Any], source: Path, *, seed: int
) -> tuple[nn.Module, str | None]:
    """A's backbone with a fresh classifier, reset and frozen as ``config`` says; and the
    last kept address (None when nothing is kept)."""
    reset, freeze = config.get("reset"), config.get("freeze")
    if reset == "0":
        # Nothing kept: a fresh model, as a run from scratch would start.
        torch.manual_seed(seed)
        model = timm_model(config["model"], config["num_classes"], config["model_kwargs"])
        return model, None
    model = load_backbone(
        source,
        which=config.get("transfer_weights", "best"),
        num_classes=config["num_classes"],
        seed=seed,
    )
    if reset is not None:
        reset_after(model, reset, seed=seed)
    if freeze is not None and freeze != "0":
        freeze_until(model, freeze, bn=config.get("bn", "freeze"))
    names = layer_names(model)
    return model, reset if reset is not None else names[-2]
