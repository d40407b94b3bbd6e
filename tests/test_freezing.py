import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from auxtransfer import freeze_until, layer_groups, reset_after, unfreeze


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
    summary = freeze_until(model, "sync")
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
    with pytest.raises(ValueError, match=r"but got '4'\. Valid addresses, closest first: 3\."):
        freeze_until(model, "4")
    assert all(p.requires_grad for p in model.parameters())  # nothing half-done


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


def test_reset_after_uses_timms_own_init():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    summary = reset_after(model, "5", seed=0)
    assert summary.init == "model"
    assert summary.skipped == ()
    # timm's ViT initialises its classifier bias to zero; reset_parameters() would not.
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias))
    assert not torch.equal(model.blocks[6].attn.qkv.weight, model.blocks[5].attn.qkv.weight)
    assert (model.blocks[5].attn.qkv.bias == 1.0).all()  # kept (all were +1 from zero)


def test_reset_after_covers_attention_and_names_what_it_cannot_reset():
    with torch.device("meta"):
        vit = torchvision.models.vit_b_16()
        convnext = torchvision.models.convnext_tiny()
    # nn.MultiheadAttention resets through its own _reset_parameters().
    summary = reset_after(vit.to_empty(device="cpu"), "10", seed=0)
    assert summary.init == "modules"
    assert summary.skipped == ()
    # ConvNeXt's layer scale is a bare parameter of its block: nothing can reset it.
    with pytest.warns(
        UserWarning, match=r"left 2 parameters as they were: .*features\.7\.1\.layer_scale"
    ):
        summary = reset_after(convnext.to_empty(device="cpu"), "7.0", seed=0)
    assert summary.skipped == ("features.7.1.layer_scale", "features.7.2.layer_scale")


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


def test_reset_after_completes_timms_partial_init():
    # timm's ResNet.init_weights() initialises convolutions only: the classifier and the
    # BatchNorm layers after the address must still be reset, by reset_parameters().
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trained_fc = model.fc.weight.detach().clone()
    summary = reset_after(model, "3", seed=0)
    assert summary.init == "model"
    assert summary.skipped == ()
    assert (model.layer4[0].bn1.weight == 1.0).all()
    assert (model.layer4[0].bn1.bias == 0.0).all()
    bound = 1 / model.fc.in_features**0.5  # nn.Linear's default init range
    assert model.fc.weight.abs().max() <= bound
    assert not torch.equal(model.fc.weight, trained_fc)
    assert (model.layer3[0].bn1.weight == 2.0).all()  # kept: trained (1) + 1


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
        net = RandomPartitionHead(timm.create_model("resnet18", num_classes=10), seed=5)
        reset_after(net, "3", seed=seed)
        return net

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a.aux_head.weight, b.aux_head.weight)
    assert not torch.equal(a.aux_head.weight, c.aux_head.weight)
    assert not torch.equal(a.backbone.fc.weight, c.backbone.fc.weight)
    assert torch.equal(a.partition, c.partition)
