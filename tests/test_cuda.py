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
