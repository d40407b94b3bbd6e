import pytest
import timm
import torch
import torchvision
from torch import nn

from auxtransfer import reset_classifier


@pytest.mark.parametrize(
    ("builder", "name"),
    [
        (torchvision.models.resnet18, "fc"),
        (torchvision.models.vgg11, "classifier.6"),  # normal(0, 0.01), zero bias
        (torchvision.models.squeezenet1_1, "classifier.1"),  # a Conv2d classifier
    ],
)
def test_torchvision_gets_the_layer_a_fresh_model_has(builder, name):
    torch.manual_seed(0)
    model = builder(num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    assert reset_classifier(model, 7, seed=4) is model
    assert torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(4)
    fresh = dict(builder(num_classes=7).named_modules())[name]
    layer = model.get_submodule(name)
    assert type(layer) is type(fresh)
    assert torch.equal(layer.weight, fresh.weight)
    assert torch.equal(layer.bias, fresh.bias)
    for key, value in model.state_dict().items():
        if not key.startswith(name + "."):
            assert torch.equal(value, before[key]), key
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_keeps_device_and_dtype():
    model = torchvision.models.resnet18(num_classes=10).double()
    reset_classifier(model, 3)
    assert model.fc.weight.dtype == torch.float64
    assert model.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)


def test_timm_models_use_their_own_and_follow_the_seed():
    def run(seed):
        model = timm.create_model("resnet18", num_classes=10)
        reset_classifier(model, 5, seed=seed)
        return model

    a, b, c = run(1), run(1), run(2)
    assert a.num_classes == 5 and a.fc.out_features == 5
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)
    reset_classifier(a, 0)  # timm's own meaning: no classifier
    assert a.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_any_other_model_gets_pytorch_defaults():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 8)
            self.head = nn.Linear(8, 3, bias=False)

        def forward(self, x):
            return self.head(self.body(x))

    model = reset_classifier(Net(), 6, seed=0)
    assert model.head.out_features == 6 and model.head.bias is None
    torch.manual_seed(0)
    assert torch.equal(model.head.weight, nn.Linear(8, 6, bias=False).weight)


def test_bad_requests():
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ValueError, match=r"`num_classes` to be an int >= 1, but got 0"):
        reset_classifier(model, 0)
    with pytest.raises(TypeError, match=r"`num_classes` to be an int >= 1, but got '5' \(str\)"):
        reset_classifier(model, "5")
    with pytest.raises(TypeError, match=r"`model` to be an nn.Module, but got 'resnet18'"):
        reset_classifier("resnet18", 5)
    with pytest.raises(ValueError, match=r"could not find the classifier of Sequential"):
        reset_classifier(nn.Sequential(nn.Linear(2, 2)), 5)
    assert model.fc.out_features == 10  # nothing changed


def test_a_wrapped_net_is_refused_with_what_to_do():
    import torchvision

    from auxtransfer import RandomPartitionHead

    net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10))
    with pytest.raises(
        TypeError,
        match=r"got a RandomPartitionHead: .*\(reset_classifier\(net\.unwrap\(\), num_classes\)",
    ):
        reset_classifier(net, 5)
    assert net.num_classes == 10  # untouched
