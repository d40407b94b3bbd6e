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
    binary_weight: float = 0.0,
    amp: bool = False,
) -> Tensor:
    """Train ``model`` for one epoch of ``batches``, one optimizer step per batch.

    With binary labels in the batches (``DeviceBatches(partition=...)``) the model must
    return ``(logits, aux_logits)`` (a [`RandomPartitionHead`][auxtransfer.RandomPartitionHead]) and the
    step minimises the combined loss with ``binary_weight``; otherwise cross-entropy. The
    loss is computed in float32 whatever precision the forward ran in.

    Args:
        model: The model to train (possibly wrapped in DDP or compiled).
        batches: This process's batches; ``epoch`` selects their order and augmentation.
        optimizer: Steps the model's parameters.
        epoch: The epoch (1-based), passed to ``batches.set_epoch``.
        binary_weight: Weight of the binary term of the combined loss.
        amp: bf16 autocast for the forward pass.

    Returns:
        This process's sums over the epoch, a float64 tensor on the batches' device, not
        yet read: loss, errors, binary loss, binary errors (0 without binary labels), the
        number of images, and the class term of the loss. Wrap-around repeats (DDP) are trained on but not counted.
    """
    batches.set_epoch(epoch)
    model.train()
    device = batches.device
    binary = batches.partition is not None
    sums = torch.zeros(6, device=device, dtype=torch.float64)
    for batch in batches:
        x, y = batch[0], batch[1]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        # One per-sample loss serves the step and the metrics. Metrics count each image
        # once: the wrap-around repeats that even out the DDP ranks take part in the step,
        # not in the sums (a 0/1 weight, not a boolean index, so the step never waits for
        # the device).
        kept = batches.last_batch_original.double()
        if binary:
            logits, aux_logits = out[0].float(), out[1].float()
            terms = combined_loss_terms(
                (logits, aux_logits), y, batch[2], binary_weight, reduction="none"
            )
            per_sample = terms.total
            binary_wrong = (aux_logits.argmax(-1) != batch[2]).double().mean(1)
            sums[2] += (terms.binary.detach().double() * kept).sum()
            sums[3] += (binary_wrong * kept).sum()
            main = terms.main.detach()
        else:
            logits = out.float()
            per_sample = main = F.cross_entropy(logits, y, reduction="none")
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums[0] += (per_sample.detach().double() * kept).sum()
        sums[1] += ((logits.argmax(1) != y).double() * kept).sum()
        sums[4] += kept.sum()
        sums[5] += (main.detach().double() * kept).sum()
    return sums


def train_averages(sums: Tensor, *, world: int = 1, binary: bool = False) -> dict[str, Any]:
    """Add up every process's sums (a collective when ``world > 1``) and read them, once.

    Args:
        sums: What ``train_one_epoch`` returned (summed over the ranks in place).
        world: The number of processes.
        binary: Whether the batches carried binary labels.

    Returns:
        ``train_loss``, ``train_main_loss``, ``train_error`` (in %), ``train_binary_loss``
        and ``train_binary_error`` (``""`` without binary labels), as ``metrics.csv`` logs
        them.
    """
    if world > 1:
        dist.all_reduce(sums)
    loss, wrong, binary_loss, binary_wrong, count, main = sums.tolist()
    return {
        "train_loss": loss / count,
        "train_main_loss": main / count,
        "train_error": 100.0 * wrong / count,
        "train_binary_loss": binary_loss / count if binary else "",
        "train_binary_error": 100.0 * binary_wrong / count if binary else "",
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
        logits = (out[0] if isinstance(out, tuple) else out).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) != y).sum()
        count += len(y)
    loss, wrong = sums.tolist()
    return loss / count, 100.0 * wrong / count


def group_names(param_groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """A name for every parameter group, as ``metrics.csv`` logs its rate.

    A group with ``"addresses"`` (``(first, last)``, as [`layerwise_lr`][auxtransfer.layerwise_lr]
    makes them) is named ``"first..last"`` (or ``"first"`` when both are one address),
    any other group by its index. A name already taken gets ``#index`` appended.

    Example:
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

    Example:
        >>> head_learning_rate([{"lr": 0.1, "addresses": ("4.0", "head")}, {"lr": 0.0}])
        0.1
    """
    for group in reversed(param_groups):
        addresses = group.get("addresses")
        if addresses and addresses[-1] == "head":
            return float(group["lr"])
    return float(param_groups[-1]["lr"])
