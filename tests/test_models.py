import pytest
import timm
import torch

import auxtransfer.models
from auxtransfer import RandomPartitionHead, find_classifier, layer_names
from auxtransfer.models import CIFAR100_MEAN, CifarDenseNet, WideResNet


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "classes", "expected"),
    [
        ("cifar_densenet_bc_100", 100, 800_032),
        ("cifar_densenet_bc_100", 50, 782_882),
        ("cifar_wrn_28_10", 100, 36_536_884),
        ("cifar_wrn_28_10", 50, 36_504_834),
    ],
)
def test_parameter_counts(name, classes, expected):
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=classes)
    assert _count(model) == expected


@pytest.mark.parametrize("name", ["cifar_densenet_bc_100", "cifar_wrn_28_10"])
def test_registered_with_timm(name):
    assert timm.is_model(name)
    assert name in timm.list_models("cifar_*")
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == CIFAR100_MEAN
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model(name, pretrained=True)
    assert auxtransfer.models.__all__


def test_densenet_bc_shapes_stage_by_stage():
    # Channels and resolution after each stage, worked out from the architecture:
    # stem 2k = 24 at 32x32; +16 * 12 per block; transitions halve channels and resolution.
    torch.manual_seed(0)
    model = timm.create_model("cifar_densenet_bc_100", num_classes=50).eval()
    shapes = {}
    for name in (
        "conv0",
        "denseblock1",
        "transition1",
        "denseblock2",
        "transition2",
        "denseblock3",
    ):
        getattr(model.features, name).register_forward_hook(
            lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))
        )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 50)
    assert shapes == {
        "conv0": (24, 32, 32),
        "denseblock1": (216, 32, 32),
        "transition1": (108, 16, 16),
        "denseblock2": (300, 16, 16),
        "transition2": (150, 8, 8),
        "denseblock3": (342, 8, 8),
    }
    stem = model.features.conv0
    assert (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (1, 1), (1, 1))
    assert not hasattr(model.features, "norm0")
    assert not hasattr(model.features, "pool0")


def test_densenet_addresses_are_the_papers():
    model = CifarDenseNet(num_classes=50)
    names = layer_names(model)
    assert names == ["stem"] + [f"{b}.{i}" for b in (1, 2, 3) for i in range(1, 17)] + ["head"]


def test_wrn_structure():
    torch.manual_seed(0)
    model = WideResNet(depth=16, widen_factor=2, drop_rate=0.0, num_classes=10).eval()
    assert layer_names(model) == ["stem", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "head"]
    block = model.block2.layer[0]
    seen = {}
    block.conv1.register_forward_pre_hook(lambda m, a: seen.__setitem__("conv1", a[0]))
    block.shortcut.register_forward_pre_hook(lambda m, a: seen.__setitem__("shortcut", a[0]))
    block.bn1.register_forward_pre_hook(lambda m, a: seen.__setitem__("input", a[0]))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # The shortcut convolves the pre-activated input, the same tensor conv1 reads.
    assert torch.equal(seen["shortcut"], seen["conv1"])
    assert torch.equal(seen["conv1"], torch.relu(block.bn1(seen["input"])))
    assert model.block1.layer[1].shortcut is None
    widths = [
        model.block1.layer[0].conv1.out_channels,
        model.block2.layer[0].conv1.out_channels,
        model.block3.layer[0].conv1.out_channels,
    ]
    assert widths == [32, 64, 128]
    assert [model.block2.layer[0].conv1.stride, model.block3.layer[0].conv1.stride] == [
        (2, 2),
        (2, 2),
    ]


def test_wrn_28_10_defaults():
    with torch.device("meta"):
        model = timm.create_model("cifar_wrn_28_10")
    assert len(model.block1.layer) == 4
    assert model.block1.layer[0].drop.p == 0.3
    assert model.block3.layer[0].conv1.out_channels == 640


@pytest.mark.parametrize("cls", [CifarDenseNet, WideResNet])
def test_timm_protocol(cls):
    torch.manual_seed(0)
    model = cls(depth=16, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.num_features)
    assert torch.equal(model.get_classifier()(pre_logits), model(x))
    assert find_classifier(model) in ("classifier", "fc")
    net = RandomPartitionHead(model).eval()
    torch.testing.assert_close(net(x).aux_logits[:, 0], net.aux_head(pre_logits))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: CifarDenseNet(depth=101),
            r"`depth` to be an int >= 10 with \(depth - 4\) % 6 == 0, but got 101",
        ),
        (lambda: CifarDenseNet(growth_rate=0), r"`growth_rate` to be an int >= 1, but got 0"),
        (
            lambda: WideResNet(depth=27),
            r"`depth` to be an int >= 10 with \(depth - 4\) % 6 == 0, but got 27",
        ),
        (lambda: WideResNet(widen_factor=0), r"`widen_factor` to be an int >= 1, but got 0"),
        (lambda: WideResNet(drop_rate=1.0), r"`drop_rate` to be a float in \[0, 1\), but got 1.0"),
    ],
)
def test_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: CifarDenseNet(depth=40.0), r"`depth` to be an int >= 10, but got 40.0 \(float\)"),
        (lambda: CifarDenseNet(growth_rate="12"), r"`growth_rate` to be an int >= 1, but got '12'"),
        (lambda: WideResNet(widen_factor=2.5), r"`widen_factor` to be an int >= 1, but got 2.5"),
        (
            lambda: WideResNet(drop_rate="0.3"),
            r"`drop_rate` to be a float in \[0, 1\), but got '0.3'",
        ),
    ],
)
def test_arguments_of_the_wrong_type(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def _assert_reference_init(model):
    """The reference CIFAR code's initialisation, layer by layer."""
    import math

    convs = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            expected = math.sqrt(2.0 / (k * module.out_channels))
            if module.weight.numel() >= 1000:
                assert module.weight.std().item() == pytest.approx(expected, rel=0.1), name
                assert abs(module.weight.mean().item()) < 0.1 * expected, name
                convs += 1
        elif isinstance(module, torch.nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            assert torch.equal(module.running_var, torch.ones_like(module.running_var)), name
        elif isinstance(module, torch.nn.Linear):
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            bound = 1 / math.sqrt(module.in_features)  # PyTorch's default for the weight
            assert module.weight.abs().max() <= bound, name
    assert convs > 10


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("cifar_densenet_bc_100", num_classes=10),
        lambda: timm.create_model("cifar_wrn_28_10", num_classes=10, depth=16, widen_factor=2),
    ],
)
def test_reference_initialisation_and_init_weights(build):
    torch.manual_seed(0)
    model = build()
    _assert_reference_init(model)
    stem = model.features.conv0 if isinstance(model, CifarDenseNet) else model.conv1
    assert stem.weight.std().item() == pytest.approx((2 / (9 * stem.out_channels)) ** 0.5, rel=0.1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0).add_(1.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.fill_(5.0)
    model.init_weights()
    _assert_reference_init(model)
