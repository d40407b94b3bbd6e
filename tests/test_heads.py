import copy
import gc
import io
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from auxtransfer import (
    AuxOutput,
    CombinedLoss,
    RandomPartitionHead,
    class_partition,
    find_classifier,
)


def _resnet(num_classes=10):
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes)


def _x(batch=4, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_output_shapes_and_partition():
    net = RandomPartitionHead(_resnet(), num_partitions=3, seed=7)
    out = net(_x())
    assert isinstance(out, AuxOutput)
    assert out.logits.shape == (4, 10)
    assert out.aux_logits.shape == (4, 3, 2)
    assert torch.equal(net.partition, class_partition(10, num_partitions=3, seed=7))
    assert net.num_classes == 10 and net.num_partitions == 3
    assert net.classifier_name == "fc"
    assert net.aux_head.in_features == 512


def test_main_path_unchanged_in_eval():
    backbone = _resnet().eval()
    x = _x()
    before = backbone(x)
    net = RandomPartitionHead(backbone).eval()
    assert torch.equal(net(x).logits, before)
    assert torch.equal(net.backbone(x), before)


def test_aux_head_reads_the_classifier_input():
    backbone = _resnet().eval()
    net = RandomPartitionHead(backbone, num_partitions=2)
    x = _x()
    # ResNet's pre-logits computed by hand, layer by layer.
    h = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    h = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(h))))
    features = torch.flatten(backbone.avgpool(h), 1)
    expected = F.linear(features, net.aux_head.weight, net.aux_head.bias).view(4, 2, 2)
    torch.testing.assert_close(net(x).aux_logits, expected)


def test_relabel():
    partition = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]])
    net = RandomPartitionHead(_resnet(), partition=partition)
    y = torch.tensor([0, 1, 4, 9, 5])
    expected = torch.tensor([[partition[0, c], partition[1, c]] for c in y.tolist()])
    assert torch.equal(net.relabel(y), expected)
    assert net.relabel(y).device == y.device
    assert net.relabel(torch.tensor([[3, 4]])).shape == (1, 2, 2)


def test_seed_decides_everything_and_global_rng_is_untouched():
    a = RandomPartitionHead(_resnet(), seed=3)
    backbone = _resnet()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    b = RandomPartitionHead(backbone, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    c = RandomPartitionHead(_resnet(), seed=4)
    assert torch.equal(a.aux_head.weight, b.aux_head.weight)
    assert torch.equal(a.partition, b.partition)
    assert not torch.equal(a.aux_head.weight, c.aux_head.weight)


def test_state_dict_round_trip(tmp_path):
    net = RandomPartitionHead(_resnet(), num_partitions=2, seed=1)
    with torch.no_grad():
        net.aux_head.weight.add_(1.0)
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    assert {"partition", "aux_head.weight", "aux_head.bias", "backbone.fc.weight"} <= set(
        net.state_dict()
    )

    other = RandomPartitionHead(_resnet(), num_partitions=2, seed=2)
    assert not torch.equal(other.partition, net.partition)
    other.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(other.partition, net.partition)
    net.eval(), other.eval()
    x = _x()
    assert torch.equal(net(x).aux_logits, other(x).aux_logits)
    assert torch.equal(net(x).logits, other(x).logits)


def test_unwrap_returns_the_plain_backbone():
    backbone = _resnet()
    keys = set(backbone.state_dict())
    net = RandomPartitionHead(backbone)
    plain = net.unwrap()
    assert plain is backbone
    assert set(plain.state_dict()) == keys
    assert not plain.fc._forward_pre_hooks
    assert plain(_x()).shape == (4, 10)
    with pytest.raises(RuntimeError, match="unwrapped"):
        net(_x())


def test_pickle_and_deepcopy():
    net = RandomPartitionHead(_resnet(), num_partitions=2).eval()
    x = _x()
    expected = net(x)
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        out = clone(x)
        assert torch.equal(out.logits, expected.logits)
        assert torch.equal(out.aux_logits, expected.aux_logits)
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x).aux_logits, expected.aux_logits)


def test_keeps_device_and_dtype_of_the_classifier():
    net = RandomPartitionHead(_resnet().to(torch.float64))
    assert net.aux_head.weight.dtype == torch.float64
    assert net(_x().double()).aux_logits.dtype == torch.float64
    with torch.device("meta"):
        meta = torchvision.models.resnet18(num_classes=10)
    net = RandomPartitionHead(meta, num_partitions=2, seed=5)
    assert net.aux_head.weight.is_meta
    assert net(torch.empty(2, 3, 32, 32, device="meta")).aux_logits.shape == (2, 2, 2)


def test_meta_then_to_empty_then_reset_parameters():
    with torch.device("meta"):
        meta = torchvision.models.resnet18(num_classes=10)
    net = RandomPartitionHead(meta, num_partitions=2, seed=5).to_empty(device="cpu")
    net.reset_parameters()
    reference = RandomPartitionHead(_resnet(), num_partitions=2, seed=5)
    assert torch.equal(net.partition, reference.partition)
    assert torch.equal(net.partition, class_partition(10, num_partitions=2, seed=5))
    assert torch.equal(net.aux_head.weight, reference.aux_head.weight)
    assert torch.equal(net.aux_head.bias, reference.aux_head.bias)


def test_two_wrappers_and_copies_do_not_mix():
    backbone = _resnet().eval()
    first = RandomPartitionHead(backbone, seed=1).eval()
    second = RandomPartitionHead(backbone, seed=2).eval()
    x = _x()
    assert torch.equal(first(x).logits, second(x).logits)
    assert not torch.equal(first(x).aux_logits, second(x).aux_logits)
    # Each wrapper's binary head against its own weights applied to the pooled features.
    features = torch.flatten(backbone.avgpool(_features(backbone, x)), 1)
    for net in (first, second):
        expected = F.linear(features, net.aux_head.weight, net.aux_head.bias).view(4, 1, 2)
        torch.testing.assert_close(net(x).aux_logits, expected)
    # A copy of a wrapped backbone carries a stale hook; wrapping the copy still works.
    again = RandomPartitionHead(copy.deepcopy(first.backbone), seed=1).eval()
    assert torch.equal(again(x).aux_logits, first(x).aux_logits)


def _features(resnet, x):
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        x = getattr(resnet, name)(x)
    return x


def test_a_dropped_wrapper_leaves_no_hook_behind():
    backbone = _resnet().eval()
    x = _x()
    for seed in range(20):  # Python reuses the ids of dropped objects
        net = RandomPartitionHead(backbone, seed=seed).eval()
        assert net(x).aux_logits.shape == (4, 1, 2)
        del net
        gc.collect()
        assert len(backbone.fc._forward_pre_hooks) == 0
    kept = RandomPartitionHead(backbone, seed=1)
    copied = copy.deepcopy(kept)
    assert len(copied.backbone.fc._forward_pre_hooks) == 1
    del copied
    gc.collect()
    assert len(backbone.fc._forward_pre_hooks) == 1  # the original's hook stays


def test_the_wrapped_layer_must_produce_the_logits():
    class HiddenFc(nn.Module):
        # `fc` is found first, but `classifier` makes the logits.
        def __init__(self, hidden):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, hidden)
            self.classifier = nn.Linear(hidden, 10)

        def forward(self, x):
            return self.classifier(torch.relu(self.fc(self.body(x))))

    for hidden in (32, 10):  # another width, and by chance the same width as the logits
        net = RandomPartitionHead(HiddenFc(hidden))
        assert net.classifier_name == "fc"
        with pytest.raises(RuntimeError, match=r"classifier `fc` to output the model's logits"):
            net(_x())
    net = RandomPartitionHead(HiddenFc(32), classifier="classifier")
    assert net(_x()).aux_logits.shape == (4, 1, 2)


def test_a_classifier_reading_tokens_is_refused():
    class TokenClassifier(nn.Module):
        # Classifies every token, then averages: the classifier's input is [B, N, D].
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.embed(x)).mean(1)

    net = RandomPartitionHead(TokenClassifier())
    with pytest.raises(RuntimeError, match=r"reads \(4, 8, 8\), one vector per token"):
        net(torch.randn(4, 8, 3))  # N == D == 8: pooling either way would fit the shape


def test_reset_parameters_keeps_a_loaded_partition():
    net = RandomPartitionHead(_resnet(), num_partitions=2, seed=1)
    other = RandomPartitionHead(_resnet(), num_partitions=2, seed=2)
    other.load_state_dict(net.state_dict())
    other.reset_parameters()
    assert torch.equal(other.partition, net.partition)
    assert not torch.equal(other.partition, class_partition(10, num_partitions=2, seed=2))


def test_relabel_soft_targets_is_the_mass_of_each_side():
    net = RandomPartitionHead(_resnet(), num_partitions=3, seed=4)
    g = torch.Generator().manual_seed(0)
    soft = torch.rand(5, 10, generator=g).softmax(1)
    binary = net.relabel(soft)
    assert binary.shape == (5, 3, 2)
    for b in range(5):
        for i in range(3):
            ones = sum(float(soft[b, c]) for c in range(10) if net.partition[i, c] == 1)
            zeros = sum(float(soft[b, c]) for c in range(10) if net.partition[i, c] == 0)
            assert binary[b, i].tolist() == pytest.approx([zeros, ones], abs=1e-6)
    # A one-hot soft target gives the hard binary label as a one-hot pair.
    labels = torch.tensor([0, 3, 9, 4, 7])
    hard = net.relabel(labels)
    assert torch.equal(net.relabel(F.one_hot(labels, 10).float()), F.one_hot(hard, 2).float())


def test_replaced_classifier_is_reported():
    net = RandomPartitionHead(timm.create_model("resnet18", num_classes=10))
    net.backbone.reset_classifier(5)
    with pytest.raises(RuntimeError, match=r"replaced after wrapping .* unwrap\(\) first"):
        net(_x())


def test_timm_protocol_passes_through():
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
    net = RandomPartitionHead(backbone)
    assert net.pretrained_cfg["architecture"] == "vit_tiny_patch16_224"
    assert net.default_cfg == net.pretrained_cfg
    assert net.no_weight_decay() == {f"backbone.{n}" for n in backbone.no_weight_decay()}
    assert "backbone.pos_embed" in net.no_weight_decay()
    net.set_grad_checkpointing(True)
    assert backbone.grad_checkpointing
    plain = RandomPartitionHead(_resnet())
    assert plain.pretrained_cfg == {}
    assert plain.no_weight_decay() == set()
    with pytest.raises(AttributeError, match="set_grad_checkpointing"):
        plain.set_grad_checkpointing()


def test_moves_with_to():
    net = RandomPartitionHead(_resnet()).to(torch.float64)
    assert net.aux_head.weight.dtype == torch.float64
    assert net.partition.dtype == torch.long  # buffers of labels keep their dtype


def test_train_step_updates_both_heads():
    net = RandomPartitionHead(_resnet(), num_partitions=2).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    y = torch.tensor([0, 3, 7, 9])
    loss = CombinedLoss(0.4)(net(_x()), y, net.relabel(y))
    loss.backward()
    assert net.aux_head.weight.grad.abs().sum() > 0
    assert net.backbone.fc.weight.grad.abs().sum() > 0
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    before = net.aux_head.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, net.aux_head.weight)


def test_autocast():
    net = RandomPartitionHead(_resnet(), num_partitions=2)
    y = torch.tensor([0, 3, 7, 9])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(_x())
        loss = CombinedLoss(0.4)(out, y, net.relabel(y))
    assert out.logits.dtype == out.aux_logits.dtype == torch.bfloat16
    loss.backward()
    assert net.aux_head.weight.grad.dtype == torch.float32


@pytest.mark.parametrize("fullgraph", [False, True])
def test_torch_compile(fullgraph):
    net = RandomPartitionHead(_resnet(), num_partitions=2).eval()
    x = _x()
    expected = net(x)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=fullgraph)
    out = compiled(x)
    torch.testing.assert_close(out.logits, expected.logits)
    torch.testing.assert_close(out.aux_logits, expected.aux_logits)
    y = torch.tensor([0, 3, 7, 9])
    CombinedLoss(0.4)(compiled(x), y, net.relabel(y)).backward()
    assert net.aux_head.weight.grad is not None


def test_compiled_first_call_skips_the_check_and_matches_eager():
    net = RandomPartitionHead(_resnet(), num_partitions=2).eval()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out = compiled(_x())  # no eager call before: the one-time check stays out of the graph
    expected = net(_x())  # eager: runs the check
    torch.testing.assert_close(out.aux_logits, expected.aux_logits)
    assert net._verified


def test_explicit_classifier_for_a_custom_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))
    with pytest.raises(
        ValueError, match=r"could not find the classifier of Sequential.*`classifier=`.*'3'"
    ):
        RandomPartitionHead(model)
    net = RandomPartitionHead(model, classifier="3").eval()
    x = torch.randn(2, 3, 2, 2)
    out = net(x)
    assert torch.equal(out.logits, model(x))
    hidden = model[2](model[1](model[0](x)))
    torch.testing.assert_close(out.aux_logits[:, 0], net.aux_head(hidden))


def test_explicit_classifier_container():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=5)
    net = RandomPartitionHead(model, classifier="classifier")
    assert net.aux_head.in_features == 512 * 7 * 7
    assert net.num_classes == 5


def test_find_classifier_on_timm_and_torchvision():
    assert find_classifier(timm.create_model("resnet18", num_classes=3)) == "fc"
    assert find_classifier(timm.create_model("vit_tiny_patch16_224", num_classes=3)) == "head"
    assert find_classifier(timm.create_model("convnext_atto", num_classes=3)) == "head.fc"
    assert find_classifier(torchvision.models.mobilenet_v3_small(num_classes=3)) == "classifier.3"


def test_googlenet_training_tuple():
    torch.manual_seed(0)
    backbone = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False)
    net = RandomPartitionHead(backbone, num_partitions=2).train()
    out = net(_x(size=64))
    assert out.logits.shape == (4, 10)
    assert out.aux_logits.shape == (4, 2, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_partitions": 0}, ValueError, r"`num_partitions` to be an int >= 1, but got 0"),
        ({"seed": -3}, ValueError, r"`seed` to be an int >= 0, but got -3"),
        (
            {"num_partitions": 1.0, "partition": class_partition(10)},
            TypeError,
            r"`num_partitions` to be an int >= 1, but got 1.0",
        ),
        (
            {"num_partitions": "1"},
            TypeError,
            r"`num_partitions` to be an int >= 1, but got '1' \(str\)",
        ),
        (
            {"partition": torch.ones(2, 11, dtype=torch.long)},
            ValueError,
            r"`partition` to have 10 columns .* shape \(2, 11\)",
        ),
        (
            {"partition": torch.full((10,), 2)},
            ValueError,
            r"row 0 puts all 10 classes in group 2",
        ),
        (
            {"partition": torch.zeros(10, dtype=torch.long)},
            ValueError,
            r"row 0 puts all 10 classes in group 0",
        ),
        ({"partition": torch.rand(10)}, TypeError, r"`partition` to be an integer or bool tensor"),
        (
            {"partition": torch.zeros(1, 1, 10, dtype=torch.long)},
            ValueError,
            r"shape \[C\] or \[n, C\]",
        ),
        (
            {"partition": class_partition(10, num_partitions=2), "num_partitions": 3},
            ValueError,
            r"`num_partitions` to match the 2 rows",
        ),
        (
            {"classifier": "fc2"},
            ValueError,
            r"`classifier` to name a module of ResNet, but got 'fc2'",
        ),
        ({"classifier": "layer1.0.relu"}, TypeError, r"`layer1.0.relu` is a ReLU with none inside"),
        ({"classifier": 3}, TypeError, r"`classifier` to be a module name \(str\), but got 3"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        RandomPartitionHead(_resnet(), **kwargs)


def test_bad_backbones():
    with pytest.raises(
        TypeError, match=r"`backbone` to be an nn.Module, but got 'resnet18' \(str\)"
    ):
        RandomPartitionHead("resnet18")
    with pytest.raises(
        ValueError, match=r"classifier `fc` to output at least 2 classes, but it outputs 1"
    ):
        RandomPartitionHead(_resnet(num_classes=1))
    encoder = timm.create_model("resnet18", num_classes=0)
    with pytest.raises(ValueError, match=r"num_classes=0.*`classifier=`"):
        RandomPartitionHead(encoder)


@pytest.mark.parametrize(
    "name", ["resnet18", "inception_next_atto", "coatnet_0_224", "efficientvit_m0"]
)
def test_timm_model_without_classifier_is_refused(name):
    # Their heads hold pre-logits layers (or raise in get_classifier): never take those.
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=0)
    with pytest.raises(ValueError, match=r"could not find the classifier .*`classifier=`"):
        RandomPartitionHead(model)


def test_bad_relabel_input():
    net = RandomPartitionHead(_resnet())
    with pytest.raises(
        ValueError, match=r"`target` to hold class indices in \[0, 10\), but got 10"
    ):
        net.relabel(torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"but got -1"):
        net.relabel(torch.tensor([-1]))
    with pytest.raises(
        ValueError,
        match=r"`target` of class probabilities to have shape \[\.\.\., 10\], but got shape \(1,\)",
    ):
        net.relabel(torch.tensor([0.0]))
    with pytest.raises(TypeError, match=r"`target` to be an integer tensor"):
        net.relabel(torch.tensor([True]))
    with pytest.raises(
        TypeError,
        match=r"`target` to be a tensor of class indices or class probabilities, but got \[0, 1\]",
    ):
        net.relabel([0, 1])


def test_a_wrapper_built_on_meta_materialises():
    with torch.device("meta"):
        net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), seed=5)
    net.to_empty(device="cpu")
    net.reset_parameters()
    assert torch.equal(net.partition, class_partition(10, seed=5))


def test_no_attribute_is_left_on_the_classifier():
    backbone = _resnet().eval()
    before = set(backbone.fc.__dict__)
    net = RandomPartitionHead(backbone)
    net(_x())
    assert set(backbone.fc.__dict__) == before


def test_a_named_classifier_may_scale_the_logits():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.body(x)) / 2.0  # a temperature

    with pytest.raises(RuntimeError, match=r"`fc` to output the model's logits"):
        RandomPartitionHead(Scaled())(_x())
    net = RandomPartitionHead(Scaled(), classifier="fc")
    assert net(_x()).aux_logits.shape == (4, 1, 2)


def test_timm_layer_decay_sees_the_binary_head_with_the_head():
    from timm.optim import param_groups_layer_decay

    def scales(model):
        groups = param_groups_layer_decay(model, layer_decay=0.5)
        return {
            name: group["lr_scale"]
            for group in groups
            for name, p in model.named_parameters()
            if any(p is q for q in group["params"])
        }

    backbone = timm.create_model("resnet18", num_classes=10)
    plain = scales(backbone)
    wrapped = scales(RandomPartitionHead(backbone))
    for name, scale in plain.items():
        assert wrapped[f"backbone.{name}"] == scale, name
    assert wrapped["aux_head.weight"] == plain["fc.weight"]


def test_k_group_heads():
    from auxtransfer import binary_relabel, class_partition, group_partition

    backbone = torchvision.models.resnet18(num_classes=12)
    net = RandomPartitionHead(backbone, num_groups=4, num_partitions=2, seed=3)
    assert net.num_groups == 4
    assert torch.equal(net.partition, class_partition(12, num_groups=4, num_partitions=2, seed=3))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.aux_logits.shape == (2, 2, 4)
    assert net.aux_head.out_features == 8
    labels = torch.tensor([0, 11, 5])
    assert torch.equal(net.relabel(labels), net.partition.t()[labels])
    assert "num_groups=4" in repr(net)
    # A given grouping: K inferred from the table; the dataset adapter yields the same ids.
    table = group_partition([c % 3 for c in range(12)])
    grouped = RandomPartitionHead(torchvision.models.resnet18(num_classes=12), partition=table)
    assert grouped.num_groups == 3
    assert grouped(torch.randn(2, 3, 32, 32)).aux_logits.shape == (2, 1, 3)
    data = torch.utils.data.TensorDataset(torch.zeros(12, 1), torch.arange(12))
    assert binary_relabel(data, table)[7][2].tolist() == [1]
    # The state dict round-trips; a partition of another K is refused.
    twin = RandomPartitionHead(
        torchvision.models.resnet18(num_classes=12), num_groups=4, num_partitions=2
    )
    twin.load_state_dict(net.state_dict())
    assert torch.equal(twin.partition, net.partition)
    with pytest.raises(
        ValueError, match=r"`num_groups` to match the 3 groups of `partition`, but got 4"
    ):
        RandomPartitionHead(
            torchvision.models.resnet18(num_classes=12), partition=table, num_groups=4
        )
    with pytest.raises(
        ValueError, match=r"`num_groups` to be at most `num_classes` \(12\), but got 13"
    ):
        RandomPartitionHead(torchvision.models.resnet18(num_classes=12), num_groups=13)


def test_two_groups_are_todays_binary_head_bit_for_bit():
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    default = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), seed=4)
    torch.manual_seed(0)
    explicit = RandomPartitionHead(
        torchvision.models.resnet18(num_classes=10), seed=4, num_groups=2
    )
    assert torch.equal(default.partition, explicit.partition)
    for a, b in zip(default.state_dict().values(), explicit.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(default(images).aux_logits, explicit(images).aux_logits)
