import pytest
import torch
import torchvision

from auxtransfer import freeze_until, layer_groups, layer_names, layerwise_lr


def densenet_bc():
    torch.manual_seed(0)
    return torchvision.models.DenseNet(
        growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=10
    )


def _ids(groups):
    return [id(p) for g in groups for p in g["params"]]


def test_two_rates_split_at_until():
    model = densenet_bc()
    groups = layerwise_lr(model, until="2.9", lr=0.01, new_lr=0.1)
    assert [(g["addresses"], g["lr"]) for g in groups] == [
        (("stem", "2.9"), 0.01),
        (("2.10", "head"), 0.1),
    ]
    layers = layer_groups(model)
    cut = [g.address for g in layers].index("2.9")
    params = dict(model.named_parameters())
    early = {id(params[t]) for g in layers[: cut + 1] for t in g.tensors if t in params}
    assert {id(p) for p in groups[0]["params"]} == early
    assert sorted(_ids(groups)) == sorted(id(p) for p in model.parameters())


def test_every_trainable_parameter_once_and_frozen_ones_skipped():
    model = densenet_bc()
    freeze_until(model, "1")
    groups = layerwise_lr(
        model, until="2.9", lr=0.01, new_lr=0.1, decay=0.8, no_weight_decay_1d=True
    )
    ids = _ids(groups)
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert groups[0]["addresses"][0] == "2.1"


def test_decay_gives_each_address_its_own_rate():
    model = torchvision.models.resnet18()
    groups = layerwise_lr(model, until="3.1", lr=0.01, new_lr=0.1, decay=0.5)
    rates = {g["addresses"]: g["lr"] for g in groups}
    assert rates[("3.1", "3.1")] == 0.01
    assert rates[("3.0", "3.0")] == 0.005
    assert rates[("stem", "stem")] == pytest.approx(0.01 * 0.5**6)
    assert rates[("4.0", "head")] == 0.1


def test_groups_are_contiguous_even_where_rates_coincide():
    # 0.04 * 0.5 ** 2 == 0.01 == new_lr: address 2.1 shares the head's rate, but 3.x lie
    # between them, so it is a group of its own.
    model = torchvision.models.resnet18()
    groups = layerwise_lr(model, until="3.1", lr=0.04, decay=0.5, new_lr=0.01)
    order = layer_names(model)
    address_of = {
        id(model.get_parameter(t)): g.address
        for g in layer_groups(model)
        for t in g.tensors
        if t in dict(model.named_parameters())
    }
    for group in groups:
        first, last = group["addresses"]
        span = order[order.index(first) : order.index(last) + 1]
        assert {address_of[id(p)] for p in group["params"]} == set(span), group["addresses"]
    rates = {g["addresses"]: g["lr"] for g in groups}
    assert rates[("2.1", "2.1")] == pytest.approx(0.01)
    assert rates[("3.1", "3.1")] == pytest.approx(0.04)
    assert rates[("4.0", "head")] == pytest.approx(0.01)
    starts = [order.index(g["addresses"][0]) for g in groups]
    assert starts == sorted(starts)


def test_weight_decay_exclusion():
    model = torchvision.models.resnet18()
    groups = layerwise_lr(
        model, until="2", lr=0.01, new_lr=0.1, weight_decay=5e-4, no_weight_decay_1d=True
    )
    for g in groups:
        assert {p.ndim <= 1 for p in g["params"]} == {g["weight_decay"] == 0.0}
        if g["weight_decay"] != 0.0:
            assert g["weight_decay"] == 5e-4
    assert len(groups) == 4


def test_multisteplr_scales_each_group_from_its_own_rate():
    model = torchvision.models.resnet18()
    opt = torch.optim.SGD(layerwise_lr(model, until="3", lr=0.01, new_lr=0.1), momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    seen = []
    for _ in range(5):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    assert seen[0] == [0.01, 0.1]
    assert seen[2] == pytest.approx([0.001, 0.01])
    assert seen[4] == pytest.approx([0.0001, 0.001])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -0.1}, ValueError, r"`lr` to be a finite float >= 0, but got -0.1"),
        ({"lr": "0.1"}, TypeError, r"`lr` to be a finite float >= 0, but got '0.1' \(str\)"),
        ({"new_lr": True}, TypeError, r"`new_lr` to be a finite float >= 0, but got True"),
        ({"decay": "half"}, TypeError, r"`decay` to be a float in \(0, 1\] .* but got 'half'"),
        ({"until": 3}, TypeError, r"`until` to be an address string such as '2.9', but got 3"),
        ({"new_lr": float("nan")}, ValueError, r"`new_lr` to be a finite float >= 0, but got nan"),
        ({"lr": float("inf")}, ValueError, r"`lr` to be a finite float >= 0, but got inf"),
        ({"decay": 1.5}, ValueError, r"`decay` to be a float in \(0, 1\] .* but got 1.5"),
        ({"decay": 0.0}, ValueError, r"`decay` to be a float in \(0, 1\]"),
        ({"until": "9.9"}, ValueError, r"`until` to be one of the addresses of ResNet"),
        ({"weight_decay": -1.0}, ValueError, r"`weight_decay` to be a finite float >= 0"),
    ],
)
def test_bad_requests(kwargs, error, match):
    arguments = {"until": "3", "lr": 0.01, "new_lr": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        layerwise_lr(torchvision.models.resnet18(), **arguments)


def test_all_frozen_is_an_error():
    model = torchvision.models.resnet18()
    freeze_until(model, "head")
    with pytest.raises(ValueError, match=r"trainable parameters, but all of ResNet's are frozen"):
        layerwise_lr(model, until="3", lr=0.01, new_lr=0.1)
