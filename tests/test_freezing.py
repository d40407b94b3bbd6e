import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from auxtransfer import freeze_until, layer_groups, layer_names, layerwise_lr, reset_after, unfreeze


def densenet_bc():
    torch.manual_seed(0)
    return torchvision.models.DenseNet(
        growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=10
    )


def _norms(model):
    return {
        n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(model, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=5e-4
    )
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_freezes_exactly_the_groups_up_to_the_address():
    model = densenet_bc()
    groups = layer_groups(model)
    index = [g.address for g in groups].index("2.9")
    summary = freeze_until(model, "2.9")
    expected = {t for g in groups[: index + 1] for t in g.tensors}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == expected & dict(model.named_parameters()).keys()
    assert summary.addresses == tuple(g.address for g in groups[: index + 1])
    assert summary.frozen_params == sum(
        p.numel() for n, p in model.named_parameters() if n in frozen
    )
    assert "froze 26 layer groups (stem ... 2.9)" in str(summary)


@pytest.mark.parametrize("again", [False, True])
def test_sgd_leaves_frozen_weights_and_statistics_bitwise_unchanged(again):
    model = densenet_bc()
    frozen_groups = layer_groups(model)[
        : [g.address for g in layer_groups(model)].index("2.16") + 1
    ]
    freeze_until(model, "2")
    if again:
        model.eval()
        model.train()  # must not wake the frozen BatchNorm layers
    before = _snapshot(model)
    _train(model)
    after = model.state_dict()
    frozen = {t for g in frozen_groups for t in g.tensors}
    assert frozen  # parameters and BatchNorm statistics of stem ... 2.16
    for name in before:
        if name in frozen:
            assert torch.equal(before[name], after[name]), name
    changed = [n for n in before if n not in frozen and not torch.equal(before[n], after[n])]
    assert set(changed) == set(before) - frozen  # every other weight and statistic moved
    assert all(
        not m.training
        for n, m in _norms(model).items()
        if n.startswith(("features.norm0", "features.denseblock1"))
    )
    assert _norms(model)["features.denseblock3.denselayer1.norm1"].training


def test_update_policy_lets_statistics_follow_the_data():
    model = densenet_bc()
    freeze_until(model, "2", bn="update")
    before = _snapshot(model)
    _train(model)
    after = model.state_dict()
    assert torch.equal(before["features.conv0.weight"], after["features.conv0.weight"])
    assert not torch.equal(
        before["features.norm0.running_mean"], after["features.norm0.running_mean"]
    )
    assert (
        before["features.norm0.num_batches_tracked"] + 3
        == after["features.norm0.num_batches_tracked"]
    )


def test_state_dict_is_the_same_frozen_or_not():
    model = densenet_bc()
    reference = model.state_dict()
    freeze_until(model, "3.4")
    frozen = model.state_dict()
    assert list(frozen) == list(reference)
    assert all(torch.equal(frozen[k], reference[k]) for k in reference)
    fresh = densenet_bc()
    fresh.load_state_dict(frozen)
    model.load_state_dict(fresh.state_dict())
    assert all(m.track_running_stats for m in _norms(model).values())


def test_unfreeze_undoes_it():
    model = densenet_bc()
    freeze_until(model, "3")
    model.train()
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in _norms(model).values())
    model.eval()
    assert not any(m.training for m in _norms(model).values())


def test_frozen_layers_survive_pickle_and_deepcopy():
    model = densenet_bc()
    freeze_until(model, "1")
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.train()
        assert not clone.features.norm0.training
        assert clone.features.denseblock2.denselayer1.norm1.training
        unfreeze(clone)
        assert clone.features.norm0.training
    assert not model.features.norm0.training  # the original is untouched


class _AllNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4, 4), nn.BatchNorm1d(4))
        self.sync = nn.SyncBatchNorm(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.sync(self.body(self.stem(x)).unsqueeze(-1)).squeeze(-1))


def test_every_batchnorm_kind_is_held():
    model = _AllNorms()
    summary = freeze_until(model, "sync", input_size=(1, 2, 2, 1))
    assert set(summary.frozen_norms) == {"stem.1", "body.2", "sync"}
    model.train()
    assert not any(m.training for m in (model.stem[1], model.body[2], model.sync))
    before = _snapshot(model)
    model(torch.randn(5, 1, 2, 2, 1))  # SyncBatchNorm on the CPU runs only in eval mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.track_running_stats for m in (model.stem[1], model.body[2], model.sync))


def test_bad_freeze_requests():
    model = densenet_bc()
    with pytest.raises(ValueError, match=r"`bn` to be 'freeze' or 'update', but got 'eval'"):
        freeze_until(model, "2", bn="eval")
    with pytest.raises(TypeError, match=r"`bn` to be 'freeze' or 'update', but got True"):
        freeze_until(model, "2", bn=True)
    with pytest.raises(ValueError, match=r"but got '4'\. Valid addresses, closest first: 3\."):
        freeze_until(model, "4")
    assert all(p.requires_grad for p in model.parameters())  # nothing half-done
    buffers_only = nn.Sequential(nn.BatchNorm1d(3, affine=False), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"`address` to cover parameters, but '0' .* buffers only"):
        freeze_until(buffers_only, "0")
    with pytest.raises(TypeError, match=r"`model` to be an nn.Module, but got 'resnet18'"):
        freeze_until("resnet18", "2")
    with pytest.raises(TypeError, match=r"`model` to be an nn.Module, but got None"):
        unfreeze(None)
    with pytest.raises(TypeError, match=r"`address` to be an address string such as '2.9'"):
        reset_after(model, 2)
    with pytest.raises(TypeError, match=r"`seed` to be an int >= 0, but got 1.5"):
        reset_after(model, "2", seed=1.5)


def test_reset_after_changes_only_what_follows_and_is_seeded():
    model = densenet_bc()
    _train(model, steps=1)
    groups = layer_groups(model)
    kept = {t for g in groups[: [g.address for g in groups].index("2.9") + 1] for t in g.tensors}
    before = _snapshot(model)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    summary = reset_after(model, "2.9", seed=7)
    assert torch.equal(state, torch.random.get_rng_state())
    assert summary.addresses[0] == "2.10"
    assert summary.addresses[-1] == "head"
    assert summary.skipped == ()
    after = model.state_dict()
    for name in before:
        if name in kept:
            assert torch.equal(before[name], after[name]), name
    weights = [n for n in before if n not in kept and n.endswith("conv1.weight")]
    assert weights
    assert all(not torch.equal(before[n], after[n]) for n in weights)
    assert torch.equal(
        after["features.denseblock3.denselayer1.norm1.running_var"],
        torch.ones_like(after["features.denseblock3.denselayer1.norm1.running_var"]),
    )

    twin = densenet_bc()
    _train(twin, steps=1)
    reset_after(twin, "2.9", seed=7)
    assert all(torch.equal(after[k], v) for k, v in twin.state_dict().items())
    other = densenet_bc()
    _train(other, steps=1)
    reset_after(other, "2.9", seed=8)
    assert not torch.equal(other.state_dict()["classifier.weight"], after["classifier.weight"])


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model


def _timm(name, **kwargs):
    def build():
        import auxtransfer.models  # noqa: F401  (registers the CIFAR models)

        return timm.create_model(name, **kwargs)

    return build


@pytest.mark.parametrize(
    ("build", "address", "init"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "3.0", "torchvision"),
        (lambda: torchvision.models.vgg11(num_classes=10), "8", "torchvision"),
        (_timm("resnet18", num_classes=10), "3", "timm"),
        (_timm("vit_tiny_patch16_224", num_classes=10), "5", "timm"),
        (_timm("cifar_densenet_bc_100", num_classes=10), "2.9", "timm"),
    ],
)
def test_reset_after_gives_what_a_fresh_model_gets(build, address, init):
    torch.manual_seed(0)
    model = _perturbed(build())
    before = _snapshot(model)
    summary = reset_after(model, address, seed=3)
    assert summary.init == init
    assert summary.skipped == ()
    torch.manual_seed(3)
    fresh = build().state_dict()
    after = model.state_dict()
    reset = set(summary.tensors)
    assert reset
    for name, value in after.items():
        expected = fresh[name] if name in reset else before[name]
        assert torch.equal(value, expected), name


def _assert_same_distribution(ours, theirs, name):
    """A constant init (norm weights, zero biases) exactly; a random one by its spread."""
    ours, theirs = ours.double(), theirs.double()
    if torch.equal(theirs, torch.full_like(theirs, theirs.flatten()[0].item())):
        assert torch.equal(ours, theirs), name
    elif theirs.numel() >= 64:
        assert ours.mean().item() == pytest.approx(
            theirs.mean().item(), abs=0.2 * theirs.std().item()
        ), name
        assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.25), name


@pytest.mark.parametrize(
    ("build", "address"),
    [
        (lambda: torchvision.models.resnet18(num_classes=10), "3.0"),
        (_timm("resnet18", num_classes=10), "3"),
        (_timm("cifar_wrn_28_10", num_classes=10, depth=10, widen_factor=2), "1.0"),
        (_timm("cifar_densenet_bc_100", num_classes=10, depth=40), "2.5"),
    ],
)
def test_reset_after_matches_a_fresh_models_statistics_layer_by_layer(build, address):
    torch.manual_seed(0)
    model = build()
    _train(_perturbed(model), steps=1)
    summary = reset_after(model, address, seed=1)
    torch.manual_seed(2)  # another draw: the same distribution, not the same values
    fresh = build().state_dict()
    after = model.state_dict()
    checked = 0
    for name in summary.tensors:
        if after[name].is_floating_point():
            _assert_same_distribution(after[name], fresh[name], name)
            checked += 1
    assert checked > 10


def test_reset_after_with_an_init_factory_and_other_models():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)
            nn.init.zeros_(self.fc.weight)  # the model's own init, which no default gives
            nn.init.constant_(self.fc.bias, 0.5)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    model = _perturbed(Net())
    summary = reset_after(model, "conv", seed=0, init=Net)
    assert summary.init == "init"
    assert torch.equal(model.fc.weight, torch.zeros(3, 4))
    assert torch.equal(model.fc.bias, torch.full((3,), 0.5))
    with pytest.warns(UserWarning, match=r"PyTorch's default initialisation for Net.*`init=`"):
        summary = reset_after(model, "conv", seed=0)
    assert summary.init == "modules"
    with pytest.raises(
        ValueError,
        match=r"`init` to build a model with the layers of Net, but its model lacks or reshapes fc\.weight",
    ):
        reset_after(model, "conv", init=lambda: nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(TypeError, match=r"`init` to return a fresh nn.Module, but it returned 3"):
        reset_after(model, "conv", init=lambda: 3)
    with pytest.raises(
        TypeError, match=r"`init` to be a callable returning a fresh model, but got 'Net'"
    ):
        reset_after(model, "conv", init="Net")


def test_reset_after_covers_attention_and_names_what_it_cannot_reset():
    # A ViT built from its class (no builder matches): module defaults, with
    # nn.MultiheadAttention resetting through its own _reset_parameters().
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    with pytest.warns(UserWarning, match="default initialisation"):
        summary = reset_after(vit, "1", seed=0)
    assert summary.init == "modules"
    assert summary.skipped == ()

    class Scaled(nn.Module):
        # A bare parameter, as a layer scale is: no reset_parameters() covers it.
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.full((4,), 1e-5))

        def forward(self, x):
            return self.linear(x) * self.scale

    model = nn.Sequential(nn.Linear(4, 4), Scaled(), nn.Linear(4, 2))
    with pytest.warns(
        UserWarning, match=r"left 1 parameters as they were: no initialiser covers 1\.scale"
    ):
        summary = reset_after(model, "0", seed=0)
    assert summary.skipped == ("1.scale",)
    assert torch.equal(model[1].scale, torch.full((4,), 1e-5))


def test_reset_after_the_last_address_is_an_error():
    with pytest.raises(
        ValueError, match=r"`address` to leave layers after it, but 'head' is the last one"
    ):
        reset_after(densenet_bc(), "head")


def test_a_second_freeze_replaces_the_first():
    model = densenet_bc()
    freeze_until(model, "3")
    summary = freeze_until(model, "1", bn="update")
    assert summary.addresses[-1] == "1.16"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    assert all(
        n.startswith(
            ("features.conv0", "features.norm0", "features.denseblock1.", "features.transition1.")
        )
        for n in frozen
    )
    model.train()
    assert model.features.norm0.training  # bn="update": the first call's eval hold is gone


def test_parameters_frozen_by_hand_stay_frozen():
    model = densenet_bc()
    model.classifier.weight.requires_grad_(False)
    model.features.conv0.weight.requires_grad_(False)
    freeze_until(model, "2")
    unfreeze(model)
    assert not model.classifier.weight.requires_grad
    assert not model.features.conv0.weight.requires_grad
    assert model.features.norm0.weight.requires_grad


def test_reset_after_never_touches_a_tied_kept_parameter():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 10)
            self.fc.weight = self.emb.weight

        def forward(self, x):
            return self.fc(self.body(self.emb(x)))

    model = Tied()
    before = model.emb.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"left 1 parameters as they were: .*fc\.bias"):
        summary = reset_after(model, "emb", seed=0)
    assert torch.equal(model.emb.weight, before)
    assert summary.skipped == ("fc.bias",)


def test_reset_after_on_a_wrapped_model_follows_the_seed():
    from auxtransfer import RandomPartitionHead

    def run(seed):
        torch.manual_seed(0)
        net = RandomPartitionHead(_perturbed(timm.create_model("resnet18", num_classes=10)), seed=5)
        summary = reset_after(net, "3", seed=seed)
        return net, summary

    (a, summary), (b, _), (c, _) = run(1), run(1), run(2)
    assert summary.init == "timm+modules"  # the backbone as timm builds it; the binary head
    assert torch.equal(a.aux_head.weight, b.aux_head.weight)
    assert not torch.equal(a.aux_head.weight, c.aux_head.weight)
    torch.manual_seed(1)
    fresh = timm.create_model("resnet18", num_classes=10)
    assert torch.equal(a.backbone.fc.weight, fresh.fc.weight)
    assert torch.equal(a.backbone.layer4[1].conv2.weight, fresh.layer4[1].conv2.weight)
    assert torch.equal(a.partition, c.partition)


def test_freeze_state_is_shared_by_the_backbone_and_its_wrapper():
    from auxtransfer import RandomPartitionHead

    backbone = torchvision.models.resnet18(num_classes=10)
    freeze_until(backbone, "3")
    net = RandomPartitionHead(backbone)
    summary = freeze_until(net, "1")  # replaces the freeze made through the backbone
    assert summary.addresses[-1] == "1.1"
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("conv1.", "bn1.", "layer1.")) for n in frozen)
    net.train()
    assert backbone.layer3[0].bn1.training  # the first freeze's eval hold is gone
    assert not backbone.layer1[0].bn1.training
    unfreeze(backbone)  # undoes the freeze made through the wrapper
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    assert backbone.layer1[0].bn1.training


def test_reset_after_makes_the_layers_it_reinitialises_trainable():
    model = torchvision.models.resnet18(num_classes=10)
    freeze_until(model, "4")
    summary = reset_after(model, "3.1", seed=0)
    assert set(summary.unfrozen) == {
        n for n, _ in model.named_parameters() if n.startswith("layer4.")
    }
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer4."))
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("layer3."))
    model.train()
    assert model.layer4[0].bn1.training
    assert not model.layer3[0].bn1.training
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


def test_reset_after_with_a_replaced_classifier_still_rebuilds_the_body():
    torch.manual_seed(0)
    model = _perturbed(torchvision.models.resnet18(num_classes=10))
    model.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, 50))
    summary = reset_after(model, "3", seed=3)
    assert summary.init == "torchvision+modules"  # the body as built; the new head: defaults
    torch.manual_seed(3)
    fresh = torchvision.models.resnet18(num_classes=50).state_dict()
    for name in summary.tensors:
        if not name.startswith("fc."):
            assert torch.equal(model.state_dict()[name], fresh[name]), name


def test_reset_after_with_a_factory_keeps_the_wrappers_partition():
    from auxtransfer import RandomPartitionHead

    net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), seed=5)
    partition = net.partition.clone()
    reset_after(
        net, "3", init=lambda: RandomPartitionHead(torchvision.models.resnet18(num_classes=10))
    )
    assert torch.equal(net.partition, partition)
    net.reset_parameters()
    assert torch.equal(net.partition, partition)


class _Custom(nn.Module):
    """A user's own model: no group_matcher, no torchvision table."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(
            *[
                nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
                for _ in range(4)
            ]
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean((2, 3)))


def _under(model, *prefixes):
    return {
        n for n, _ in model.named_parameters() if n.startswith(tuple(p + "." for p in prefixes))
    }


def test_a_custom_model_gets_one_address_per_block_and_exact_cuts():
    torch.manual_seed(0)
    model = _Custom()
    assert layer_names(model) == ["stem", "body.0", "body.1", "body.2", "body.3", "head"]
    summary = freeze_until(model, "body.1")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == _under(model, "stem", "body.0", "body.1")
    assert len(frozen) == 10
    assert summary.addresses == ("stem", "body.0", "body.1")
    assert set(summary.frozen_norms) == {"body.0.1", "body.1.1"}
    unfreeze(model)

    groups = layerwise_lr(model, until="body.1", lr=0.01, new_lr=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == _under(model, "stem", "body.0", "body.1")

    before = _snapshot(model)
    summary = reset_after(model, "body.1", seed=4, init=_Custom)
    torch.manual_seed(4)
    fresh = _Custom().state_dict()
    assert set(summary.tensors) == {
        n for n in before if n.startswith(("body.2.", "body.3.", "fc."))
    }
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh[name] if name in summary.tensors else before[name]), name


def test_a_module_name_inside_a_group_cuts_the_group_there():
    # torchvision's ResNet map has "3.1" as one address; "layer3.1.conv1" is finer.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    upto = _under(model, "conv1", "bn1", "layer1", "layer2", "layer3.0") | {"layer3.1.conv1.weight"}
    summary = freeze_until(model, "layer3.1.conv1")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == upto
    assert summary.addresses[-2:] == ("3.0", "layer3.1.conv1")
    assert "layer3.1.bn1" not in summary.frozen_norms
    unfreeze(model)

    groups = layerwise_lr(model, until="layer3.1.conv1", lr=0.01, new_lr=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in groups[0]["params"]} == upto
    assert groups[0]["addresses"] == ("stem", "layer3.1.conv1")
    assert groups[1]["addresses"] == ("3.1", "head")

    before = _snapshot(model)
    summary = reset_after(model, "layer3.1.conv1", seed=2)
    assert summary.addresses[0] == "3.1"
    assert "layer3.1.conv1.weight" not in summary.tensors
    assert "layer3.1.bn1.weight" in summary.tensors
    assert {n for n in summary.tensors if n in names.values()} == set(names.values()) - upto
    for name in upto:
        assert torch.equal(model.state_dict()[name], before[name]), name

    # A whole module is exactly that module: DenseNet's transition after block 2 runs after
    # it, so it is not part of "features.denseblock2" (the address "2" includes it).
    densenet = densenet_bc()
    freeze_until(densenet, "features.denseblock2")
    frozen = {n for n, p in densenet.named_parameters() if not p.requires_grad}
    assert not any(n.startswith("features.transition2.") for n in frozen)
    assert "features.denseblock2.denselayer16.conv2.weight" in frozen
    freeze_until(densenet, "2")
    frozen = {n for n, p in densenet.named_parameters() if not p.requires_grad}
    assert "features.transition2.conv.weight" in frozen
