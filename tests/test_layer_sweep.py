"""The layer map on every torchvision classification model, across timm families and on
Hugging Face image classifiers."""

import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from auxtransfer import freeze_until, layer_groups, layerwise_lr, unfreeze

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)
_TIMM_REPRESENTATIVE = {"sequencer": "sequencer2d_s"}
TIMM_FAMILIES = sorted(
    _TIMM_REPRESENTATIVE.get(module, models[0])
    for module in timm.list_modules()
    if (models := timm.list_models(module=module))
)


def _input_size(model, name):
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("input_size"):
        return tuple(cfg.get("test_input_size") or cfg["input_size"])
    image_size = getattr(getattr(model, "config", None), "image_size", None)
    if isinstance(image_size, int):  # Hugging Face
        return (3, image_size, image_size)
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def _forward_order(model, size):
    """Modules that own parameters, in the order a (meta) forward first calls them."""
    order, handles = [], []
    for name, module in model.named_modules():
        # The root runs first and may use its own tensors anywhere; skip it.
        if name and next(module.parameters(recurse=False), None) is not None:
            handles.append(
                module.register_forward_pre_hook(lambda m, a, name=name: order.append(name))
            )
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, *size, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def check_layer_map(model, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's single-group warning
        groups = layer_groups(model)
    assert groups
    assert len({g.address for g in groups}) == len(groups)
    index = {}
    for i, group in enumerate(groups):
        for tensor in group.tensors:
            index[tensor] = i
    tensors = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert sorted(index) == sorted(tensors)

    # Ordered as the forward pass runs: the groups of the modules, in call order, never go
    # back (timm's CaiT, CoaT, EfficientViM and vit_srelpos included: their grouping by name
    # is not in forward order, the map's is).
    called = _forward_order(model, _input_size(model, name))
    seen = [
        index[
            f"{m}.{next(iter(dict(model.get_submodule(m).named_parameters(recurse=False))))}".lstrip(
                "."
            )
        ]
        for m in called
    ]
    backwards = [
        (called[i], groups[seen[i]].address) for i in range(1, len(seen)) if seen[i] < max(seen[:i])
    ]
    assert not backwards, backwards[:5]
    check_freezing(model, groups)


def check_freezing(model, groups):
    # freeze_until at a middle address freezes exactly the groups before and at it.
    middle = groups[len(groups) // 2].address
    freeze_until(model, middle)
    last = max(i for i, g in enumerate(groups) if g.address == middle)
    expected = {t for g in groups[: last + 1] for t in g.tensors}
    for tensor_name, param in model.named_parameters():
        assert param.requires_grad == (tensor_name not in expected), tensor_name

    # layerwise_lr covers every trainable parameter exactly once.
    param_groups = layerwise_lr(model, until=groups[len(groups) // 3].address, lr=0.01, new_lr=0.1)
    ids = [id(p) for g in param_groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    unfreeze(model)


@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision(name, regnet_on_meta):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None)
    check_layer_map(model, name)
    assert len(layer_groups(model)) >= 5


def _timm_meta(name):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False)


# The families whose grouping by name is out of forward order: late class tokens,
# interleaved norms, tables shared by every block.
UNTIDY = ["cait_xxs24_224", "coat_lite_tiny", "efficientvim_m1", "vit_srelpos_small_patch16_224"]


@pytest.mark.parametrize("name", sorted({*TIMM_FAMILIES, *UNTIDY}))
def test_timm_family(name):
    check_layer_map(_timm_meta(name), name)


@pytest.mark.slow
@pytest.mark.parametrize("name", timm.list_models())
def test_every_timm_model_with_group_matcher(name):
    model = _timm_meta(name)
    if not hasattr(model, "group_matcher"):
        pytest.skip("no group_matcher")  # opt-in sweep over the models that have one
    check_layer_map(model, name)


def test_hugging_face(hf_family, hf_build):
    with torch.device("meta"):
        model = hf_build()
    check_layer_map(model, hf_family)
    assert len(layer_groups(model)) >= 5


def test_fallback_model_in_forward_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3)
            self.b = nn.BatchNorm2d(4)
            self.c = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.c(self.b(self.a(x))).mean((2, 3)))

    with torch.device("meta"):
        model = Net()
    check_layer_map(model, "net")
    assert [g.address for g in layer_groups(model)] == ["a", "b", "c", "head"]
