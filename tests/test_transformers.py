"""Hugging Face image classifiers as a family: layer map, freezing, resets, rates, the head.

Every test that takes ``hf_family`` runs once per tiny model of ``conftest.HF_FAMILIES``
(ResNet, RegNet, ConvNeXt, ViT, BEiT, Swin), built from a config: nothing is downloaded.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auxtransfer import (
    CombinedLoss,
    RandomPartitionHead,
    freeze_until,
    layer_names,
    layerwise_lr,
    reset_after,
    reset_classifier,
)


def _blocks(model):
    """Name of the model's outermost ModuleList: its stages, or its transformer blocks
    (``vit.layers`` or ``vit.encoder.layer``, as the transformers release names it)."""
    return next(n for n, m in model.named_modules() if isinstance(m, nn.ModuleList))


def _stem(model):
    base = model.base_model_prefix
    inner = model.get_submodule(base)
    return f"{base}.{'embedder' if hasattr(inner, 'embedder') else 'embeddings'}"


def _x(batch=4, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _expected_names(model):
    blocks = _blocks(model)
    two_levels = ["stem", "0.0", "1.0", "1.1", "2.0", "3.0", "head"]
    return {
        "resnet": two_levels,
        "regnet": two_levels,
        "convnext": [
            "stem",
            "0.0",
            "1.downsampling_layer",
            "1.0",
            "1.1",
            "2.downsampling_layer",
            "2.0",
            "3.downsampling_layer",
            "3.0",
            "convnext.layernorm",
            "head",
        ],
        "vit": ["stem", f"{blocks}.0", f"{blocks}.1", f"{blocks}.2", "vit.layernorm", "head"],
        "beit": ["stem", f"{blocks}.0", f"{blocks}.1", f"{blocks}.2", "beit.pooler", "head"],
        "swin": ["stem", "0.0", "0.downsample", "1.0", "1.1", "swin.layernorm", "head"],
    }


def test_one_address_per_block_in_forward_order(hf_family, hf_build):
    model = hf_build()
    assert layer_names(model) == _expected_names(model)[hf_family]


def test_freeze_until_a_module_name_covers_exactly_up_to_it(hf_family, hf_build):
    model = hf_build()
    blocks = _blocks(model)
    summary = freeze_until(model, f"{blocks}.1")
    prefixes = (f"{_stem(model)}.", f"{blocks}.0.", f"{blocks}.1.")
    expected = {n for n, _ in model.named_parameters() if n.startswith(prefixes)}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected
    assert summary.addresses[0] == "stem"
    assert summary.frozen_params == sum(
        p.numel() for n, p in model.named_parameters() if n in expected
    )


@pytest.mark.parametrize("bn", ["freeze", "update"])
def test_training_leaves_frozen_layers_as_the_policy_says(hf_family, hf_build, bn):
    torch.manual_seed(0)
    model = hf_build()
    blocks = _blocks(model)
    summary = freeze_until(model, f"{blocks}.0", bn=bn)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for step in range(2):
        loss = F.cross_entropy(model(_x(seed=step)).logits, torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(after[n], state[n]) for n in frozen)
    assert any(not torch.equal(after[n], state[n]) for n in after if n not in frozen)
    stats = [n for n in after if n.endswith("running_mean") and n.startswith(f"{_stem(model)}.")]
    if hf_family in ("resnet", "regnet"):  # BatchNorm families
        assert stats
        changed = [not torch.equal(after[n], state[n]) for n in stats]
        assert all(changed) if bn == "update" else not any(changed)
        assert bool(summary.frozen_norms) == (bn == "freeze")
    else:  # LayerNorm only: nothing to hold
        assert not stats
        assert summary.frozen_norms == ()


def _perturb(model):
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))
    return model


def test_reset_after_gives_the_models_own_initialisation(hf_family, hf_build):
    torch.manual_seed(0)
    model = _perturb(hf_build())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = _blocks(model)
    summary = reset_after(model, f"{blocks}.0", seed=3)
    assert summary.init == "transformers"
    assert summary.skipped == ()
    kept = (f"{_stem(model)}.", f"{blocks}.0.")
    assert set(summary.tensors) == {n for n in before if not n.startswith(kept)}
    torch.manual_seed(3)
    fresh = hf_build().state_dict()
    for name, value in model.state_dict().items():
        expected = fresh[name] if name in summary.tensors else before[name]
        assert torch.equal(value, expected), name


def test_reset_classifier_takes_the_families_layer_and_config(hf_family, hf_build):
    model = hf_build()
    reset_classifier(model, 7, seed=5)
    assert model.config.num_labels == 7
    assert model(_x(2)).logits.shape == (2, 7)
    torch.manual_seed(5)
    fresh = hf_build(num_labels=7).state_dict()
    head = [n for n in model.state_dict() if n.startswith("classifier.")]
    assert head
    assert all(torch.equal(model.state_dict()[n], fresh[n]) for n in head)


def test_layerwise_lr_with_multisteplr(hf_family, hf_build):
    model = hf_build()
    blocks = _blocks(model)
    groups = layerwise_lr(model, until=f"{blocks}.0", lr=0.01, new_lr=0.1)
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    kept = (f"{_stem(model)}.", f"{blocks}.0.")
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == {
        n for n in names.values() if n.startswith(kept)
    }
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(names)
    opt = torch.optim.SGD(groups, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
    opt.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.01])


def test_binary_head_trains_and_maps_like_the_backbone(hf_family, hf_build):
    backbone = hf_build()
    net = RandomPartitionHead(backbone, seed=0)
    labels = torch.tensor([0, 3, 5, 9])
    out = net(_x())
    assert out.logits.shape == (4, 10)
    assert out.aux_logits.shape == (4, 1, 2)
    loss = CombinedLoss(0.4)(out, labels, net.relabel(labels))
    loss.backward()
    assert net.aux_head.weight.grad is not None
    assert layer_names(net) == layer_names(backbone)
    blocks = _blocks(backbone)
    freeze_until(net, f"backbone.{blocks}.1")
    prefixes = tuple(f"backbone.{p}." for p in (_stem(backbone), f"{blocks}.0", f"{blocks}.1"))
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in net.named_parameters() if n.startswith(prefixes)}


def test_a_cut_inside_a_block_follows_the_forward_pass():
    import transformers

    # ResNet's bottleneck registers its shortcut first but runs it last; ConvNeXt's layer
    # holds its layer scale itself (registered before its convolutions) and applies it last.
    resnet = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    )
    layer = "resnet.encoder.stages.1.layers.0"
    registered = [n for n, _ in resnet.get_submodule(layer).named_children()]
    assert registered.index("shortcut") < registered.index("layer")
    freeze_until(resnet, f"{layer}.layer.2")
    frozen = {n for n, p in resnet.named_parameters() if not p.requires_grad}
    assert f"{layer}.layer.2.convolution.weight" in frozen
    assert not any(n.startswith(f"{layer}.shortcut.") for n in frozen)

    convnext = transformers.ConvNextForImageClassification(
        transformers.ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1])
    )
    layer = "convnext.encoder.stages.1.layers.0"
    summary = freeze_until(convnext, f"{layer}.dwconv")
    frozen = {n for n, p in convnext.named_parameters() if not p.requires_grad}
    assert f"{layer}.dwconv.weight" in frozen
    assert f"{layer}.layer_scale_parameter" not in frozen
    assert f"{layer}.pwconv1.weight" not in frozen
    assert summary.addresses[-1] == f"{layer}.dwconv"


def test_a_wrapped_model_is_traced_at_its_own_input_size():
    # The binary head wraps a 32x32 ViT: the meta pass must use the backbone's image size,
    # or the cut falls back to registration order (with a warning).
    import warnings

    import transformers

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=6,
    )  # fmt: skip
    net = RandomPartitionHead(transformers.ViTForImageClassification(config))
    block = f"backbone.{_blocks(net.backbone)}.1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        freeze_until(net, f"{block}.attention")
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert f"{block}.layernorm_before.weight" in frozen  # runs before the attention
    assert f"{block}.layernorm_after.weight" not in frozen
