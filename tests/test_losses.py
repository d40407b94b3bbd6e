import math

import pytest
import torch
import torch.nn.functional as F

from auxtransfer import AuxOutput, CombinedLoss, LossTerms, combined_loss, combined_loss_terms


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
    assert terms.binary.item() == pytest.approx(binary, rel=1e-12)
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
    torch.testing.assert_close(terms.binary, F.cross_entropy(aux_logits[:, 0], y_b[:, 0]))


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
    with pytest.raises(TypeError, match=r"`target` to be an integer tensor"):
        combined_loss((logits, aux_logits), y.float(), y_b, 0.4)


def test_bad_shapes():
    logits, aux_logits, y, y_b = _batch(heads=2)
    with pytest.raises(
        ValueError, match=r"`aux_target` to have shape \[8, 2\] .* but got shape \(8,\)"
    ):
        combined_loss((logits, aux_logits), y, y_b[:, 0], 0.4)
    with pytest.raises(ValueError, match=r"`target` to be a tensor of shape \[8\]"):
        combined_loss((logits, aux_logits), y[:4], y_b, 0.4)
    with pytest.raises(ValueError, match=r"`aux_logits` of shape \[8, n, 2\]"):
        combined_loss((logits, aux_logits[..., :1]), y, y_b, 0.4)
    with pytest.raises(ValueError, match=r"`logits` of shape \[B, C\]"):
        combined_loss((logits[0], aux_logits), y, y_b, 0.4)
    with pytest.raises(
        TypeError, match=r"`output` to be an AuxOutput or a \(logits, aux_logits\) pair"
    ):
        combined_loss(logits, y, y_b, 0.4)
    with pytest.raises(ValueError, match=r"`reduction` to be one of"):
        CombinedLoss(0.4, reduction="avg")
