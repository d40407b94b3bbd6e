"""RandomPartitionHead on every torchvision classification model and across timm."""

import warnings

import pytest
import timm
import torch
import torchvision

from auxtransfer import CombinedLoss, RandomPartitionHead

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)

# The classifier layer of each torchvision family, read off torchvision's source.
TORCHVISION_CLASSIFIERS = {
    "alexnet": "classifier.6",
    "convnext": "classifier.2",
    "densenet": "classifier",
    "efficientnet": "classifier.1",
    "googlenet": "fc",
    "inception": "fc",
    "maxvit": "classifier.5",
    "mnasnet": "classifier.1",
    "mobilenet_v2": "classifier.1",
    "mobilenet_v3": "classifier.3",
    "regnet": "fc",
    "resnet": "fc",
    "resnext": "fc",
    "shufflenet": "fc",
    "squeezenet": "classifier.1",
    "swin": "head",
    "vgg": "classifier.6",
    "vit": "heads.head",
    "wide_resnet": "fc",
}


def torchvision_classifier(name: str) -> str:
    family = max((f for f in TORCHVISION_CLASSIFIERS if name.startswith(f)), key=len)
    return TORCHVISION_CLASSIFIERS[family]


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def timm_input_size(model: torch.nn.Module) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224))


def _check_meta(model, size, num_classes=10, heads=2):
    """Wrap a meta-device model and run a meta forward; check shapes against its classifier."""
    net = RandomPartitionHead(model, num_partitions=heads).eval()
    classifier = model.get_submodule(net.classifier_name)
    seen = []
    handle = classifier.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    try:
        out = net(torch.empty(2, *size, device="meta"))
    finally:
        handle.remove()
    assert out.logits.shape == (2, num_classes)
    assert out.aux_logits.shape == (2, heads, 2)
    # The binary head is as wide as what the classifier reads: its features, the channels
    # of a feature map, or the width of the tokens a head classifies before pooling.
    width = seen[0][-1] if len(seen[0]) == 3 else seen[0][1]
    assert net.aux_head.in_features == width
    assert net.aux_head.weight.is_meta and net.partition.shape == (heads, num_classes)
    return net


def test_torchvision_lists_80_classification_models():
    assert len(TORCHVISION_MODELS) >= 80


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_structure_on_meta(name, regnet_on_meta):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # googlenet/inception warn about init_weights
        model = torchvision.models.get_model(name, weights=None, num_classes=10)
    net = _check_meta(model, input_size(name))
    assert net.classifier_name == torchvision_classifier(name)


# A real forward and backward on tiny inputs, one model per classifier layout.
TORCHVISION_REAL = [
    ("resnet18", {}, 32),  # fc
    ("densenet121", {}, 32),  # classifier
    ("mobilenet_v3_small", {}, 32),  # Sequential classifier
    ("efficientnet_b0", {}, 32),  # Dropout + Linear
    ("squeezenet1_1", {}, 64),  # conv classifier on a feature map
    ("googlenet", {"aux_logits": True, "init_weights": False}, 64),  # training tuple
    ("inception_v3", {"aux_logits": True, "init_weights": False}, 299),  # training tuple
    ("vit_b_16", {"image_size": 32}, 32),  # heads.head
    ("convnext_tiny", {}, 32),  # LayerNorm2d + Flatten + Linear
    ("shufflenet_v2_x0_5", {}, 32),
    ("regnet_x_400mf", {}, 32),
    ("mnasnet0_5", {}, 32),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "size"), TORCHVISION_REAL, ids=[n for n, _, _ in TORCHVISION_REAL]
)
def test_torchvision_forward_backward(name, kwargs, size):
    torch.manual_seed(0)
    backbone = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = backbone(x)
    net = RandomPartitionHead(backbone, num_partitions=2, seed=1).eval()
    with torch.no_grad():
        assert torch.equal(net(x).logits, expected)
    net.train()
    y = torch.tensor([1, 7])
    out = net(x)
    CombinedLoss(0.4)(out, y, net.relabel(y)).backward()
    assert net.aux_head.weight.grad.abs().sum() > 0
    first = next(p for p in backbone.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0


# Families whose first model is slow on the meta device (a large LSTM): take a small one.
_TIMM_REPRESENTATIVE = {"sequencer": "sequencer2d_s"}


def _timm_families():
    """One model per timm module (architecture family), the first by name."""
    chosen = []
    for module in timm.list_modules():
        models = timm.list_models(module=module)
        if models:
            chosen.append(_TIMM_REPRESENTATIVE.get(module, models[0]))
    return sorted(chosen)


TIMM_FAMILY_MODELS = _timm_families()
# Encoders with no classifier at all: they get a clear error instead.
TIMM_ENCODERS = {name for name in timm.list_models() if name.endswith("_enc")}


def _timm_meta(name):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False, num_classes=10)


def _check_timm(name):
    model = _timm_meta(name)
    if name in TIMM_ENCODERS:
        with pytest.raises(ValueError, match=r"could not find the classifier.*`classifier=`"):
            RandomPartitionHead(model)
        return
    _check_meta(model, timm_input_size(model))


def test_timm_has_many_families():
    assert len(TIMM_FAMILY_MODELS) >= 90


@pytest.mark.parametrize("name", TIMM_FAMILY_MODELS)
def test_timm_family_on_meta(name):
    _check_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", timm.list_models())
def test_every_timm_model_on_meta(name):
    _check_timm(name)


# A real forward: the binary head must read exactly timm's own pre-logits.
TIMM_REAL = [
    ("resnet18", {}, 32),
    ("vit_tiny_patch16_224", {"img_size": 32}, 32),
    ("convnext_atto", {}, 32),
    ("efficientnet_b0", {}, 32),
    ("mobilenetv3_small_050", {}, 32),
    ("dla34", {}, 32),  # conv classifier after pooling
    ("resnet50_clip", {"img_size": 64}, 64),  # classifies every token, then pools
]


@pytest.mark.parametrize(("name", "kwargs", "size"), TIMM_REAL, ids=[n for n, _, _ in TIMM_REAL])
def test_timm_reads_its_pre_logits(name, kwargs, size):
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    net = RandomPartitionHead(backbone, num_partitions=3).eval()
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out.logits, backbone(x))
        pre_logits = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        expected = net.aux_head(pre_logits).view(2, 3, 2)
    torch.testing.assert_close(out.aux_logits, expected, rtol=1e-4, atol=1e-5)


def test_timm_distilled_model_reads_the_class_token():
    # DeiT's distilled models have two classifiers; the binary head sits beside the first,
    # `head`, which reads the class token (timm's pre-logits average both tokens).
    torch.manual_seed(0)
    name = "deit_tiny_distilled_patch16_224"
    backbone = timm.create_model(name, pretrained=False, num_classes=10, img_size=32).eval()
    net = RandomPartitionHead(backbone).eval()
    assert net.classifier_name == "head"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out.logits, backbone(x))
        class_token = backbone.forward_features(x)[:, 0]
        torch.testing.assert_close(out.aux_logits[:, 0], net.aux_head(class_token))
