"""The graph-ready step (GraphTrainer without capture) against the plain loop, on CPU.

The CUDA graphs themselves are checked in test_cuda.py, where a GPU is present.
"""

import copy

import pytest
import torch

from auxtransfer import RandomPartitionHead
from auxtransfer.experiments import DeviceBatches
from auxtransfer.experiments.graphs import GraphTrainer, _Group
from auxtransfer.experiments.loop import evaluate, train_one_epoch
from auxtransfer.models import cifar_densenet_bc_100

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _model(binary):
    torch.manual_seed(0)
    model = cifar_densenet_bc_100(num_classes=5, depth=10, growth_rate=4)
    return RandomPartitionHead(model, num_partitions=2, seed=3) if binary else model


def _batches(model, n=22, batch_size=8, train=True):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    partition = getattr(model, "partition", None) if train else None
    return DeviceBatches(images, labels, batch_size=batch_size, mean=MEAN, std=STD,
                         train=train, partition=partition)  # fmt: skip


def _sgd(model, **settings):
    body = [p for name, p in model.named_parameters() if "classifier" not in name]
    head = [p for name, p in model.named_parameters() if "classifier" in name]
    groups = [{"params": body, "lr": 0.05}, {"params": head, "lr": 0.2}]
    return torch.optim.SGD(groups, lr=0.1, weight_decay=1e-3, **settings)


@pytest.mark.parametrize(
    ("binary", "settings"),
    [
        (False, {"momentum": 0.9}),
        (True, {"momentum": 0.9, "nesterov": True}),
        (True, {"momentum": 0.5, "dampening": 0.1, "maximize": False}),
    ],
)
def test_graph_ready_step_equals_the_plain_loop(binary, settings):
    plain = _model(binary)
    ready = copy.deepcopy(plain)
    plain_opt, ready_opt = _sgd(plain, **settings), _sgd(ready, **settings)
    trainer = GraphTrainer(ready, ready_opt, aux_weight=0.3)
    batches, tests = _batches(plain), _batches(plain, n=13, batch_size=4, train=False)
    for epoch, drop in ((1, 1.0), (2, 1.0), (3, 0.1)):  # a learning-rate drop at epoch 3
        for opt in (plain_opt, ready_opt):
            for group, lr in zip(opt.param_groups, (0.05, 0.2), strict=True):
                group["lr"] = lr * drop
        expected = train_one_epoch(plain, batches, plain_opt, epoch=epoch, aux_weight=0.3)
        sums = trainer.train_one_epoch(batches, epoch=epoch)
        torch.testing.assert_close(sums, expected, rtol=1e-6, atol=1e-9)
        for (name, p), q in zip(plain.named_parameters(), ready.parameters(), strict=True):
            torch.testing.assert_close(
                q, p, rtol=1e-5, atol=1e-7, msg=f"{name} after epoch {epoch}"
            )
        for p, q in zip(plain.parameters(), ready.parameters(), strict=True):
            torch.testing.assert_close(
                ready_opt.state[q]["momentum_buffer"], plain_opt.state[p]["momentum_buffer"],
                rtol=1e-5, atol=1e-7,
            )  # fmt: skip
        for b, c in zip(plain.buffers(), ready.buffers(), strict=True):
            torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-7)
        assert trainer.evaluate(tests) == pytest.approx(evaluate(plain, tests), rel=1e-5)
    # Every step moved the weights: the plain loop's steps were not empty.
    assert not torch.equal(next(plain.parameters()), next(_model(binary).parameters()))


def test_learning_rate_is_read_at_every_epoch(one_thread, monkeypatch):
    # Through the arithmetic a replay records: the rate from the device tensor, refreshed
    # at each epoch (the eager steps read the group's rate directly).
    update = _Group.update
    monkeypatch.setattr(_Group, "update", lambda self, captured: update(self, True))
    model = _model(False)
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = GraphTrainer(model, optimizer)
    batches = _batches(model)
    trainer.train_one_epoch(batches, epoch=1)
    after_one = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"] = 0.0
    trainer.train_one_epoch(batches, epoch=2)
    for p, q in zip(model.parameters(), after_one, strict=True):
        assert torch.equal(p, q)  # rate 0: nothing moved in epoch 2
    assert any(not torch.equal(q, r) for q, r in zip(after_one, start, strict=True))


def test_frozen_and_unused_parameters_are_left_alone(one_thread):
    model = _model(False)
    model.features.conv0.weight.requires_grad_(False)
    unused = torch.nn.Parameter(torch.ones(3))
    model.register_parameter("unused", unused)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1
    )
    frozen = model.features.conv0.weight.detach().clone()
    trainer = GraphTrainer(model, optimizer)
    trainer.train_one_epoch(_batches(model), epoch=1)
    assert torch.equal(model.features.conv0.weight, frozen)
    assert torch.equal(unused, torch.ones(3))  # no gradient, so no decay either (as SGD)
    assert "momentum_buffer" not in optimizer.state.get(unused, {})


def test_refusals_name_the_argument():
    model = _model(False)
    with pytest.raises(TypeError, match=r"`optimizer` to be a torch\.optim\.SGD.*Adam"):
        GraphTrainer(model, torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match=r"CUDA device to capture.*`capture`.*cpu"):
        GraphTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), capture=True)
    with pytest.raises(ValueError, match="`warmup` to be an int of at least 1, but got 0"):
        GraphTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), warmup=0)


def _change_momentum(optimizer):
    optimizer.param_groups[0]["momentum"] = 0.5


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (_change_momentum, ValueError, "stay what the recorded step bakes in"),
        # set_to_none: the step would go on updating the stale gradients
        (lambda optimizer: optimizer.zero_grad(), RuntimeError, r"momentum buffers .* replaced"),
    ],
)
def test_what_the_recorded_step_relies_on_is_checked(one_thread, change, error, match):
    model = _model(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = GraphTrainer(model, optimizer)
    batches = _batches(model)
    trainer.train_one_epoch(batches, epoch=1)
    trainer.train_one_epoch(batches, epoch=2)  # nothing changed: fine
    change(optimizer)
    with pytest.raises(error, match=match):
        trainer.train_one_epoch(batches, epoch=3)


@pytest.mark.parametrize("nesterov", [False, True])
def test_recorded_update_is_sgd_to_the_last_bit(nesterov):
    # What a replay computes (the rate as a tensor) against SGD itself, one step apart.
    torch.manual_seed(0)
    params = [torch.randn(50, 7, requires_grad=True), torch.randn(13, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    start = [p.detach().clone() for p in params]
    settings = {"lr": 0.3, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": nesterov}
    reference, ours = torch.optim.SGD(params, **settings), torch.optim.SGD(twins, **settings)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, twins, grads, strict=True):
            p.grad = g.clone()
            if step == 0:
                q.grad = g.clone()
            else:
                q.grad.copy_(g)  # in place, as backward adds into the zeroed gradients
        reference.step()
        if step == 0:
            ours.step()  # the first step is SGD's own (it makes the momentum buffers)
            group = _Group(ours.param_groups[0], twins, ours.state)
            group.refresh_rate()
            continue
        group.update(captured=True)
        for p, q in zip(params, twins, strict=True):
            torch.testing.assert_close(q, p, rtol=2e-7, atol=2e-7)
    assert all((p - s).abs().min() > 1e-3 for p, s in zip(twins, start, strict=True))  # moved
    assert group.rate.dtype == torch.float32 and float(group.rate) == pytest.approx(-0.3)
