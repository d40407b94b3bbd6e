"""The epoch loop of a run: one training epoch, one evaluation, the learning rates to log.

Nothing here reads or writes files (that is [`rundir`][auxtransfer.experiments.rundir]). The
training step never waits for the device: the metrics add up in a device tensor, read once
per epoch by ``train_averages``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import combined_loss_terms
from .batches import DeviceBatches, LoaderBatches

__all__ = [
    "batch_loss",
    "eval_sums",
    "evaluate",
    "group_names",
    "head_learning_rate",
    "learning_rates",
    "rank_and_world",
    "train_averages",
    "train_one_epoch",
]


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 outside ``torchrun``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_one_epoch(
    model: nn.Module,
    batches: DeviceBatches | LoaderBatches,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int,
    aux_weight: float = 0.0,
    amp: bool = False,
) -> Tensor:
    """Train ``model`` for one epoch of ``batches``, one optimizer step per batch.

    With auxiliary labels in the batches (``DeviceBatches(partition=...)``) the model must
    return ``(logits, aux_logits)`` (a [`RandomPartitionHead`][auxtransfer.RandomPartitionHead]) and the
    step minimises the combined loss with ``aux_weight``; otherwise cross-entropy. The
    loss is computed in float32 whatever precision the forward ran in.

    Args:
        model: The model to train (possibly wrapped in DDP or compiled).
        batches: This process's batches; ``epoch`` selects their order and augmentation.
        optimizer: Steps the model's parameters.
        epoch: The epoch (1-based), passed to ``batches.set_epoch``.
        aux_weight: Weight of the auxiliary term of the combined loss.
        amp: bf16 autocast for the forward pass.

    Returns:
        This process's sums over the epoch, a float64 tensor on the batches' device, not
        yet read: loss, errors, auxiliary loss, auxiliary errors (0 without auxiliary labels), the
        number of images, and the class term of the loss. Wrap-around repeats (DDP) are trained on but not counted.
    """
    batches.set_epoch(epoch)
    model.train()
    device = batches.device
    sums = torch.zeros(6, device=device, dtype=torch.float64)
    for batch in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(batch[0])
        loss = batch_loss(out, batch, batches.last_batch_original, aux_weight, sums)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sums


def batch_loss(
    out: Any, batch: Sequence[Tensor], kept: Tensor, aux_weight: float, sums: Tensor
) -> Tensor:
    """The mean loss of one training batch, to step on; adds its metrics into ``sums``.

    One per-sample loss serves the step and the metrics. Metrics count each image once:
    the wrap-around repeats that even out the DDP ranks (``kept`` False) take part in the
    step, not in the sums (a 0/1 weight, not a boolean index, so nothing waits for the
    device).

    Args:
        out: The model's output: logits, or ``(logits, aux_logits)`` when ``batch``
            carries auxiliary labels.
        batch: ``(images, labels)`` or ``(images, labels, aux_labels)``.
        kept: ``[B]`` bool, the samples to count in the metrics.
        aux_weight: Weight of the auxiliary term of the combined loss.
        sums: ``[6]`` float64, added to in place: loss, errors, auxiliary loss, auxiliary
            errors, images, class term of the loss.
    """
    y = batch[1]
    weight = kept.double()
    if len(batch) > 2:
        logits, aux_logits = out[0].float(), out[1].float()
        terms = combined_loss_terms((logits, aux_logits), y, batch[2], aux_weight, reduction="none")
        per_sample, main = terms.total, terms.main.detach()
        aux_wrong = (aux_logits.argmax(-1) != batch[2]).double().mean(1)
        sums[2] += (terms.aux.detach().double() * weight).sum()
        sums[3] += (aux_wrong * weight).sum()
    else:
        logits = out.float()
        per_sample = F.cross_entropy(logits, y, reduction="none")
        main = per_sample.detach()
    sums[0] += (per_sample.detach().double() * weight).sum()
    sums[1] += ((logits.argmax(1) != y).double() * weight).sum()
    sums[4] += weight.sum()
    sums[5] += (main.double() * weight).sum()
    return per_sample.mean()


def eval_sums(out: Any, y: Tensor, sums: Tensor) -> None:
    """Add one evaluation batch's summed cross-entropy and errors into ``sums`` (``[2]``
    float64); ``out`` is the logits, or a tuple whose first item is the logits."""
    logits = (out[0] if isinstance(out, tuple) else out).float()
    sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
    sums[1] += (logits.argmax(1) != y).sum()


def train_averages(sums: Tensor, *, world: int = 1, aux: bool = False) -> dict[str, Any]:
    """Add up every process's sums (a collective when ``world > 1``) and read them, once.

    Args:
        sums: What ``train_one_epoch`` returned (summed over the ranks in place).
        world: The number of processes.
        aux: Whether the batches carried auxiliary labels.

    Returns:
        ``train_loss``, ``train_main_loss``, ``train_error`` (in %), ``train_binary_loss``
        and ``train_binary_error`` (``""`` without auxiliary labels; the columns keep their first names), as ``metrics.csv`` logs
        them.
    """
    if world > 1:
        dist.all_reduce(sums)
    loss, wrong, aux_loss, aux_wrong, count, main = sums.tolist()
    return {
        "train_loss": loss / count,
        "train_main_loss": main / count,
        "train_error": 100.0 * wrong / count,
        "train_binary_loss": aux_loss / count if aux else "",
        "train_binary_error": 100.0 * aux_wrong / count if aux else "",
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: DeviceBatches | LoaderBatches, *, amp: bool = False
) -> tuple[float, float]:
    """Mean cross-entropy and error (in %) of ``model``'s class logits over ``batches``.

    The sums stay on the device and are read once, at the end.

    Args:
        model: Returns logits, or a tuple whose first item is the logits.
        batches: The evaluation batches (``train=False``).
        amp: bf16 autocast for the forward pass.
    """
    model.eval()
    device = batches.device
    sums = torch.zeros(2, device=device, dtype=torch.float64)  # loss, errors
    count = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        eval_sums(out, y, sums)
        count += len(y)
    loss, wrong = sums.tolist()
    return loss / count, 100.0 * wrong / count


def group_names(param_groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """A name for every parameter group, as ``metrics.csv`` logs its rate.

    A group with ``"addresses"`` (``(first, last)``, as [`layerwise_lr`][auxtransfer.layerwise_lr]
    makes them) is named ``"first..last"`` (or ``"first"`` when both are one address),
    any other group by its index. A name already taken gets ``#index`` appended.

    Examples:
        >>> group_names([{"addresses": ("stem", "3.1")}, {"addresses": ("head", "head")}, {}])
        ['stem..3.1', 'head', '2']
    """
    names: list[str] = []
    for index, group in enumerate(param_groups):
        addresses = group.get("addresses")
        if not addresses:
            name = str(index)
        else:
            first, last = str(addresses[0]), str(addresses[-1])
            name = first if first == last else f"{first}..{last}"
        if name in names:
            name = f"{name}#{index}"
        names.append(name)
    return names


def learning_rates(param_groups: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every parameter group's current learning rate, by ``group_names``, in order."""
    return {
        name: float(group["lr"])
        for name, group in zip(group_names(param_groups), param_groups, strict=True)
    }


def head_learning_rate(param_groups: Sequence[Mapping[str, Any]]) -> float:
    """The learning rate of the head: that of the (last) group whose addresses end with
    ``"head"``, else that of the last group.

    Examples:
        >>> head_learning_rate([{"lr": 0.1, "addresses": ("4.0", "head")}, {"lr": 0.0}])
        0.1
    """
    for group in reversed(param_groups):
        addresses = group.get("addresses")
        if addresses and addresses[-1] == "head":
            return float(group["lr"])
    return float(param_groups[-1]["lr"])
