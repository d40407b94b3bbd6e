"""Checks that need a CUDA device; collected only where one is present (see conftest.py)."""

import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

from auxtransfer import CombinedLoss, RandomPartitionHead, combined_loss

pytestmark = pytest.mark.cuda


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    backbone = torchvision.models.resnet18(num_classes=10).to("cuda", dtype)
    return RandomPartitionHead(backbone, num_partitions=2, seed=3)


def test_made_on_the_classifiers_device_and_dtype():
    net = _net(torch.bfloat16)
    assert net.aux_head.weight.device.type == "cuda"
    assert net.aux_head.weight.dtype == torch.bfloat16
    assert net.partition.device.type == "cuda"
    cpu = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), num_partitions=2, seed=3)
    # The seed alone decides the initial weights, whatever the device.
    torch.testing.assert_close(
        net.aux_head.weight.float().cpu(), cpu.aux_head.weight.bfloat16().float()
    )


def test_relabel_and_loss_on_the_device():
    net = _net()
    y = torch.tensor([0, 4, 9], device="cuda")
    y_b = net.relabel(y)
    assert y_b.device.type == "cuda"
    assert torch.equal(y_b.cpu(), net.partition.cpu().t()[y.cpu()])
    logits = torch.randn(3, 10, device="cuda")
    aux = torch.randn(3, 2, 2, device="cuda")
    assert torch.equal(combined_loss((logits, aux), y, y_b, 0.0), F.cross_entropy(logits, y))


def test_bad_labels_on_the_device_stop_with_the_arguments_name():
    # The check runs on the device (no host synchronisation); like PyTorch's own index
    # checks it is a device-side assert, fatal to the process, so it runs in a child.
    code = (
        "import torch, torchvision; from auxtransfer import RandomPartitionHead; "
        "net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10)).cuda(); "
        "net.relabel(torch.tensor([0, 12], device='cuda')); torch.cuda.synchronize()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "`target` holds class indices outside [0, 10)" in result.stderr


def test_autocast_bf16_train_step():
    net = _net().train()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = net(x)
        loss = CombinedLoss(0.4)(out, y, net.relabel(y))
    assert out.aux_logits.dtype == torch.bfloat16
    loss.backward()
    assert net.aux_head.weight.grad.dtype == torch.float32
    assert net.aux_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224", "convnext_atto"])
def test_inductor_compile_matches_eager(name):
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if name.startswith("vit") else {}
    net = RandomPartitionHead(timm.create_model(name, num_classes=10, **kwargs)).cuda().eval()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        eager = net(x)
        compiled = torch.compile(net, fullgraph=True)(x)
    torch.testing.assert_close(compiled.logits, eager.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(compiled.aux_logits, eager.aux_logits, rtol=1e-3, atol=1e-3)


def _graph_case(n=44, batch_size=8, binary=True, channels_last=False, drop_rate=0.0):
    from auxtransfer.experiments import DeviceBatches
    from auxtransfer.models import cifar_densenet_bc_100

    torch.manual_seed(0)
    model = cifar_densenet_bc_100(num_classes=5, depth=10, growth_rate=4, drop_rate=drop_rate)
    if binary:
        model = RandomPartitionHead(model, num_partitions=2, seed=3)
    model = model.cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (n,), generator=g)
    mean, std = (0.5,) * 3, (0.25,) * 3

    def batches(train, size):
        return DeviceBatches(images, labels, batch_size=size, mean=mean, std=std, device="cuda",
            train=train, partition=getattr(model, "partition", None) if train else None,
            channels_last=channels_last)  # fmt: skip

    return model, batches(True, batch_size), batches(False, 12)


def _train_side_by_side(reference, captured, batches, tests, *, lr=0.02, epochs=3):
    """Train both for ``epochs`` (a tenfold rate drop at the last), the same dropout masks
    for both; after each epoch yield both models, their sums and their evaluations."""
    for epoch in range(1, epochs + 1):
        rate = lr if epoch < epochs else lr / 10
        results = []
        for run in (reference, captured):
            run["optimizer"].param_groups[0]["lr"] = rate
            torch.cuda.manual_seed(100 + epoch)
            sums = run["train"](batches, epoch)
            results.append((sums, run["evaluate"](tests)))
        yield epoch, results


def _runner(model, trainer=None):
    from auxtransfer.experiments.loop import evaluate, train_one_epoch

    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4, nesterov=True
    )
    if trainer is None:
        return {"model": model, "optimizer": optimizer,
                "train": lambda b, e: train_one_epoch(model, b, optimizer, epoch=e, binary_weight=0.3),
                "evaluate": lambda t: evaluate(model, t)}  # fmt: skip
    steps = trainer(model, optimizer, binary_weight=0.3)
    return {"model": model, "optimizer": optimizer, "steps": steps,
            "train": lambda b, e: steps.train_one_epoch(b, epoch=e), "evaluate": steps.evaluate}  # fmt: skip


CASES = [(False, False, 0.0), (True, True, 0.0), (True, False, 0.2)]


@pytest.mark.parametrize(("binary", "channels_last", "drop_rate"), CASES)
def test_replays_equal_the_same_steps_run_eagerly(binary, channels_last, drop_rate, monkeypatch):
    # The capture itself, isolated: the eager side runs the very arithmetic the graph
    # records (the rate as a tensor), so only the recording could make them differ.
    import copy
    import functools

    from auxtransfer.experiments import graphs

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    update = graphs._Group.update
    monkeypatch.setattr(graphs._Group, "update", lambda self, captured: update(self, True))
    model, batches, tests = _graph_case(
        binary=binary, channels_last=channels_last, drop_rate=drop_rate
    )
    eager = _runner(model, functools.partial(graphs.GraphTrainer, capture=False))
    replayed = _runner(copy.deepcopy(model), graphs.GraphTrainer)
    for epoch, ((sums, evaluation), (replay_sums, replay_evaluation)) in _train_side_by_side(
        eager, replayed, batches, tests
    ):
        torch.testing.assert_close(replay_sums, sums, rtol=1e-5, atol=1e-6)
        assert replay_evaluation == pytest.approx(evaluation, rel=1e-5, abs=1e-6)
        pairs = zip(eager["model"].named_parameters(), replayed["model"].parameters(), strict=True)
        for (name, p), q in pairs:
            torch.testing.assert_close(
                q, p, rtol=1e-5, atol=1e-6, msg=lambda m, at=f"{name}, epoch {epoch}": f"{at}: {m}"
            )
        for b, c in zip(eager["model"].buffers(), replayed["model"].buffers(), strict=True):
            torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6)
    # 5 full batches and a short one per epoch; 3 full test batches and a short one.
    assert replayed["steps"].captured == (True, True)


@pytest.mark.parametrize(("binary", "channels_last", "drop_rate"), CASES)
def test_captured_steps_follow_the_plain_loop(binary, channels_last, drop_rate):
    # Against the plain loop: the same up to the update's last bit, which a tiny network
    # amplifies over a few steps (measured on CPU: up to 5e-4 relative at rate 0.02), so
    # the tolerance is loose; a missing rate change or other dropout masks are far off.
    import copy

    from auxtransfer.experiments.graphs import GraphTrainer

    model, batches, tests = _graph_case(
        binary=binary, channels_last=channels_last, drop_rate=drop_rate
    )
    plain, captured = _runner(model), _runner(copy.deepcopy(model), GraphTrainer)
    for epoch, ((sums, evaluation), (captured_sums, captured_evaluation)) in _train_side_by_side(
        plain, captured, batches, tests
    ):
        loss_terms = [0, 2, 4, 5]  # losses and image counts; errors within two predictions
        torch.testing.assert_close(
            captured_sums[loss_terms], sums[loss_terms], rtol=1e-2, atol=1e-3
        )
        torch.testing.assert_close(captured_sums[[1, 3]], sums[[1, 3]], rtol=0, atol=2.0)
        assert captured_evaluation[0] == pytest.approx(evaluation[0], rel=1e-2)
        pairs = zip(plain["model"].named_parameters(), captured["model"].parameters(), strict=True)
        for (name, p), q in pairs:
            torch.testing.assert_close(
                q, p, rtol=1e-2, atol=1e-3, msg=lambda m, at=f"{name}, epoch {epoch}": f"{at}: {m}"
            )
    assert captured["steps"].captured == (True, True)
    # The rate is read at every epoch by the replays too: at rate 0 nothing moves.
    before = [p.detach().clone() for p in captured["model"].parameters()]
    captured["optimizer"].param_groups[0]["lr"] = 0.0
    captured["steps"].train_one_epoch(batches, epoch=4)
    assert all(
        torch.equal(p, q) for p, q in zip(captured["model"].parameters(), before, strict=True)
    )


def test_train_run_with_graphs_matches_the_plain_loop(tmp_path):
    from auxtransfer.experiments.train import RunConfig, train_run

    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (72, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (72,), generator=g)
    config = RunConfig(model="cifar_densenet_bc_100", num_classes=4, epochs=3, lr=0.05,
        milestones=(3,), batch_size=16, binary_weight=0.3, amp=True, channels_last=True,
        model_kwargs={"depth": 10, "growth_rate": 4})  # fmt: skip
    results = {}
    for graphs in (True, False):
        results[graphs] = train_run(config, tmp_path / str(graphs), (data, labels),
            (data[:40], labels[:40]), mean=(0.5,) * 3, std=(0.25,) * 3, device="cuda",
            cuda_graphs=graphs)  # fmt: skip
    # bf16 forward: close, not equal.
    assert results[True]["final_test_error"] == pytest.approx(
        results[False]["final_test_error"], abs=7.5
    )
    a = torch.load(tmp_path / "True" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "False" / "last.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=0.05, atol=0.02)
