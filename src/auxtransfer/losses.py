"""The combined loss: ``(1 - w) * CE(y) + w * mean_i CE(y_b_i)``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_labels, check_unit_float, describe

__all__ = ["CombinedLoss", "LossTerms", "combined_loss", "combined_loss_terms"]

_REDUCTIONS = ("mean", "sum", "none")


class LossTerms(NamedTuple):
    """The combined loss and its two parts, for logging.

    Attributes:
        total: ``(1 - weight) * main + weight * binary``.
        main: Cross entropy of the class logits.
        binary: Cross entropy of the binary logits, averaged over the ``n`` heads.
    """

    total: Tensor
    main: Tensor
    binary: Tensor


def combined_loss_terms(
    output: Any,
    target: Tensor,
    aux_target: Tensor,
    weight: float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> LossTerms:
    """The combined loss with its two terms; see :func:`combined_loss`."""
    weight = check_unit_float("weight", weight)
    label_smoothing = check_unit_float("label_smoothing", label_smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Expected `reduction` to be one of {_REDUCTIONS}, but got {reduction!r}.")
    logits, aux_logits = _unpack(output)
    batch, num_classes = logits.shape
    if aux_logits.dim() == 2:
        aux_logits = aux_logits.unsqueeze(1)
    num_heads = aux_logits.shape[1]
    if not isinstance(target, Tensor) or target.shape != (batch,):
        raise ValueError(
            f"Expected `target` to be a tensor of shape [{batch}] (one class index per logits "
            f"row), but got {describe(target)}."
        )
    if not isinstance(aux_target, Tensor):
        raise TypeError(f"Expected `aux_target` to be a tensor, but got {describe(aux_target)}.")
    if aux_target.shape == (batch,) and num_heads == 1:
        aux_target = aux_target.unsqueeze(1)
    if aux_target.shape != (batch, num_heads):
        expected = f"[{batch}, {num_heads}]" + (f" or [{batch}]" if num_heads == 1 else "")
        raise ValueError(
            f"Expected `aux_target` to have shape {expected} to match `aux_logits` "
            f"{tuple(aux_logits.shape)}, but got shape {tuple(aux_target.shape)}."
        )
    check_labels("target", target, num_classes)
    check_labels("aux_target", aux_target, 2)
    # cross_entropy takes int64 class indices only; accept any integer dtype.
    target, aux_target = target.long(), aux_target.long()

    main = F.cross_entropy(logits, target, reduction=reduction, label_smoothing=label_smoothing)
    if reduction == "none":
        # [B, 2, n] against [B, n]: one loss per sample and head, averaged over heads.
        binary = F.cross_entropy(aux_logits.transpose(1, 2), aux_target, reduction="none").mean(1)
    else:
        flat = F.cross_entropy(
            aux_logits.reshape(-1, 2), aux_target.reshape(-1), reduction=reduction
        )
        binary = flat if reduction == "mean" else flat / num_heads
    if weight == 0.0 or weight == 1.0:
        # One term only, bitwise: the other still joins the graph with a zero gradient (so
        # DDP sees no unused parameters), and cannot turn the total into NaN if it overflowed.
        kept, dropped = (main, binary) if weight == 0.0 else (binary, main)
        total = kept + (0.0 * dropped).nan_to_num(0.0, 0.0, 0.0)
    else:
        total = (1.0 - weight) * main + weight * binary
    return LossTerms(total, main, binary)


def combined_loss(
    output: Any,
    target: Tensor,
    aux_target: Tensor,
    weight: float,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross entropy on the classes plus cross entropy on the binary partition labels.

    ``(1 - weight) * CE(logits, target) + weight * mean_i CE(aux_logits[:, i], aux_target[:, i])``.
    With ``n`` heads each carries ``weight / n``, the paper's ``B = b x n``. ``weight = 0``
    gives exactly ``F.cross_entropy(logits, target)``.

    Args:
        output: An :class:`~auxtransfer.AuxOutput`, or a ``(logits, aux_logits)`` pair.
        target: Class indices.
        aux_target: Binary labels, e.g. from :meth:`RandomPartitionHead.relabel`.
        weight: The binary loss weight ``w`` in ``[0, 1]``.
        label_smoothing: Label smoothing of the class term (the binary term has none).
        reduction: ``"mean"``, ``"sum"`` (over samples; heads are always averaged) or ``"none"``.

    Returns:
        A scalar, or ``[B]`` with ``reduction="none"``.

    Shape:
        - logits: ``[B, C]``; aux_logits: ``[B, n, 2]`` (or ``[B, 2]`` for one head).
        - target: ``[B]``; aux_target: ``[B, n]`` (or ``[B]`` for one head).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> logits, aux_logits = torch.randn(4, 10), torch.randn(4, 1, 2)
        >>> y, y_b = torch.tensor([0, 3, 9, 3]), torch.tensor([[1], [0], [0], [0]])
        >>> loss = combined_loss((logits, aux_logits), y, y_b, weight=0.4)
        >>> torch.equal(combined_loss((logits, aux_logits), y, y_b, weight=0.0),
        ...             F.cross_entropy(logits, y))
        True
    """
    return combined_loss_terms(
        output, target, aux_target, weight, label_smoothing=label_smoothing, reduction=reduction
    ).total


class CombinedLoss(nn.Module):
    """Module form of :func:`combined_loss`.

    After each call, :attr:`last_terms` holds the detached :class:`LossTerms` of that call,
    ready for logging.

    Args:
        weight: The binary loss weight ``w`` in ``[0, 1]`` (the paper used 0.4).
        label_smoothing: Label smoothing of the class term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Example:
        >>> import torch
        >>> loss_fn = CombinedLoss(0.4)
        >>> out = (torch.randn(4, 10, requires_grad=True), torch.randn(4, 1, 2))
        >>> loss = loss_fn(out, torch.tensor([0, 3, 9, 3]), torch.tensor([1, 0, 0, 0]))
        >>> loss.backward()
        >>> sorted(loss_fn.last_terms._asdict())
        ['binary', 'main', 'total']
    """

    def __init__(
        self, weight: float, *, label_smoothing: float = 0.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.weight = check_unit_float("weight", weight)
        self.label_smoothing = check_unit_float("label_smoothing", label_smoothing)
        if reduction not in _REDUCTIONS:
            raise ValueError(
                f"Expected `reduction` to be one of {_REDUCTIONS}, but got {reduction!r}."
            )
        self.reduction = reduction
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
        or aux_logits.shape[-1] != 2
    ):
        raise ValueError(
            f"Expected `aux_logits` of shape [{logits.shape[0]}, n, 2] (or [{logits.shape[0]}, 2]), "
            f"but got shape {tuple(aux_logits.shape)}."
        )
    return logits, aux_logits
