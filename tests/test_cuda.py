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


def _graph_case(n=40, batch_size=8, binary=True, channels_last=False):
    from auxtransfer.experiments import DeviceBatches
    from auxtransfer.models import cifar_densenet_bc_100

    torch.manual_seed(0)
    model = cifar_densenet_bc_100(num_classes=5, depth=10, growth_rate=4)
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


@pytest.mark.parametrize(("binary", "channels_last"), [(False, False), (True, True)])
def test_captured_steps_equal_the_plain_loop(binary, channels_last, monkeypatch):
    import copy

    from auxtransfer.experiments.graphs import GraphTrainer
    from auxtransfer.experiments.loop import evaluate, train_one_epoch

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    plain, batches, tests = _graph_case(binary=binary, channels_last=channels_last)
    captured = copy.deepcopy(plain)
    optimizers = [
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
        for m in (plain, captured)
    ]
    trainer = GraphTrainer(captured, optimizers[1], binary_weight=0.3)
    for epoch, lr in ((1, 0.1), (2, 0.1), (3, 0.01)):  # a learning-rate drop at epoch 3
        for optimizer in optimizers:
            optimizer.param_groups[0]["lr"] = lr
        expected = train_one_epoch(plain, batches, optimizers[0], epoch=epoch, binary_weight=0.3)
        sums = trainer.train_one_epoch(batches, epoch=epoch)
        torch.testing.assert_close(sums, expected, rtol=1e-4, atol=1e-4)
        for (name, p), q in zip(plain.named_parameters(), captured.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-5, msg=f"{name}, epoch {epoch}")
        for b, c in zip(plain.buffers(), captured.buffers(), strict=True):
            torch.testing.assert_close(c, b, rtol=1e-3, atol=1e-5)
        assert trainer.evaluate(tests) == pytest.approx(evaluate(plain, tests), rel=1e-3, abs=1e-3)
    assert trainer.captured == (True, True)  # 5 full batches per epoch, 3 full test batches
    # The drop took effect in the replayed steps: at rate 0 a replay changes nothing.
    before = [p.detach().clone() for p in captured.parameters()]
    optimizers[1].param_groups[0]["lr"] = 0.0
    trainer.train_one_epoch(batches, epoch=4)
    assert all(torch.equal(p, q) for p, q in zip(captured.parameters(), before, strict=True))


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
