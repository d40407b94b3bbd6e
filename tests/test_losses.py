import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from auxtransfer import AuxOutput, CombinedLoss, class_partition, combined_loss
from auxtransfer.losses import LossTerms, combined_loss_terms


def _batch(batch=8, classes=10, heads=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64)
    aux_logits = torch.randn(batch, heads, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=g)
    y_b = torch.randint(0, 2, (batch, heads), generator=g)
    return logits, aux_logits, y, y_b


def _hand_ce(logits, label):
    # -log softmax(logits)[label], written out for one sample.
    values = logits.tolist()
    return -(values[label] - math.log(sum(math.exp(v) for v in values)))


def _hand_loss(logits, aux_logits, y, y_b, weight):
    per_sample = []
    for i in range(len(y)):
        main = _hand_ce(logits[i], int(y[i]))
        heads = aux_logits.shape[1]
        binary = sum(_hand_ce(aux_logits[i, j], int(y_b[i, j])) for j in range(heads)) / heads
        per_sample.append((main, binary))
    return per_sample


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_matches_hand_formula(heads, weight):
    logits, aux_logits, y, y_b = _batch(heads=heads)
    parts = _hand_loss(logits, aux_logits, y, y_b, weight)
    main = sum(m for m, _ in parts) / len(parts)
    binary = sum(b for _, b in parts) / len(parts)
    terms = combined_loss_terms(AuxOutput(logits, aux_logits), y, y_b, weight)
    assert terms.main.item() == pytest.approx(main, rel=1e-12)
    assert terms.aux.item() == pytest.approx(binary, rel=1e-12)
    assert terms.total.item() == pytest.approx((1 - weight) * main + weight * binary, rel=1e-12)


@pytest.mark.parametrize("heads", [1, 4])
def test_reductions_match_hand_formula(heads):
    logits, aux_logits, y, y_b = _batch(heads=heads, seed=1)
    weight = 0.3
    parts = _hand_loss(logits, aux_logits, y, y_b, weight)
    per_sample = torch.tensor(
        [(1 - weight) * m + weight * b for m, b in parts], dtype=torch.float64
    )
    none = combined_loss((logits, aux_logits), y, y_b, weight, reduction="none")
    assert none.shape == (len(y),)
    torch.testing.assert_close(none, per_sample, rtol=1e-12, atol=0)
    total = combined_loss((logits, aux_logits), y, y_b, weight, reduction="sum")
    assert total.item() == pytest.approx(per_sample.sum().item(), rel=1e-12)


def test_heads_share_the_weight_equally():
    # The paper's B = b x n: each of n heads carries weight / n.
    logits, aux_logits, y, y_b = _batch(heads=3, seed=2)
    weight = 0.6
    expected = (1 - weight) * F.cross_entropy(logits, y) + sum(
        weight / 3 * F.cross_entropy(aux_logits[:, j], y_b[:, j]) for j in range(3)
    )
    torch.testing.assert_close(combined_loss((logits, aux_logits), y, y_b, weight), expected)


def test_weight_zero_is_plain_cross_entropy_bitwise():
    logits, aux_logits, y, y_b = _batch(heads=2, seed=3)
    logits, aux_logits = logits.float().requires_grad_(), aux_logits.float().requires_grad_()
    loss = combined_loss((logits, aux_logits), y, y_b, 0.0)
    assert torch.equal(loss, F.cross_entropy(logits, y))
    loss.backward()
    # The binary head still takes part in the graph (DDP needs that) with a zero gradient.
    assert torch.equal(aux_logits.grad, torch.zeros_like(aux_logits))


def test_weight_zero_ignores_an_overflowed_binary_head():
    logits, _, y, y_b = _batch(seed=9)
    aux_logits = torch.full((8, 1, 2), float("nan"), dtype=torch.float64)
    loss = combined_loss((logits, aux_logits), y, y_b, 0.0)
    assert torch.equal(loss, F.cross_entropy(logits, y))


def test_any_integer_label_dtype():
    logits, aux_logits, y, y_b = _batch(seed=10)
    expected = combined_loss((logits, aux_logits), y, y_b, 0.4)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(
            combined_loss((logits, aux_logits), y.to(dtype), y_b.to(dtype), 0.4), expected
        )


def test_weight_one_is_binary_only():
    logits, aux_logits, y, y_b = _batch(seed=4)
    loss = combined_loss((logits, aux_logits), y, y_b, 1.0)
    assert torch.equal(loss, F.cross_entropy(aux_logits[:, 0], y_b[:, 0]))


def test_label_smoothing_applies_to_the_class_term_only():
    logits, aux_logits, y, y_b = _batch(seed=5)
    terms = combined_loss_terms((logits, aux_logits), y, y_b, 0.4, label_smoothing=0.1)
    torch.testing.assert_close(terms.main, F.cross_entropy(logits, y, label_smoothing=0.1))
    torch.testing.assert_close(terms.aux, F.cross_entropy(aux_logits[:, 0], y_b[:, 0]))


def test_one_head_accepts_flat_targets_and_logits():
    logits, aux_logits, y, y_b = _batch(seed=6)
    expected = combined_loss((logits, aux_logits), y, y_b, 0.4)
    assert torch.equal(combined_loss((logits, aux_logits[:, 0]), y, y_b[:, 0], 0.4), expected)
    assert torch.equal(combined_loss([logits, aux_logits], y, y_b[:, 0], 0.4), expected)


def test_module_form_and_logged_terms():
    logits, aux_logits, y, y_b = _batch(heads=2, seed=7)
    loss_fn = CombinedLoss(0.4)
    assert loss_fn.last_terms is None
    logits.requires_grad_()
    loss = loss_fn(AuxOutput(logits, aux_logits), y, y_b)
    assert torch.equal(loss, combined_loss((logits, aux_logits), y, y_b, 0.4))
    assert isinstance(loss_fn.last_terms, LossTerms)
    assert not loss_fn.last_terms.total.requires_grad
    assert torch.equal(loss_fn.last_terms.total, loss.detach())
    terms = loss_fn.terms(AuxOutput(logits, aux_logits), y, y_b)
    assert terms.main.requires_grad
    assert "weight=0.4" in repr(loss_fn)


def test_works_under_autocast():
    logits, aux_logits, y, y_b = _batch(seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = combined_loss((logits.bfloat16(), aux_logits.bfloat16()), y, y_b, 0.4)
    assert loss.dtype == torch.float32  # autocast runs cross entropy in float32
    reference = combined_loss(
        (logits.bfloat16().float(), aux_logits.bfloat16().float()), y, y_b, 0.4
    )
    torch.testing.assert_close(loss, reference)


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        (1.5, ValueError, r"Expected `weight` to be a float in \[0, 1\], but got 1.5"),
        (-0.1, ValueError, r"but got -0.1"),
        (float("nan"), ValueError, r"but got nan"),
        (True, TypeError, r"`weight` to be a float in \[0, 1\], but got True"),
        ("0.4", TypeError, r"but got '0.4' \(str\)"),
    ],
)
def test_bad_weight(weight, error, match):
    with pytest.raises(error, match=match):
        CombinedLoss(weight)
    logits, aux_logits, y, y_b = _batch()
    with pytest.raises(error, match=match):
        combined_loss((logits, aux_logits), y, y_b, weight)


def test_bad_labels():
    logits, aux_logits, y, y_b = _batch(classes=10)
    with pytest.raises(
        ValueError, match=r"`target` to hold class indices in \[0, 10\), but got 10"
    ):
        combined_loss((logits, aux_logits), torch.full_like(y, 10), y_b, 0.4)
    with pytest.raises(ValueError, match=r"`target` .* but got -1"):
        combined_loss((logits, aux_logits), torch.full_like(y, -1), y_b, 0.4)
    with pytest.raises(
        ValueError, match=r"`aux_target` to hold class indices in \[0, 2\), but got 2"
    ):
        combined_loss((logits, aux_logits), y, torch.full_like(y_b, 2), 0.4)
    with pytest.raises(TypeError, match=r"`target` of shape \[8\] to be an integer tensor"):
        combined_loss((logits, aux_logits), y.float(), y_b, 0.4)


def test_bad_shapes():
    logits, aux_logits, y, y_b = _batch(heads=2)
    with pytest.raises(
        ValueError, match=r"`aux_target` to have shape \[8, 2\] .* but got shape \(8,\)"
    ):
        combined_loss((logits, aux_logits), y, y_b[:, 0], 0.4)
    with pytest.raises(
        ValueError, match=r"`target` to have shape \[8\] \(class indices\) or \[8, 10\] .* \(4,\)"
    ):
        combined_loss((logits, aux_logits), y[:4], y_b, 0.4)
    with pytest.raises(ValueError, match=r"`aux_logits` of shape \[8, n, K\] .* K >= 2 groups"):
        combined_loss((logits, aux_logits[..., :1]), y, y_b, 0.4)
    with pytest.raises(ValueError, match=r"`logits` of shape \[B, C\]"):
        combined_loss((logits[0], aux_logits), y, y_b, 0.4)
    with pytest.raises(
        TypeError, match=r"`output` to be an AuxOutput or a \(logits, aux_logits\) pair"
    ):
        combined_loss(logits, y, y_b, 0.4)
    with pytest.raises(ValueError, match=r"`reduction` to be one of"):
        CombinedLoss(0.4, reduction="avg")


# Soft targets: class probabilities [B, C] and binary probabilities [B, n, 2].


def _soft(batch=8, classes=10, heads=1, seed=0):
    """Random soft targets whose rows sum to 1, and the partition tables they go with."""
    g = torch.Generator().manual_seed(1000 + seed)
    probs = torch.rand(batch, classes, generator=g, dtype=torch.float64)
    probs = probs / probs.sum(1, keepdim=True)
    partition = torch.randint(0, 2, (heads, classes), generator=g)
    aux_probs = torch.einsum("bc,nck->bnk", probs, F.one_hot(partition, 2).double())
    return probs, aux_probs, partition


def _hand_soft_ce(logits, probs):
    # sum_c p_c * (logsumexp(logits) - logits_c), written out for one sample.
    values, weights = logits.tolist(), probs.tolist()
    lse = math.log(sum(math.exp(v) for v in values))
    return sum(p * (lse - v) for p, v in zip(weights, values, strict=True))


def _hand_soft_loss(logits, aux_logits, probs, aux_probs, label_smoothing=0.0):
    """Per-sample (main, binary) from class and binary probabilities."""
    classes = logits.shape[1]
    probs = probs * (1 - label_smoothing) + label_smoothing / classes
    heads = aux_logits.shape[1]
    per_sample = []
    for i in range(len(probs)):
        main = _hand_soft_ce(logits[i], probs[i])
        binary = sum(_hand_soft_ce(aux_logits[i, j], aux_probs[i, j]) for j in range(heads))
        per_sample.append((main, binary / heads))
    return per_sample


def _reduce(values, reduction):
    values = torch.tensor(values, dtype=torch.float64)
    return {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize(
    ("soft_target", "soft_aux_target"), [(True, True), (True, False), (False, True)]
)
def test_soft_targets_match_hand_formula(soft_target, soft_aux_target, heads, weight, reduction):
    logits, aux_logits, y, y_b = _batch(heads=heads, seed=11)
    probs, aux_probs, _ = _soft(heads=heads, seed=11)
    # The reference sees every target as probabilities; a hard one as its one-hot rows.
    ref_probs = probs if soft_target else F.one_hot(y, 10).double()
    ref_aux = aux_probs if soft_aux_target else F.one_hot(y_b, 2).double()
    parts = _hand_soft_loss(logits, aux_logits, ref_probs, ref_aux, label_smoothing=0.1)
    terms = combined_loss_terms(
        (logits, aux_logits),
        probs if soft_target else y,
        aux_probs if soft_aux_target else y_b,
        weight,
        label_smoothing=0.1,
        reduction=reduction,
    )
    main = _reduce([m for m, _ in parts], reduction)
    binary = _reduce([b for _, b in parts], reduction)
    torch.testing.assert_close(terms.main, main, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.aux, binary, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        terms.total, (1 - weight) * main + weight * binary, rtol=1e-12, atol=1e-15
    )


def _mix(a, b, lam):
    """lam * a + (1 - lam) * b, lam a float or one value per sample (broadcast from the left)."""
    if isinstance(lam, Tensor):
        lam = lam.reshape(-1, *([1] * (a.dim() - 1)))
    return lam * a + (1 - lam) * b


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("per_sample_lam", [False, True])
def test_mixup_is_the_mix_of_the_two_hard_losses(per_sample_lam, reduction, label_smoothing):
    logits, aux_logits, y, _ = _batch(heads=3, seed=12)
    partition = class_partition(10, num_partitions=3, seed=4)
    y2 = y.flip(0)  # mixup pairs each sample with one of another
    g = torch.Generator().manual_seed(12)
    lam = torch.rand(8, generator=g, dtype=torch.float64) if per_sample_lam else 0.7
    probs = _mix(F.one_hot(y, 10).double(), F.one_hot(y2, 10).double(), lam)
    aux_probs = torch.einsum("bc,nck->bnk", probs, F.one_hot(partition, 2).double())
    # The binary target of the mix is the mix of the two binary targets.
    hard_b, hard_b2 = partition.t()[y], partition.t()[y2]
    torch.testing.assert_close(
        aux_probs, _mix(F.one_hot(hard_b, 2).double(), F.one_hot(hard_b2, 2).double(), lam)
    )

    def loss(target, aux_target, reduction):
        return combined_loss_terms(
            (logits, aux_logits),
            target,
            aux_target,
            0.4,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )

    mixed = loss(probs, aux_probs, reduction)
    # Cross entropy is linear in the target: mix the per-sample hard losses, then reduce.
    first, second = loss(y, hard_b, "none"), loss(y2, hard_b2, "none")
    for name in LossTerms._fields:
        per_sample = _mix(getattr(first, name), getattr(second, name), lam)
        expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}
        torch.testing.assert_close(getattr(mixed, name), expected[reduction], rtol=1e-12, atol=0)


def test_timm_mixup_targets():
    mixup_target = pytest.importorskip("timm.data.mixup").mixup_target
    logits, aux_logits, y, _ = _batch(heads=2, seed=13)
    logits, aux_logits = logits.float(), aux_logits.float()
    partition = class_partition(10, num_partitions=2, seed=1)
    probs = mixup_target(y, 10, lam=0.6, smoothing=0.1)  # [B, C], rows of y and y.flip(0)
    assert probs.shape == (8, 10)
    aux_probs = torch.einsum("bc,nck->bnk", probs, F.one_hot(partition, 2).float())
    terms = combined_loss_terms((logits, aux_logits), probs, aux_probs, 0.4)
    # timm smooths before mixing, exactly as cross_entropy's own label smoothing does.
    expected = 0.6 * F.cross_entropy(logits, y, label_smoothing=0.1) + 0.4 * F.cross_entropy(
        logits, y.flip(0), label_smoothing=0.1
    )
    torch.testing.assert_close(terms.main, expected)
    parts = _hand_soft_loss(logits.double(), aux_logits.double(), probs.double(), aux_probs)
    torch.testing.assert_close(terms.aux.double(), _reduce([b for _, b in parts], "mean"))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_weight_zero_with_soft_targets_is_plain_cross_entropy_bitwise(label_smoothing, reduction):
    logits, aux_logits, _, _ = _batch(heads=2, seed=14)
    probs, aux_probs, _ = _soft(heads=2, seed=14)
    logits, aux_logits = logits.float().requires_grad_(), aux_logits.float().requires_grad_()
    probs, aux_probs = probs.float(), aux_probs.float()
    loss = combined_loss(
        (logits, aux_logits),
        probs,
        aux_probs,
        0.0,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    expected = F.cross_entropy(logits, probs, label_smoothing=label_smoothing, reduction=reduction)
    assert torch.equal(loss, expected)
    loss.sum().backward()
    assert torch.equal(aux_logits.grad, torch.zeros_like(aux_logits))


def test_weight_one_with_soft_binary_targets_is_binary_only():
    logits, aux_logits, y, _ = _batch(seed=15)
    _, aux_probs, _ = _soft(seed=15)
    loss = combined_loss((logits, aux_logits), y, aux_probs, 1.0)
    assert torch.equal(loss, F.cross_entropy(aux_logits[:, 0], aux_probs[:, 0]))


def test_one_head_accepts_flat_soft_binary_targets():
    logits, aux_logits, _, _ = _batch(seed=16)
    probs, aux_probs, _ = _soft(seed=16)
    for reduction in ("mean", "sum", "none"):
        expected = combined_loss((logits, aux_logits), probs, aux_probs, 0.4, reduction=reduction)
        for pair in ((logits, aux_logits), (logits, aux_logits[:, 0])):
            flat = combined_loss(pair, probs, aux_probs[:, 0], 0.4, reduction=reduction)
            assert torch.equal(flat, expected)


@pytest.mark.parametrize("heads", [1, 3])
def test_soft_target_gradients_match_hand_formula(heads):
    # d/dz of -sum_c p_c log softmax(z)_c is softmax(z) - p (with the smoothing folded in p).
    logits, aux_logits, _, _ = _batch(heads=heads, seed=17)
    probs, aux_probs, _ = _soft(heads=heads, seed=17)
    logits.requires_grad_()
    aux_logits.requires_grad_()
    weight, smoothing = 0.3, 0.1
    CombinedLoss(weight, label_smoothing=smoothing)(
        (logits, aux_logits), probs, aux_probs
    ).backward()
    smoothed = probs * (1 - smoothing) + smoothing / 10
    expected = (1 - weight) * (logits.detach().softmax(1) - smoothed) / 8
    torch.testing.assert_close(logits.grad, expected, rtol=1e-12, atol=1e-15)
    expected_aux = weight * (aux_logits.detach().softmax(2) - aux_probs) / (8 * heads)
    torch.testing.assert_close(aux_logits.grad, expected_aux, rtol=1e-12, atol=1e-15)


def test_soft_targets_under_autocast():
    logits, aux_logits, _, _ = _batch(seed=18)
    probs, aux_probs, _ = _soft(seed=18)
    probs, aux_probs = probs.float(), aux_probs.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = combined_loss((logits.bfloat16(), aux_logits.bfloat16()), probs, aux_probs, 0.4)
    assert loss.dtype == torch.float32
    reference = combined_loss(
        (logits.bfloat16().float(), aux_logits.bfloat16().float()), probs, aux_probs, 0.4
    )
    torch.testing.assert_close(loss, reference)


def test_module_form_takes_soft_targets():
    logits, aux_logits, _, _ = _batch(heads=2, seed=19)
    probs, aux_probs, _ = _soft(heads=2, seed=19)
    loss_fn = CombinedLoss(0.4, reduction="none")
    loss = loss_fn(AuxOutput(logits, aux_logits), probs, aux_probs)
    expected = combined_loss_terms((logits, aux_logits), probs, aux_probs, 0.4, reduction="none")
    assert torch.equal(loss, expected.total)
    assert torch.equal(loss_fn.last_terms.aux, expected.aux)


def test_values_are_not_read_back_off_the_cpu():
    # On the meta device any read of a value raises, as a host synchronisation would cost
    # on an accelerator: the checks must stay on the device.
    with torch.device("meta"):
        logits, aux_logits = torch.empty(8, 10), torch.empty(8, 3, 2)
        probs, aux_probs = torch.empty(8, 10), torch.empty(8, 3, 2)
        y, y_b = torch.empty(8, dtype=torch.long), torch.empty(8, 3, dtype=torch.long)
    for target, aux_target in ((probs, aux_probs), (y, aux_probs), (probs, y_b)):
        for reduction, shape in (("mean", ()), ("none", (8,))):
            loss = combined_loss((logits, aux_logits), target, aux_target, 0.4, reduction=reduction)
            assert loss.is_meta and loss.shape == shape


@pytest.mark.parametrize("bad", [-0.25, float("nan"), float("inf"), -float("inf")])
def test_bad_soft_values(bad):
    logits, aux_logits, y, _ = _batch(heads=2, seed=20)
    probs, aux_probs, _ = _soft(heads=2, seed=20)
    shown = re.escape(str(bad))
    bad_probs = probs.clone()
    bad_probs[3, 7] = bad
    with pytest.raises(
        ValueError,
        match=rf"Expected `target` to hold class probabilities that are finite and >= 0, but got {shown}\.",
    ):
        combined_loss((logits, aux_logits), bad_probs, aux_probs, 0.4)
    bad_aux = aux_probs.clone()
    bad_aux[5, 1, 0] = bad
    with pytest.raises(
        ValueError,
        match=rf"Expected `aux_target` to hold binary probabilities that are finite and >= 0, but got {shown}\.",
    ):
        combined_loss((logits, aux_logits), y, bad_aux, 0.4)
    with pytest.raises(ValueError, match=r"`aux_target` to hold binary probabilities"):
        CombinedLoss(0.0)((logits, aux_logits), probs, bad_aux)


def test_zero_and_one_are_valid_probabilities():
    # The bounds themselves (one-hot rows, an empty side of a partition) are fine.
    logits, aux_logits, y, y_b = _batch(heads=2, seed=21)
    one_hot, aux_one_hot = F.one_hot(y, 10).double(), F.one_hot(y_b, 2).double()
    terms = combined_loss_terms((logits, aux_logits), one_hot, aux_one_hot, 0.4)
    torch.testing.assert_close(terms.main, F.cross_entropy(logits, y), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        terms.aux,
        F.cross_entropy(aux_logits.reshape(-1, 2), y_b.reshape(-1)),
        rtol=1e-12,
        atol=0,
    )


@pytest.mark.parametrize(
    ("heads", "target", "aux_target", "match"),
    [
        # Not a tensor at all.
        (
            2,
            [0] * 8,
            None,
            r"`target` to be a tensor of class indices \[8\] or class probabilities \[8, 10\], but got \[0, 0, .*\(list\)",
        ),
        (
            2,
            None,
            "labels",
            r"`aux_target` to be a tensor of binary labels \[8, 2\] or binary probabilities \[8, 2, 2\], but got 'labels' \(str\)",
        ),
        (
            1,
            None,
            0.5,
            r"`aux_target` to be a tensor of binary labels \[8, 1\] or \[8\] or binary probabilities \[8, 1, 2\] or \[8, 2\], but got 0.5 \(float\)",
        ),
        # The shape says which form is meant; the dtype must agree.
        (
            2,
            torch.zeros(8),
            None,
            r"`target` of shape \[8\] to be an integer tensor of class indices \(class probabilities are floating point, of shape \[8, 10\]\), but got a torch.float32 tensor of shape \(8,\)",
        ),
        (
            2,
            torch.zeros(8, dtype=torch.bool),
            None,
            r"`target` of shape \[8\] to be an integer tensor .* but got a torch.bool tensor",
        ),
        (
            2,
            torch.zeros(8, 10, dtype=torch.long),
            None,
            r"`target` of shape \[8, 10\] to be a floating-point tensor of class probabilities \(class indices are integers, of shape \[8\]\), but got a torch.int64 tensor of shape \(8, 10\)",
        ),
        (
            2,
            torch.zeros(8, 10, dtype=torch.complex64),
            None,
            r"`target` of shape \[8, 10\] to be a floating-point tensor .* but got a torch.complex64 tensor",
        ),
        (
            2,
            None,
            torch.zeros(8, 2),
            r"`aux_target` of shape \[8, 2\] to be an integer tensor of binary labels \(binary probabilities are floating point, of shape \[8, 2, 2\]\), but got a torch.float32 tensor",
        ),
        (
            2,
            None,
            torch.zeros(8, 2, 2, dtype=torch.long),
            r"`aux_target` of shape \[8, 2, 2\] to be a floating-point tensor of binary probabilities \(binary labels are integers, of shape \[8, 2\]\), but got a torch.int64 tensor",
        ),
        (
            1,
            None,
            torch.zeros(8, 2, dtype=torch.long),
            r"`aux_target` of shape \[8, 2\] to be a floating-point tensor of binary probabilities \(binary labels are integers, of shape \[8, 1\] or \[8\]\)",
        ),
        (
            1,
            None,
            torch.zeros(8),
            r"`aux_target` of shape \[8\] to be an integer tensor of binary labels \(binary probabilities are floating point, of shape \[8, 1, 2\] or \[8, 2\]\)",
        ),
    ],
)
def test_bad_target_types(heads, target, aux_target, match):
    logits, aux_logits, y, y_b = _batch(heads=heads)
    target = y if target is None else target
    aux_target = y_b if aux_target is None else aux_target
    with pytest.raises(TypeError, match=match):
        combined_loss((logits, aux_logits), target, aux_target, 0.4)


@pytest.mark.parametrize(
    ("heads", "target", "aux_target", "match"),
    [
        (
            2,
            torch.zeros(8, 11),
            None,
            r"`target` to have shape \[8\] \(class indices\) or \[8, 10\] \(class probabilities\) to match `logits` \(8, 10\), but got shape \(8, 11\)\.",
        ),
        (2, torch.zeros(4, 10), None, r"`target` to have shape .* but got shape \(4, 10\)"),
        (2, torch.zeros(8, 10, 1), None, r"`target` to have shape .* but got shape \(8, 10, 1\)"),
        (
            2,
            torch.zeros((), dtype=torch.long),
            None,
            r"`target` to have shape .* but got shape \(\)",
        ),
        (
            2,
            None,
            torch.zeros(8, 2, 3),
            r"`aux_target` to have shape \[8, 2\] \(binary labels\) or \[8, 2, 2\] \(binary probabilities\) to match `aux_logits` \(8, 2, 2\), but got shape \(8, 2, 3\)\.",
        ),
        (2, None, torch.zeros(8, 3, 2), r"`aux_target` .* but got shape \(8, 3, 2\)"),
        (
            3,
            None,
            torch.zeros(8, 2),
            r"`aux_target` to have shape \[8, 3\] \(binary labels\) or \[8, 3, 2\] \(binary probabilities\) .* but got shape \(8, 2\)",
        ),
        (
            1,
            None,
            torch.zeros(8, 1, 1, 2),
            r"`aux_target` to have shape \[8, 1\] or \[8\] \(binary labels\) or \[8, 1, 2\] or \[8, 2\] \(binary probabilities\) to match `aux_logits` \(8, 1, 2\), but got shape \(8, 1, 1, 2\)",
        ),
    ],
)
def test_bad_target_shapes(heads, target, aux_target, match):
    logits, aux_logits, y, y_b = _batch(heads=heads)
    target = y if target is None else target
    aux_target = y_b if aux_target is None else aux_target
    with pytest.raises(ValueError, match=match):
        combined_loss((logits, aux_logits), target, aux_target, 0.4)


@pytest.mark.parametrize(
    ("label_smoothing", "error", "match"),
    [
        (1.5, ValueError, r"Expected `label_smoothing` to be a float in \[0, 1\], but got 1.5\."),
        (-0.1, ValueError, r"`label_smoothing` .* but got -0.1\."),
        (float("nan"), ValueError, r"`label_smoothing` .* but got nan\."),
        (False, TypeError, r"`label_smoothing` to be a float in \[0, 1\], but got False \(bool\)"),
        (None, TypeError, r"`label_smoothing` .* but got None \(NoneType\)"),
        (torch.tensor(0.1), TypeError, r"`label_smoothing` .* but got a torch.float32 tensor"),
    ],
)
def test_bad_label_smoothing(label_smoothing, error, match):
    with pytest.raises(error, match=match):
        CombinedLoss(0.4, label_smoothing=label_smoothing)
    logits, aux_logits, y, y_b = _batch()
    with pytest.raises(error, match=match):
        combined_loss((logits, aux_logits), y, y_b, 0.4, label_smoothing=label_smoothing)


@pytest.mark.parametrize("weight", [None, torch.tensor(0.4), [0.4], 1 + 0j])
def test_bad_weight_types(weight):
    logits, aux_logits, y, y_b = _batch()
    with pytest.raises(TypeError, match=r"Expected `weight` to be a float in \[0, 1\], but got"):
        CombinedLoss(weight)
    with pytest.raises(TypeError, match=r"Expected `weight` to be a float in \[0, 1\], but got"):
        combined_loss((logits, aux_logits), y, y_b, weight)


@pytest.mark.parametrize(
    ("reduction", "error"),
    [
        ("avg", ValueError),
        ("MEAN", ValueError),
        ("", ValueError),
        (None, TypeError),
        (0, TypeError),
    ],
)
def test_bad_reduction(reduction, error):
    match = r"Expected `reduction` to be one of \('mean', 'sum', 'none'\), but got " + re.escape(
        repr(reduction)
    )
    with pytest.raises(error, match=match):
        CombinedLoss(0.4, reduction=reduction)
    logits, aux_logits, y, y_b = _batch()
    with pytest.raises(error, match=match):
        combined_loss((logits, aux_logits), y, y_b, 0.4, reduction=reduction)
    with pytest.raises(error, match=match):
        combined_loss_terms((logits, aux_logits), y, y_b, 0.4, reduction=reduction)


def _output(kind):
    logits, aux_logits, _, _ = _batch(heads=2)
    return {
        "tensor": logits,
        "triple": (logits, aux_logits, aux_logits),
        "single": (logits,),
        "pair with an array": (logits, aux_logits.numpy()),
        "dict": {"logits": logits, "aux_logits": aux_logits},
        "none": None,
    }[kind]


@pytest.mark.parametrize(
    "kind", ["tensor", "triple", "single", "pair with an array", "dict", "none"]
)
def test_bad_output_types(kind):
    _, _, y, y_b = _batch(heads=2)
    with pytest.raises(
        TypeError,
        match=r"Expected `output` to be an AuxOutput or a \(logits, aux_logits\) pair of tensors, but got ",
    ):
        combined_loss(_output(kind), y, y_b, 0.4)


@pytest.mark.parametrize(
    ("logits_shape", "aux_shape", "match"),
    [
        ((8,), (8, 2, 2), r"Expected `logits` of shape \[B, C\], but got shape \(8,\)\."),
        (
            (8, 10, 1),
            (8, 2, 2),
            r"Expected `logits` of shape \[B, C\], but got shape \(8, 10, 1\)\.",
        ),
        (
            (8, 10),
            (8, 2, 1),
            r"Expected `aux_logits` of shape \[8, n, K\] \(or \[8, K\]\) with K >= 2 groups, "
            r"but got shape \(8, 2, 1\)\.",
        ),
        ((8, 10), (4, 2, 2), r"`aux_logits` of shape \[8, n, K\] .* but got shape \(4, 2, 2\)\."),
        (
            (8, 10),
            (8, 1, 2, 2),
            r"`aux_logits` of shape \[8, n, K\] .* but got shape \(8, 1, 2, 2\)\.",
        ),
        ((8, 10), (8,), r"`aux_logits` of shape \[8, n, K\] .* but got shape \(8,\)\."),
    ],
)
def test_bad_output_shapes(logits_shape, aux_shape, match):
    _, _, y, y_b = _batch(heads=2)
    output = (torch.zeros(logits_shape), torch.zeros(aux_shape))
    with pytest.raises(ValueError, match=match):
        combined_loss(output, y, y_b, 0.4)


@pytest.mark.cuda
def test_soft_targets_on_the_device():
    logits, aux_logits, y, _ = _batch(heads=2, seed=22)
    probs, aux_probs, _ = _soft(heads=2, seed=22)
    cpu = combined_loss((logits, aux_logits), probs, aux_probs, 0.4, reduction="none")
    on_device = [t.cuda() for t in (logits, aux_logits, probs, aux_probs)]
    cuda = combined_loss(tuple(on_device[:2]), *on_device[2:], 0.4, reduction="none")
    torch.testing.assert_close(cuda.cpu(), cpu)
    mixed = combined_loss(tuple(on_device[:2]), y.cuda(), on_device[3], 0.4)
    torch.testing.assert_close(mixed.cpu(), combined_loss((logits, aux_logits), y, aux_probs, 0.4))


@pytest.mark.cuda
def test_bad_soft_values_on_the_device_stop_with_the_arguments_name():
    # Checked on the device, without a host synchronisation; the device-side assert is
    # fatal to the process, so it runs in a child.
    code = (
        "import torch; from auxtransfer import combined_loss; "
        "out = (torch.randn(2, 3, device='cuda'), torch.randn(2, 1, 2, device='cuda')); "
        "probs = torch.tensor([[1.5, -0.5, 0.0], [0.0, 1.0, 0.0]], device='cuda'); "
        "combined_loss(out, probs, torch.tensor([0, 1], device='cuda'), 0.4); "
        "torch.cuda.synchronize()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "`target` holds class probabilities that are negative or not finite" in result.stderr


def _hand_cross_entropy(logits, target):
    """-log softmax at the target, per row, by hand (no F.cross_entropy)."""
    out = []
    for row, t in zip(logits.double().tolist(), target.tolist(), strict=True):
        top = max(row)
        log_sum = top + math.log(sum(math.exp(v - top) for v in row))
        out.append(log_sum - row[t])
    return out


@pytest.mark.parametrize("num_groups", [2, 3, 5, 20])
def test_k_group_loss_is_the_hand_computed_mix(num_groups):
    from auxtransfer import RandomPartitionHead, class_partition

    g = torch.Generator().manual_seed(num_groups)
    batch, classes, heads, weight = 6, 40, 3, 0.3
    logits = torch.randn(batch, classes, generator=g)
    aux_logits = torch.randn(batch, heads, num_groups, generator=g)
    y = torch.randint(0, classes, (batch,), generator=g)
    table = class_partition(classes, num_groups=num_groups, num_partitions=heads, seed=1)
    y_groups = table.t()[y]  # [B, n]: group of y in each partition
    main = sum(_hand_cross_entropy(logits, y)) / batch
    aux = (
        sum(
            sum(_hand_cross_entropy(aux_logits[:, i], y_groups[:, i])) / batch for i in range(heads)
        )
        / heads
    )
    expected = (1 - weight) * main + weight * aux
    terms = combined_loss_terms((logits, aux_logits), y, y_groups, weight)
    assert terms.total.item() == pytest.approx(expected, rel=1e-6)
    assert terms.main.item() == pytest.approx(main, rel=1e-6)
    assert terms.aux.item() == pytest.approx(aux, rel=1e-6)
    per_sample = combined_loss((logits, aux_logits), y, y_groups, weight, reduction="none")
    assert per_sample.mean().item() == pytest.approx(expected, rel=1e-6)

    # Soft class targets: the group target is the mass of each group, summed by hand.
    probs = torch.softmax(torch.randn(batch, classes, generator=g), -1)
    backbone = torch.nn.Linear(8, classes)
    net = RandomPartitionHead(backbone, partition=table, classifier="")
    soft = net.relabel(probs)
    assert soft.shape == (batch, heads, num_groups)
    for b in range(batch):
        for i in range(heads):
            for k in range(num_groups):
                mass = sum(probs[b, c].item() for c in range(classes) if table[i, c] == k)
                assert soft[b, i, k].item() == pytest.approx(mass, abs=1e-6)
    # ... and its loss is the probability-weighted hand loss.
    mixed = combined_loss((logits, aux_logits), probs, soft, weight)
    hand_main = -(probs.double() * torch.log_softmax(logits.double(), -1)).sum(-1).mean()
    hand_aux = -(soft.double() * torch.log_softmax(aux_logits.double(), -1)).sum(-1).mean()
    assert mixed.item() == pytest.approx(
        ((1 - weight) * hand_main + weight * hand_aux).item(), rel=1e-6
    )


def test_k_group_targets_out_of_range_are_refused():
    logits, aux_logits = torch.randn(4, 10), torch.randn(4, 1, 3)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"`aux_target`"):
        combined_loss((logits, aux_logits), y, torch.tensor([[0], [1], [2], [3]]), 0.4)
    with pytest.raises(ValueError, match=r"\[4, 1, 3\] or \[4, 3\] \(3-group probabilities\)"):
        combined_loss((logits, aux_logits), y, torch.rand(4, 1, 2), 0.4)


def test_an_output_with_logits_and_aux_logits_is_taken_as_the_pair():
    """A Hugging Face backbone's ModelOutput, which RandomPartitionHead keeps with
    ``aux_logits`` added, gives the loss of the (logits, aux_logits) pair."""
    from transformers.modeling_outputs import ImageClassifierOutput

    g = torch.Generator().manual_seed(0)
    logits, aux_logits = torch.randn(6, 5, generator=g), torch.randn(6, 2, generator=g)
    y, y_b = torch.randint(5, (6,), generator=g), torch.randint(2, (6,), generator=g)
    output = ImageClassifierOutput(logits=logits)
    output["aux_logits"] = aux_logits
    expected = 0.6 * F.cross_entropy(logits, y) + 0.4 * F.cross_entropy(aux_logits, y_b)
    assert torch.equal(
        combined_loss(output, y, y_b, 0.4), combined_loss((logits, aux_logits), y, y_b, 0.4)
    )
    assert combined_loss(output, y, y_b, 0.4) == pytest.approx(float(expected), rel=1e-6)
