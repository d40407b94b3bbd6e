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
        # One numbered level: the block's number, whatever the release calls the list.
        "vit": ["stem", "0", "1", "2", "vit.layernorm", "head"],
        "beit": ["stem", "0", "1", "2", "beit.pooler", "head"],
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


# ---------------------------------------------------------------------------------------
# The wrapper on a Hugging Face backbone: its ModelOutput, its loss, its save and load.


_TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
    intermediate_size=32,
)  # fmt: skip


def _tiny(num_labels=10):
    """A tiny ViT (three blocks, 32x32 images), built from its config."""
    import transformers

    config = transformers.ViTConfig(**_TINY_VIT, num_labels=num_labels)
    return transformers.ViTForImageClassification(config)


def test_a_hf_backbone_keeps_its_model_output_beside_the_aux_logits():
    torch.manual_seed(0)
    backbone = _tiny().eval()
    net = RandomPartitionHead(backbone, seed=0)
    x, labels = _x(), torch.tensor([0, 3, 5, 9])
    out = net(pixel_values=x, labels=labels)
    own = backbone(pixel_values=x, labels=labels)
    assert isinstance(out, type(own))  # the backbone's own output class, and its fields
    assert list(out.keys()) == ["loss", "logits", "aux_logits"]
    assert torch.equal(out.loss, own.loss)  # labels alone: the backbone's own loss
    assert torch.equal(out.logits, own.logits)
    assert out["aux_logits"].shape == out.aux_logits.shape == (4, 1, 2)
    assert out.to_tuple()[1:] == (out.logits, out.aux_logits)
    # The backbone's other outputs come through, as asked for.
    out = net(x, output_hidden_states=True)
    assert out.loss is None
    assert len(out.hidden_states) == len(backbone(x, output_hidden_states=True).hidden_states)
    # The partition labels need the wrapper only: the combined loss from the output.
    loss = CombinedLoss(0.4)((out.logits, out.aux_logits), labels, net.relabel(labels))
    loss.backward()
    assert net.aux_head.weight.grad is not None


def test_the_output_keeps_any_output_class_and_travels_like_it():
    import pickle

    import transformers
    from torch.utils._pytree import tree_flatten, tree_unflatten

    # DeiT with a teacher: its own output class, without a loss field of its own use.
    config = transformers.DeiTConfig(**_TINY_VIT, num_labels=10)
    backbone = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    net = RandomPartitionHead(backbone, classifier="cls_classifier")
    with torch.no_grad():
        out = net(_x())
        own = backbone(_x())
    assert isinstance(out, type(own))
    assert list(out.keys()) == ["logits", "cls_logits", "distillation_logits", "aux_logits"]
    assert all(torch.equal(out[k], own[k]) for k in own)
    # Pickled (DataLoader workers, Accelerate's gather), and flattened as a pytree, the way
    # DDP hands outputs through its synchronisation.
    for copy in (pickle.loads(pickle.dumps(out)), tree_unflatten(*tree_flatten(out))):
        assert type(copy) is type(out) and list(copy.keys()) == list(out.keys())
        assert torch.equal(copy.aux_logits, out.aux_logits)
    net = RandomPartitionHead(_tiny(), aux_weight=0.4)
    with pytest.raises(RuntimeError, match=r"ModelOutput.*return_dict=False"):
        net(_x(), labels=torch.tensor([0, 1, 2, 3]), return_dict=False)


def test_plain_tensor_backbones_still_get_an_aux_output():
    import timm
    import torchvision

    from auxtransfer import AuxOutput

    for backbone in (torchvision.models.resnet18(num_classes=4), timm.create_model("test_resnet", num_classes=4)):  # fmt: skip
        out = RandomPartitionHead(backbone, seed=0)(torch.randn(2, 3, 32, 32))
        assert type(out) is AuxOutput
        logits, aux_logits = out
        assert logits.shape == (2, 4) and aux_logits.shape == (2, 1, 2)


def test_aux_weight_makes_the_output_loss_the_combined_loss_computed_once():
    torch.manual_seed(0)
    backbone = _tiny()
    seen = []
    backbone.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw)), with_kwargs=True)
    net = RandomPartitionHead(backbone, seed=0, aux_weight=0.4)
    x, labels = _x(), torch.tensor([0, 3, 5, 9])
    out = net(pixel_values=x, labels=labels)
    assert seen == [["pixel_values"]]  # no labels: the backbone computes no loss of its own
    expected = CombinedLoss(0.4)((out.logits, out.aux_logits), labels, net.relabel(labels))
    assert torch.equal(out.loss, expected)
    out.loss.backward()
    assert net.aux_head.weight.grad is not None
    # Trainer's gradient accumulation: the sum over the batch, divided by its count.
    out = net(pixel_values=x, labels=labels, num_items_in_batch=torch.tensor(8))
    total = CombinedLoss(0.4, reduction="sum")((out.logits, out.aux_logits), labels, net.relabel(labels))  # fmt: skip
    torch.testing.assert_close(out.loss, total / 8)
    assert net.accepts_loss_kwargs
    # Soft labels (mixup, cutmix): the group probabilities are made inside too.
    soft = F.one_hot(labels, 10).float() * 0.5 + 0.05
    out = net(pixel_values=x, labels=soft)
    torch.testing.assert_close(
        out.loss, CombinedLoss(0.4)((out.logits, out.aux_logits), soft, net.relabel(soft))
    )


def test_aux_weight_and_labels_are_checked():
    import torchvision

    with pytest.raises(ValueError, match=r"`aux_weight` .* Hugging Face backbone.*ResNet"):
        RandomPartitionHead(torchvision.models.resnet18(num_classes=4), aux_weight=0.4)
    with pytest.raises(ValueError, match=r"`aux_weight` to be a float in \[0, 1\], but got 1.5"):
        RandomPartitionHead(_tiny(), aux_weight=1.5)
    regression = _tiny()
    regression.config.problem_type = "multi_label_classification"
    with pytest.raises(ValueError, match=r"single_label_classification.*multi_label"):
        RandomPartitionHead(regression, aux_weight=0.4)
    net = RandomPartitionHead(_tiny(), aux_weight=0.4)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        net(labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels=.*positional"):
        net(_x(), torch.tensor([0, 1, 2, 3]))  # ViT's forward(pixel_values, labels)


def test_save_pretrained_round_trip_keeps_the_partition_and_the_head(tmp_path):
    import transformers

    torch.manual_seed(0)
    net = RandomPartitionHead(_tiny(), num_partitions=3, num_groups=3, seed=4, aux_weight=0.3)
    with torch.no_grad():
        net.aux_head.weight.add_(1.0)  # as training leaves it: not the seed's initial values
    assert net.config is net.backbone.config
    net.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "auxtransfer.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = RandomPartitionHead.from_pretrained(tmp_path)
    assert type(loaded.backbone) is type(net.backbone)
    assert loaded.aux_weight == 0.3 and loaded.seed == 4
    assert torch.equal(loaded.partition, net.partition)
    before, after = net.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = _x()
    assert torch.equal(loaded.eval()(x).aux_logits, net.eval()(x).aux_logits)
    # The folder is the backbone's own as well: the transfer step loads it as it is.
    plain = transformers.ViTForImageClassification.from_pretrained(tmp_path)
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in plain.state_dict().items())
    assert not hasattr(plain.config, "auxtransfer")


def test_save_pretrained_needs_a_hf_backbone_and_from_pretrained_its_file(tmp_path):
    import torchvision

    with pytest.raises(TypeError, match=r"save_pretrained.*ResNet.*state_dict"):
        RandomPartitionHead(torchvision.models.resnet18(num_classes=4)).save_pretrained(tmp_path)
    _tiny().save_pretrained(tmp_path)  # a plain backbone, without the head's file
    with pytest.raises(ValueError, match=r"auxtransfer.safetensors"):
        RandomPartitionHead.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------
# Addresses of numbered blocks: the same under transformers 4 and 5 names.


def _with_transformers_4_names(model):
    """The tiny ViT as transformers 4 names it: its blocks at ``vit.encoder.layer.N``
    (transformers 5: ``vit.layers.N``). The forward still finds them as ``vit.layers``."""
    vit = model.vit
    blocks = vit._modules.pop("layers")
    vit.encoder = nn.Module()
    vit.encoder.layer = blocks
    object.__setattr__(vit, "layers", blocks)  # not registered: named only as encoder.layer
    return model


def test_numbered_blocks_have_the_same_address_under_transformers_4_and_5():
    import torchvision
    import transformers

    from auxtransfer import layer_groups

    torch.manual_seed(0)
    new = _tiny()
    old = _with_transformers_4_names(_tiny())
    assert "vit.encoder.layer.1.mlp.fc1.weight" in dict(old.named_parameters())
    assert "vit.layers.1.mlp.fc1.weight" in dict(new.named_parameters())
    expected = ["stem", "0", "1", "2", "vit.layernorm", "head"]
    assert layer_names(new) == layer_names(old) == expected
    rename = {f"vit.encoder.layer.{i}.": f"vit.layers.{i}." for i in range(3)}

    def renamed(tensor):
        return next((new + tensor[len(o):] for o, new in rename.items() if tensor.startswith(o)), tensor)  # fmt: skip

    for a, b in zip(layer_groups(new), layer_groups(old), strict=True):
        assert a.address == b.address
        assert list(a.tensors) == [renamed(t) for t in b.tensors]
    freeze_until(new, "1")
    freeze_until(old, "1")
    frozen = {n for n, p in new.named_parameters() if not p.requires_grad}
    assert {renamed(n) for n, p in old.named_parameters() if not p.requires_grad} == frozen
    # The numbers torchvision's ViT gives its blocks, and a real transformers 5 family that
    # keeps the transformers 4 names (encoder.layer.N).
    tv = torchvision.models.VisionTransformer(32, 8, 3, 2, 16, 32, num_classes=10)
    assert layer_names(tv)[:4] == ["stem", "0", "1", "2"]
    dinov2 = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**_TINY_VIT))
    assert "dinov2.encoder.layer.2.norm1.weight" in dict(dinov2.named_parameters())
    assert layer_names(dinov2) == ["stem", "0", "1", "2", "dinov2.layernorm", "head"]
