"""The layer map places every tensor where the forward pass first uses it.

Each test is one model shape that a map built from names or registration order cuts in the
wrong place: layers registered out of order, interleaved lists, tensors the model itself
reads late, shared and tied tensors, module names an address spells too, forwards that
reach into a child's children, distillation heads. ``test_first_use.py`` checks the same
rule against an independent recorder on whole model zoos.
"""

import warnings
import weakref
from typing import ClassVar

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import auxtransfer.layers
from auxtransfer import (
    RandomPartitionHead,
    freeze_until,
    layer_groups,
    layer_map,
    layer_names,
    layerwise_lr,
    reset_after,
)
from auxtransfer.experiments.settings import Schedule
from auxtransfer.experiments.transfer import transfer_groups

from ._tiny_hf import build as build_hf


def _frozen(model):
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def _group_of(model, tensor, **kwargs):
    return next(g.address for g in layer_groups(model, **kwargs) if tensor in g.tensors)


class LeNet(nn.Module):
    """For 1x28x28 digits, its layers registered in another order than they run."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv1 = nn.Conv2d(1, 6, 5)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def test_a_model_that_cannot_be_traced_asks_for_its_input():
    model = LeNet()
    with pytest.raises(ValueError, match=r"could not run LeNet's forward pass .* `input_size=`"):
        layer_names(model)
    with pytest.raises(ValueError, match=r"`input_size=`"):
        freeze_until(model, "conv2")
    assert not _frozen(model)  # nothing half-done
    assert layer_names(model, input_size=(1, 28, 28)) == ["conv1", "conv2", "head"]
    summary = freeze_until(model, "conv2")  # the map built with the input is kept
    assert _frozen(model) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}
    assert summary.addresses == ("conv1", "conv2")
    example = torch.zeros(2, 1, 28, 28)
    assert layer_names(LeNet(), example_input=example) == ["conv1", "conv2", "head"]
    with pytest.raises(TypeError, match=r"`input_size` to be a tuple of positive ints"):
        layer_names(LeNet(), input_size=28)


class Interleaved(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(3))
        self.downs = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in range(2))
        self.head = nn.Linear(3, 5)

    def forward(self, x):
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        return self.head(x.mean((2, 3)))


def test_interleaved_lists_follow_the_forward_pass():
    model = Interleaved()
    assert layer_names(model) == ["stages.0", "downs.0", "stages.1", "downs.1", "stages.2", "head"]
    freeze_until(model, "downs.0")
    assert _frozen(model) == {
        f"{m}.{t}" for m in ("stages.0", "downs.0") for t in ("weight", "bias")
    }


class LateTensors(nn.Module):
    """A class token joined after the second of four blocks, and a scale before the head."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.gamma = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        for i, block in enumerate(self.blocks):
            if i == 2:
                x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
            x = block(x)
        return self.head(x[:, 0] * self.gamma)


def test_tensors_the_model_reads_late_are_not_frozen_with_the_stem():
    model = LateTensors()
    kwargs = {"input_size": (6, 4)}
    assert layer_names(model, **kwargs) == [
        "stem",
        "blocks.0",
        "blocks.1",
        "blocks.2",
        "blocks.3",
        "head",
    ]
    assert _group_of(model, "cls_token") == "blocks.2"  # with the first block that reads it
    assert _group_of(model, "gamma") == "head"
    freeze_until(model, "stem")
    assert _frozen(model) == {"embed.weight", "embed.bias"}
    freeze_until(model, "blocks.1")
    assert "cls_token" not in _frozen(model)
    freeze_until(model, "blocks.3")
    assert "cls_token" in _frozen(model)
    assert "gamma" not in _frozen(model)


@pytest.mark.parametrize(
    ("name", "token", "first_reader"),
    [
        ("cait_xxs24_224", "cls_token", "blocks_token_only.0"),
        ("convit_tiny", "cls_token", "blocks.10"),
        ("xcit_nano_12_p16_224", "cls_token", "cls_attn_blocks.0"),
        ("volo_d1_224", "cls_token", "post_network.0"),
    ],
)
def test_timm_class_tokens_go_with_the_block_that_first_reads_them(name, token, first_reader):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False)
    groups = layer_groups(model)
    holder = next(i for i, g in enumerate(groups) if token in g.tensors)
    reader = next(
        i for i, g in enumerate(groups) if any(t.startswith(first_reader + ".") for t in g.tensors)
    )
    assert holder == reader, (groups[holder].address, groups[reader].address)
    freeze_until(model, "stem")
    assert token not in _frozen(model)


class SharedTable(nn.Module):
    """A position table registered on the root that every block reads."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(8))
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(Block() for _ in range(3))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, self.table)
        return self.fc(x)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x, table):
        return self.linear(x + table)


def test_a_shared_tensor_stays_with_its_first_use_and_is_named():
    model = SharedTable()
    layers = layer_map(model)
    assert _group_of(model, "table") == "blocks.0"
    assert layers.shared == {"table": ("blocks.0", "blocks.1", "blocks.2")}
    summary = freeze_until(model, "blocks.0")
    assert "table" in _frozen(model)
    assert summary.shared == ("table",)
    assert "shared" in str(summary)
    reset = reset_after(model, "blocks.0", seed=0, init=SharedTable)
    assert reset.shared == ("table",)
    assert "table" not in reset.tensors


class Tied(nn.Module):
    """A language-model shape: the head's weight is the embedding's, registered under the head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 20)
        self.embed = nn.Embedding(20, 8)
        self.embed.weight = self.head.weight
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)))


def test_a_tied_weight_goes_with_its_first_use_not_its_registration():
    model = Tied()
    tokens = torch.zeros(2, 5, dtype=torch.long)
    layers = layer_map(model, example_input=tokens)
    assert layers.names == ["stem", "blocks.0", "blocks.1", "head"]
    assert layers.groups[0].tensors == ("head.weight",)  # the tensor, under its first name
    assert layers.aliases == {"embed.weight": "head.weight"}
    assert layers.shared == {"head.weight": ("stem", "head")}


class NormedClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))
        self.classifier = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_a_full_module_name_is_exactly_that_module():
    model = NormedClassifier()
    freeze_until(model, "classifier")
    assert _frozen(model) == {n for n, _ in model.named_parameters()}
    model = NormedClassifier()
    freeze_until(model, "classifier.0")
    assert _frozen(model) == {
        n for n, _ in model.named_parameters() if n.startswith(("features", "classifier.0"))
    }


class ReachesIn(nn.Module):
    """The forward calls the encoder's parts itself, with another module between them."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.embed = nn.Linear(4, 8)
        self.encoder.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.encoder.norm = nn.LayerNorm(8)
        self.extra = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.encoder.embed(x)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.fc(self.encoder.norm(self.extra(x)))


def test_a_forward_that_reaches_into_a_child_is_followed():
    model = ReachesIn()
    names = layer_names(model)
    assert names.index("extra") < names.index("encoder.norm")
    freeze_until(model, "encoder.norm")
    assert {"extra.weight", "extra.bias"} <= _frozen(model)


class LateStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.stem(self.blocks(x)))


def test_a_module_called_stem_that_runs_late_is_not_frozen_with_the_first_block():
    model = LateStem()
    freeze_until(model, "blocks.0", input_size=(4,))
    assert _frozen(model) == {"blocks.0.weight", "blocks.0.bias"}


class Distilled(nn.Module):
    """A distillation head registered before the main head, run after it."""

    def __init__(self):
        super().__init__()
        self.head_dist = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.body(x)
        return (self.head(x) + self.head_dist(x)) / 2


def test_heads_that_run_after_the_classifier_join_it():
    model = Distilled()
    assert layer_names(model, input_size=(4,)) == ["body.0", "body.1", "head"]
    assert set(layer_groups(model)[-1].modules) == {"head", "head_dist"}
    freeze_until(model, "head")
    assert "head_dist.weight" in _frozen(model)


def test_timm_distilled_pit_orders_its_heads_by_use():
    with torch.device("meta"):
        model = timm.create_model("pit_ti_distilled_224", pretrained=False)
    head = layer_groups(model)[-1]
    assert head.address == "head"
    assert {"head.weight", "head_dist.weight"} <= set(head.tensors)


@pytest.mark.parametrize("backbone", ["poolformer", "swiftformer"])
def test_a_backbone_name_covers_the_whole_backbone(backbone):
    classes = {
        "poolformer": "PoolFormerForImageClassification",
        "swiftformer": "SwiftFormerForImageClassification",
    }
    model = build_hf(classes[backbone])
    freeze_until(model, backbone)
    inside = {n for n, _ in model.named_parameters() if n.startswith(backbone + ".")}
    assert inside and inside <= _frozen(model)


def test_poolformer_patch_embeddings_are_interleaved_with_the_stages():
    model = build_hf("PoolFormerForImageClassification")
    names = layer_names(model)
    embeddings = [i for i, n in enumerate(names) if "patch_embeddings" in n or n == "stem"]
    assert embeddings != list(range(len(embeddings)))  # not all four before the first block


def test_levit_with_teacher_freezes_its_classifier_before_the_distillation_head():
    model = build_hf("LevitForImageClassificationWithTeacher")
    freeze_until(model, "classifier_distill")
    assert {n for n, _ in model.named_parameters() if n.startswith("classifier.")} <= _frozen(model)


def test_one_trace_per_transfer_step(monkeypatch):
    traced = []
    original = auxtransfer.layers.trace

    def counting(*args, **kwargs):
        traced.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(auxtransfer.layers, "trace", counting)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5)
    reset_after(model, "3.1", seed=0)
    freeze_until(model, "2")
    transfer_groups(model, Schedule(1, (), ((0.01,), (0.1,))), until="2")
    layerwise_lr(model, until="2", lr=0.01, new_lr=0.1)
    assert len(traced) == 1
    model.reset_classifier(7)  # a new classifier: a new map
    layer_names(model)
    assert len(traced) == 2


def test_the_layers_command_walks_the_modules_once_not_once_per_group(monkeypatch):
    from auxtransfer.__main__ import format_layers

    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(1000)))
    layer_map(model)  # the trace walks the model too: count only the table
    walks = []
    named_parameters = nn.Module.named_parameters

    def counting(self, *args, **kwargs):
        walks.append(self)
        return named_parameters(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "named_parameters", counting)
    lines = format_layers(model).splitlines()
    assert len(lines) == 1002
    # Listing each group's modules by walking every module's parameters made the table
    # quadratic in the number of modules (about a million walks here).
    assert len(walks) < 10


def test_the_layers_command_asks_for_an_input_size(capsys):
    from auxtransfer.__main__ import main as cli

    with pytest.raises(SystemExit, match=r"cannot map .*LeNet.* pass --input-size"):
        cli(["layers", "tests.test_layer_map:LeNet"])
    assert cli(["layers", "tests.test_layer_map:LeNet", "--input-size", "1", "28", "28"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert rows == ["conv1", "conv2", "head"]


class ReplacesItsBuffer(nn.Module):
    """Builds its table on the first call, replacing the registered placeholder (ConViT),
    and notes whether the placeholder outlived that: freed, its id could be taken by a
    tensor made later in the pass, which the map would then take for the placeholder."""

    placeholder_alive: ClassVar[list[bool]] = []

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("table", torch.zeros(1), persistent=False)

    def forward(self, x):
        if self.table.shape != (8,):
            placeholder = weakref.ref(self.table)
            self.table = torch.zeros(8, device=x.device)
            ReplacesItsBuffer.placeholder_alive.append(placeholder() is not None)
        return self.linear(x) + self.table


def test_a_buffer_replaced_during_the_pass_is_not_taken_for_a_later_tensor():
    model = nn.Sequential(nn.Linear(4, 8), *(ReplacesItsBuffer() for _ in range(4)))
    ReplacesItsBuffer.placeholder_alive.clear()
    layers = layer_map(model)
    assert ReplacesItsBuffer.placeholder_alive == [True] * 4
    assert "1.table" in layers.unused
    freeze_until(model, "1")
    assert _frozen(model) == {"0.weight", "0.bias", "1.linear.weight", "1.linear.bias"}


def test_the_layers_command_suggests_close_names_and_stops_quietly_on_a_closed_pipe():
    import subprocess
    import sys

    from auxtransfer.__main__ import main as cli

    with pytest.raises(SystemExit, match=r"unknown model 'resnet1888' \(did you mean resnet18, "):
        cli(["layers", "resnet1888"])
    # The reader is gone before the table is written (as `| head` leaves it).
    process = subprocess.Popen(
        [sys.executable, "-m", "auxtransfer", "layers", "resnet18"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


def test_freezing_everything_says_so():
    model = NormedClassifier()
    with pytest.warns(
        UserWarning, match=r"froze every parameter of NormedClassifier: nothing will train"
    ):
        summary = freeze_until(model, "head")
    assert str(summary).startswith("froze 4 layer groups")
    model = NormedClassifier()
    assert "1 norm layer keeps its running statistics" in str(freeze_until(model, "classifier.0"))


class TiedLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.b(self.a(x)))


def test_the_layers_table_lists_a_tied_tensor_under_its_first_name():
    from auxtransfer.__main__ import format_layers

    rows = [line.split()[0] for line in format_layers(TiedLinear()).splitlines()[1:-1]]
    assert rows == ["a", "b", "head"]


@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("vit_tiny_patch16_224", {"img_size": 32}, (3, 32, 32)),
        ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 4, "in_chans": 1}, (1, 32, 32)),
        ("deit_tiny_patch16_224", {"img_size": 32}, (3, 32, 32)),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, (3, 64, 64)),
    ],
)
@pytest.mark.parametrize("wrapped", [False, True])
def test_a_timm_model_built_for_smaller_images_is_traced_at_its_own_size(
    name, kwargs, size, wrapped
):
    # timm keeps pretrained_cfg["input_size"] at (3, 224, 224) whatever img_size it was given.
    def build():
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        return RandomPartitionHead(model, num_partitions=2) if wrapped else model

    model, sized = build(), build()
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    stated = layer_map(model)
    assert stated.groups == layer_map(sized, input_size=size).groups
    assert layer_names(model) == layer_names(sized, input_size=size)
    address = stated.names[len(stated.names) // 2]
    freeze_until(model, address)
    freeze_until(sized, address, input_size=size)
    assert _frozen(model) == _frozen(sized) != set()
