"""The combined loss: ``(1 - w) * CE(y) + w * mean_i CE(y_b_i)``, for any number of groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_labels, check_unit_float, describe

__all__ = ["CombinedLoss", "LossTerms", "combined_loss", "combined_loss_terms"]

_REDUCTIONS = ("mean", "sum", "none")


class LossTerms(NamedTuple):
    """The combined loss and its two parts, for logging.

    Attributes:
        total: ``(1 - weight) * main + weight * aux``.
        main: Cross entropy of the class logits.
        aux: Cross entropy of the auxiliary (binary, or ``K``-group) logits, averaged
            over the ``n`` heads (``binary``: the same, by its older name).
    """

    total: Tensor
    main: Tensor
    aux: Tensor

    @property
    def binary(self) -> Tensor:
        """``aux``, by the name it had while the labels were binary only."""
        return self.aux


def combined_loss_terms(
    output: Any,
    target: Tensor,
    aux_target: Tensor,
    weight: float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> LossTerms:
    """The combined loss with its two terms; see [`combined_loss`][auxtransfer.combined_loss]."""
    weight = check_unit_float("weight", weight)
    label_smoothing = check_unit_float("label_smoothing", label_smoothing)
    _check_reduction(reduction)
    logits, aux_logits = _unpack(output)
    batch, num_classes = logits.shape
    if aux_logits.dim() == 2:
        aux_logits = aux_logits.unsqueeze(1)
    num_heads = aux_logits.shape[1]
    one_head = num_heads == 1
    target = _checked_target(
        "target",
        target,
        labels=[(batch,)],
        probabilities=[(batch, num_classes)],
        num_classes=num_classes,
        kinds=("class indices", "class probabilities"),
        against=f"`logits` {tuple(logits.shape)}",
    )
    num_groups = aux_logits.shape[-1]
    kind = "binary" if num_groups == 2 else f"{num_groups}-group"
    aux_target = _checked_target(
        "aux_target",
        aux_target,
        labels=[(batch, num_heads)] + ([(batch,)] if one_head else []),
        probabilities=[(batch, num_heads, num_groups)]
        + ([(batch, num_groups)] if one_head else []),
        num_classes=num_groups,
        kinds=(f"{kind} labels", f"{kind} probabilities"),
        against=f"`aux_logits` {tuple(aux_logits.shape)}",
    )
    if aux_target.dim() == 1 or (aux_target.dim() == 2 and aux_target.is_floating_point()):
        aux_target = aux_target.unsqueeze(1)  # one head, given without its head dimension
    # Hard group targets are [B, n], soft ones [B, n, K]: the groups sit last in both.
    soft_binary = aux_target.dim() == 3

    main = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=label_smoothing)
    if reduction == "none":
        # [B, K, n] against [B, n] (or [B, K, n]): one loss per sample and head, averaged
        # over heads.
        per_head = aux_target.transpose(1, 2) if soft_binary else aux_target
        aux = F.cross_entropy(aux_logits.transpose(1, 2), per_head, reduction="none").mean(1)
    else:
        flat = F.cross_entropy(
            aux_logits.reshape(-1, num_groups), aux_target.flatten(0, 1), reduction=reduction
        )
        aux = flat if reduction == "mean" else flat / num_heads
    if weight == 0.0 or weight == 1.0:
        # One term only, bitwise: the other still joins the graph with a zero gradient (so
        # DDP sees no unused parameters), and cannot turn the total into NaN if it overflowed.
        kept, dropped = (main, aux) if weight == 0.0 else (aux, main)
        total = kept + (0.0 * dropped).nan_to_num(0.0, 0.0, 0.0)
    else:
        total = (1.0 - weight) * main + weight * aux
    return LossTerms(total, main, aux)


def combined_loss(
    output: Any,
    target: Tensor,
    aux_target: Tensor,
    weight: float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross entropy on the classes plus cross entropy on the partition labels.

    ``(1 - weight) * CE(logits, target) + weight * mean_i CE(aux_logits[:, i], aux_target[:, i])``.
    With ``n`` heads each carries ``weight / n``, the paper's ``B = b x n``. ``weight = 0``
    gives exactly ``F.cross_entropy(logits, target)``. Each partition may have any number
    of groups ``K`` (2 for the paper's binary partitions): ``aux_logits`` is ``[B, n, K]``.

    Either target may be soft, as mixup, CutMix or label smoothing in the data pipeline make
    them (timm's ``Mixup`` gives ``[B, C]`` class probabilities): the cross entropy is then
    ``-(p * log_softmax(logits)).sum(-1)``, linear in ``p``, so the loss of a mixed target
    is the same mix of the losses of its parts. The group target of a soft class target
    ``p`` is the probability mass of each group of every partition,
    ``aux_target[b, i, k] = sum_c p[b, c] * (partition[i, c] == k)``, which
    [`RandomPartitionHead.relabel`][auxtransfer.RandomPartitionHead.relabel] computes for a floating-point target. A hard target
    and a soft one may be mixed freely.

    Args:
        output: An [`AuxOutput`][auxtransfer.AuxOutput], or a ``(logits, aux_logits)`` pair.
        target: Class indices (an integer tensor), or class probabilities (a floating-point
            tensor whose rows sum to 1).
        aux_target: Group labels (an integer tensor), e.g. from
            [`RandomPartitionHead.relabel`][auxtransfer.RandomPartitionHead.relabel], or
            group probabilities (floating point): the mass of the classes in each group of
            each partition.
        weight: The auxiliary loss weight ``w`` in ``[0, 1]``.
        label_smoothing: Label smoothing of the class term (the auxiliary term has none); it
            applies to class probabilities too, as in ``torch.nn.functional.cross_entropy``.
        reduction: ``"mean"``, ``"sum"`` (over samples; heads are always averaged) or ``"none"``.

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.

    Raises:
        TypeError: If ``output`` is not a pair of tensors, a target is not a tensor, or a
            target's dtype does not fit its shape (indices are integers, probabilities are
            floating point).
        ValueError: If a shape does not match, ``weight``, ``label_smoothing`` or
            ``reduction`` is out of range, or, on the CPU, a class index is out of range or a
            probability is negative or not finite. On an accelerator the values are checked
            on the device, without a host synchronisation, and fail at the next one.

    Shape:
        - logits: ``[B, C]``; aux_logits: ``[B, n, K]`` (or ``[B, K]`` for one head).
        - target: ``[B]`` class indices, or ``[B, C]`` class probabilities.
        - aux_target: ``[B, n]`` group labels (or ``[B]`` for one head), or ``[B, n, K]``
          group probabilities (or ``[B, K]`` for one head).

    Examples:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> logits, aux_logits = torch.randn(4, 10), torch.randn(4, 1, 2)
        >>> y, y_b = torch.tensor([0, 3, 9, 3]), torch.tensor([[1], [0], [0], [0]])
        >>> loss = combined_loss((logits, aux_logits), y, y_b, weight=0.4)
        >>> torch.equal(combined_loss((logits, aux_logits), y, y_b, weight=0.0),
        ...             F.cross_entropy(logits, y))
        True

        Mixup: soft targets give the same mix of the two hard-label losses.

        >>> partition = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1, 1, 0]])  # [n, C]
        >>> y2, lam = torch.tensor([5, 0, 3, 1]), 0.7
        >>> probs = lam * F.one_hot(y, 10).float() + (1 - lam) * F.one_hot(y2, 10).float()
        >>> soft_b = torch.einsum("bc,nck->bnk", probs, F.one_hot(partition, 2).float())
        >>> soft_b.shape
        torch.Size([4, 1, 2])
        >>> def hard(t):
        ...     return combined_loss((logits, aux_logits), t, partition.t()[t], weight=0.4)
        >>> mixed = combined_loss((logits, aux_logits), probs, soft_b, weight=0.4)
        >>> torch.allclose(mixed, lam * hard(y) + (1 - lam) * hard(y2))
        True
    """
    return combined_loss_terms(
        output, target, aux_target, weight, label_smoothing=label_smoothing, reduction=reduction
    ).total


class CombinedLoss(nn.Module):
    """Module form of [`combined_loss`][auxtransfer.combined_loss].

    Called as ``loss_fn(output, target, aux_target)``, with hard or soft targets as
    [`combined_loss`][auxtransfer.combined_loss] takes them. After each call, ``last_terms`` holds the detached
    [`LossTerms`][auxtransfer.losses.LossTerms] of that call, ready for logging.

    Args:
        weight: The auxiliary loss weight ``w`` in ``[0, 1]`` (the paper used 0.4).
        label_smoothing: Label smoothing of the class term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Examples:
        >>> import torch
        >>> loss_fn = CombinedLoss(0.4)
        >>> out = (torch.randn(4, 10, requires_grad=True), torch.randn(4, 1, 2))
        >>> loss = loss_fn(out, torch.tensor([0, 3, 9, 3]), torch.tensor([1, 0, 0, 0]))
        >>> loss.backward()
        >>> sorted(loss_fn.last_terms._asdict())
        ['aux', 'main', 'total']
    """

    def __init__(
        self, weight: float, *, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.weight = check_unit_float("weight", weight)
        self.label_smoothing = check_unit_float("label_smoothing", label_smoothing)
        self.reduction = _check_reduction(reduction)
        self.last_terms: LossTerms | None = None

    def terms(self, output: Any, target: Tensor, aux_target: Tensor) -> LossTerms:
        """The loss and its two terms, all attached to the graph."""
        return combined_loss_terms(
            output,
            target,
            aux_target,
            self.weight,
            label_smoothing=self.label_smoothing,
            reduction=self.reduction,
        )

    def forward(self, output: Any, target: Tensor, aux_target: Tensor) -> Tensor:
        terms = self.terms(output, target, aux_target)
        self.last_terms = LossTerms(*(t.detach() for t in terms))
        return terms.total

    def extra_repr(self) -> str:
        return f"weight={self.weight}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


def _unpack(output: Any) -> tuple[Tensor, Tensor]:
    if (
        isinstance(output, (tuple, list))
        and len(output) == 2
        and all(isinstance(t, Tensor) for t in output)
    ):
        logits, aux_logits = output
    elif isinstance(getattr(output, "logits", None), Tensor) and isinstance(
        getattr(output, "aux_logits", None), Tensor
    ):
        # RandomPartitionHead's output on a Hugging Face backbone: its ModelOutput.
        logits, aux_logits = output.logits, output.aux_logits
    else:
        raise TypeError(
            f"Expected `output` to be an AuxOutput or a (logits, aux_logits) pair of tensors, "
            f"but got {describe(output)}."
        )
    if logits.dim() != 2:
        raise ValueError(f"Expected `logits` of shape [B, C], but got shape {tuple(logits.shape)}.")
    if (
        aux_logits.dim() not in (2, 3)
        or aux_logits.shape[0] != logits.shape[0]
        or aux_logits.shape[-1] < 2
    ):
        raise ValueError(
            f"Expected `aux_logits` of shape [{logits.shape[0]}, n, K] (or [{logits.shape[0]}, K]) "
            f"with K >= 2 groups, but got shape {tuple(aux_logits.shape)}."
        )
    return logits, aux_logits


def _check_reduction(reduction: Any) -> str:
    if not isinstance(reduction, str):
        raise TypeError(
            f"Expected `reduction` to be one of {_REDUCTIONS}, but got {describe(reduction)}."
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Expected `reduction` to be one of {_REDUCTIONS}, but got {reduction!r}.")
    return reduction


def _shapes(shapes: Sequence[tuple[int, ...]]) -> str:
    return " or ".join("[" + ", ".join(map(str, shape)) + "]" for shape in shapes)


def _checked_target(
    name: str,
    target: Any,
    *,
    labels: Sequence[tuple[int, ...]],
    probabilities: Sequence[tuple[int, ...]],
    num_classes: int,
    kinds: tuple[str, str],
    against: str,
) -> Tensor:
    """``target`` as int64 labels (a shape in ``labels``) or as probabilities, or raise.

    The shape decides which form is meant, the dtype must agree with it: integer labels, or
    floating-point probabilities.
    """
    label_kind, probability_kind = kinds
    if not isinstance(target, Tensor):
        raise TypeError(
            f"Expected `{name}` to be a tensor of {label_kind} {_shapes(labels)} or "
            f"{probability_kind} {_shapes(probabilities)}, but got {describe(target)}."
        )
    shape = tuple(target.shape)
    if shape in labels:
        dtype = target.dtype
        if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
            raise TypeError(
                f"Expected `{name}` of shape {_shapes([shape])} to be an integer tensor of "
                f"{label_kind} ({probability_kind} are floating point, of shape "
                f"{_shapes(probabilities)}), but got {describe(target)}."
            )
        check_labels(name, target, num_classes)
        # cross_entropy takes int64 class indices only; accept any integer dtype.
        return target.long()
    if shape in probabilities:
        if not target.dtype.is_floating_point:
            raise TypeError(
                f"Expected `{name}` of shape {_shapes([shape])} to be a floating-point tensor "
                f"of {probability_kind} ({label_kind} are integers, of shape "
                f"{_shapes(labels)}), but got {describe(target)}."
            )
        _check_probabilities(name, target, probability_kind)
        return target
    raise ValueError(
        f"Expected `{name}` to have shape {_shapes(labels)} ({label_kind}) or "
        f"{_shapes(probabilities)} ({probability_kind}) to match {against}, "
        f"but got shape {shape}."
    )


def _check_probabilities(name: str, target: Tensor, kind: str) -> None:
    """Raise if a soft target holds a negative or non-finite value; as ``check_labels``."""
    if torch.compiler.is_compiling() or target.numel() == 0:
        return
    valid = target.isfinite() & (target >= 0)
    if target.device.type != "cpu":
        # Reading the values back would stall the accelerator's queue every step.
        torch._assert_async(valid.all(), f"`{name}` holds {kind} that are negative or not finite")
        return
    if not bool(valid.all()):
        bad = target[~valid][0].item()
        raise ValueError(
            f"Expected `{name}` to hold {kind} that are finite and >= 0, but got {bad}."
        )
