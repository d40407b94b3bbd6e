import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from auxtransfer import RandomPartitionHead, layer_groups, layer_names
from auxtransfer.__main__ import main as cli
from auxtransfer.layers import layer_map


def densenet_bc():
    """DenseNet-BC-100 (k=12, 3 blocks of 16) on torchvision's DenseNet."""
    torch.manual_seed(0)
    return torchvision.models.DenseNet(
        growth_rate=12, block_config=(16, 16, 16), num_init_features=24, num_classes=50
    )


def test_densenet_bc_addresses():
    names = layer_names(densenet_bc())
    expected = ["stem"] + [f"{b}.{i}" for b in (1, 2, 3) for i in range(1, 17)] + ["head"]
    assert names == expected


def test_groups_partition_every_tensor_once():
    model = densenet_bc()
    groups = layer_groups(model)
    tensors = [t for g in groups for t in g.tensors]
    assert sorted(tensors) == sorted(model.state_dict(keep_vars=True))
    assert sum(g.num_params for g in groups) == sum(p.numel() for p in model.parameters())


def test_head_adjacent_norms():
    # torchvision DenseNet: norm5 normalises block 3's output, so it goes with the last layer.
    groups = {g.address: g for g in layer_groups(densenet_bc())}
    assert "features.norm5" in groups["3.16"].modules
    assert "features.transition2" in {m.rpartition(".")[0] for m in groups["2.16"].modules}
    assert groups["head"].modules == ("classifier",)
    # torchvision ConvNeXt: the LayerNorm inside `classifier` is part of the head.
    with torch.device("meta"):
        convnext = torchvision.models.convnext_tiny()
    head = {g.address: g for g in layer_groups(convnext)}["head"]
    assert head.modules == ("classifier.0", "classifier.2")
    # timm follows each model's group_matcher: DenseNet's norm5 is left to the head, ViT's
    # final norm joins the last block.
    with torch.device("meta"):
        timm_densenet = timm.create_model("densenet121")
        vit = timm.create_model("vit_tiny_patch16_224")
    assert "features.norm5" in {g.address: g for g in layer_groups(timm_densenet)}["head"].modules
    assert "norm" in {g.address: g for g in layer_groups(vit)}["11"].modules


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            lambda: torchvision.models.resnet18(),
            ["stem", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "head"],
        ),
        (
            lambda: timm.create_model("resnet18"),
            ["stem", "1.0", "1.1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1", "head"],
        ),
        (lambda: torchvision.models.vit_b_16(), ["stem", *map(str, range(12)), "head"]),
        (
            lambda: torchvision.models.googlenet(init_weights=False),
            ["stem", "3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b", "head"],
        ),
    ],
)
def test_known_address_lists(model, expected):
    with torch.device("meta"):
        built = model()
    assert layer_names(built) == expected


def test_resolve_addresses_blocks_and_module_names():
    model = densenet_bc()
    groups = layer_groups(model)
    names = [g.address for g in groups]
    assert layer_map(model).resolve("2.9") == names.index("2.9")
    assert layer_map(model).resolve("2") == names.index("2.16")
    assert layer_map(model).resolve("features.denseblock2.denselayer9") == names.index("2.9")
    assert layer_map(model).resolve("features.denseblock2") == names.index("2.16")
    assert layer_map(model).resolve("stem") == 0
    assert layer_map(model).resolve("head") == len(names) - 1


class _Ten(nn.Module):
    """Modules layer1 ... layer10, addressed "1" ... "10" by a timm-style matcher."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(2, 2)
        for i in range(1, 11):
            self.add_module(f"layer{i}", nn.Linear(2, 2))
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, 11):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x)

    def group_matcher(self, coarse=False):
        return {"stem": r"^stem\.", "blocks": r"^layer(\d+)\."}


def test_module_name_never_matches_a_longer_name():
    model = _Ten()
    groups = layer_groups(model)
    names = [g.address for g in groups]
    assert names == ["stem", *map(str, range(1, 11)), "head"]
    # "layer1" is no address here, so it resolves as a module name: group "1", never "10".
    assert layer_map(model).resolve("layer1") == names.index("1")
    assert layer_map(model).resolve("layer10") == names.index("10")
    assert layer_map(model).resolve("1") == names.index("1")  # not "10" either
    with pytest.raises(ValueError, match=r"'layer11'"):
        layer_map(model).resolve("layer11")


def test_unknown_address_lists_the_closest_first():
    model = densenet_bc()
    with pytest.raises(
        ValueError, match=r"but got '2\.17'\. Valid addresses, closest first: 2\.16, 2\.15, "
    ) as error:
        layer_map(model).resolve("2.17")
    assert "layer_names(model)" in str(error.value)
    with pytest.raises(ValueError, match=r"Valid addresses, closest first: 1\.1, 1\.0, 2\.0"):
        layer_map(torchvision.models.resnet18()).resolve("1.9")
    with pytest.raises(
        TypeError, match=r"`address` to be an address string such as '2.9', but got 2.9"
    ):
        layer_map(model).resolve(2.9)


def test_module_without_tensors_is_an_error():
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"module 'relu' of ResNet has none"):
        layer_map(model).resolve("relu")


def test_model_without_parameters():
    with pytest.raises(ValueError, match=r"`model` to have parameters, but ReLU has none"):
        layer_names(nn.ReLU())
    with pytest.raises(TypeError, match=r"`model` to be an nn.Module"):
        layer_names("resnet18")


def test_fallback_follows_the_forward_pass_not_registration():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(4, 4)  # registered first, runs second
            self.early = nn.Conv2d(3, 4, 3)
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.late(self.early(x).mean((2, 3))))

    assert layer_names(Net()) == ["early", "late", "out"]


def test_callable_timm_matchers_get_a_stem_and_module_names():
    with torch.device("meta"):
        inception = timm.create_model("inception_v3")
        cait = timm.create_model("cait_xxs24_224")
    names = layer_names(inception)
    assert names[0] == "stem"
    assert "Mixed_5b" in names
    assert names.index("Mixed_5b") < names.index("Mixed_7c") < names.index("head")
    assert layer_names(cait)[:3] == ["stem", "0", "1"]
    assert len(set(layer_names(cait))) == len(layer_names(cait))


def test_fallback_descends_into_repeated_layers_and_warns_when_it_finds_one_group():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
            self.out = nn.Linear(4, 2)

        def forward(self, x):
            return self.out(self.body(x))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert layer_names(Plain()) == ["body.0", "body.2", "out"]

    class Single(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))

        def forward(self, x):
            return self.body(x)

    # The warning says what the one address covers, and what to type instead.
    with pytest.warns(
        UserWarning,
        match=r"single layer group, 'body', in Single: .* so an address freezes or resets all "
        r"of 'body' at once\. To cut inside it, pass a full module name such as 'body\.0'",
    ):
        assert layer_names(Single()) == ["body"]


def test_wrapped_model_maps_like_its_backbone():
    backbone = torchvision.models.resnet18(num_classes=10)
    net = RandomPartitionHead(backbone)
    groups = layer_groups(net)
    assert [g.address for g in groups] == layer_names(backbone)
    head = groups[-1].tensors
    assert "aux_head.weight" in head
    assert "partition" in head
    assert "backbone.fc.weight" in head


def test_cli_prints_the_address_table(capsys):
    assert cli(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines.pop(0) == "# resnet18 from timm"
    assert lines[0].split() == ["address", "params", "modules"]
    assert lines[1].split() == ["stem", "9,536", "conv1,", "bn1"]
    assert lines[-2].split() == ["head", "513,000", "fc"]
    assert lines[-1] == "10 addresses, 11,689,512 parameters"
    assert cli(["layers", "vit_tiny_patch16_224", "--num-classes", "7"]) == 0
    assert "head" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown model 'resnet_nope'"):
        cli(["layers", "resnet_nope"])
    # A name both libraries have: timm's by default, torchvision's on request.
    assert cli(["layers", "densenet121", "--source", "torchvision"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# densenet121 from torchvision")
    assert "features.denseblock4.denselayer16, features.norm5" in out
    assert cli(["layers", "cifar_densenet_bc_100"]) == 0
    assert "3.16" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected a torchvision model name"):
        cli(["layers", "cifar_densenet_bc_100", "--source", "torchvision"])


def test_cli_prints_the_version_from_its_one_source(capsys):
    import importlib.metadata

    import auxtransfer

    with pytest.raises(SystemExit) as stop:
        cli(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"auxtransfer {auxtransfer.__version__}\n"
    # pyproject.toml reads the version from auxtransfer/__init__.py: the metadata agrees.
    assert importlib.metadata.version("auxtransfer") == auxtransfer.__version__


def test_cli_help_is_plain_text(capsys):
    for argv in (["--help"], ["layers", "--help"]):
        with pytest.raises(SystemExit) as stop:
            cli(argv)
        assert stop.value.code == 0
        shown = capsys.readouterr().out
        assert "python -m auxtransfer" in shown and "``" not in shown and "`" not in shown


def test_cli_builds_any_importable_model(capsys):
    # A factory by import path (called with num_classes=), a Hugging Face class from its
    # default config; both on the meta device.
    assert cli(["layers", "torchvision.models:resnet18", "--num-classes", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# torchvision.models:resnet18 from torchvision.models.resnet.ResNet"
    assert lines[-2].split() == ["head", "3,591", "fc"]
    assert cli(["layers", "transformers:ResNetForImageClassification"]) == 0
    out = capsys.readouterr().out
    assert "\nstem " in out
    assert "\n1.0 " in out
    assert "resnet.encoder.stages.1.layers.0" in out
    with pytest.raises(SystemExit, match=r"cannot import model 'no_such_package:Net'"):
        cli(["layers", "no_such_package:Net"])
    with pytest.raises(SystemExit, match=r"built int, not an nn.Module"):
        cli(["layers", "builtins:int"])
