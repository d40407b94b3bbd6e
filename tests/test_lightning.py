"""auxtransfer.lightning with a real lightning.Trainer on the CPU: frozen parameters and
BatchNorm statistics under both policies, the logged loss terms against a hand
computation, unfreezing with layer-wise rates, and a resumed fit equal to an uninterrupted
one."""

import copy
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")
pytest.importorskip("torchmetrics")

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import auxtransfer.models  # noqa: F401  (registers the CIFAR models)
from auxtransfer import freeze_until
from auxtransfer.lightning import AuxTransferModule, FreezeUntil
from auxtransfer.models import cifar_densenet_bc_100


def _backbone():
    torch.manual_seed(0)
    return cifar_densenet_bc_100(num_classes=5, depth=10, growth_rate=4)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    return TensorDataset(images, torch.randint(0, 5, (n,), generator=g))


def _loader(dataset=None):
    return DataLoader(dataset or _data(), batch_size=8, shuffle=False)


def _trainer(tmp_path, epochs, callbacks=(), **kwargs):
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
        default_root_dir=tmp_path, deterministic=True, **kwargs,
    )  # fmt: skip


def _frozen_names(until, bn):
    """What freeze_until freezes, on a copy: parameters, and the norm layers it holds."""
    model = AuxTransferModule(_backbone(), num_classes=5).model
    summary = freeze_until(model, until, bn=bn)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    return frozen, summary


@pytest.mark.parametrize("bn", ["freeze", "update"])
def test_a_fit_leaves_what_is_frozen_as_it_was(tmp_path, bn):
    module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4, lr=0.1)
    before = copy.deepcopy(module.model.state_dict())
    callback = FreezeUntil("2.1", bn=bn)
    _trainer(tmp_path, 2, [callback], limit_val_batches=0).fit(module, _loader())
    frozen, summary = _frozen_names("2.1", bn)
    assert callback.summary.addresses == summary.addresses and frozen
    after = module.model.state_dict()
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    # The rest trained.
    assert not torch.equal(after["aux_head.weight"], before["aux_head.weight"])
    # The norm layers of the frozen part (those bn="freeze" holds in eval mode).
    norms = _frozen_names("2.1", "freeze")[1].frozen_norms
    stats = [
        f"{m}.{b}" for m in norms for b in ("running_mean", "running_var", "num_batches_tracked")
    ]
    assert len(norms) == 6
    same = [torch.equal(after[s], before[s]) for s in stats]
    # freeze: A's statistics kept bitwise; update: they follow the new data.
    assert all(same) if bn == "freeze" else not any(same)


def test_the_logged_terms_are_the_combined_loss_computed_by_hand(tmp_path):
    module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4, lr=0.0, momentum=0.0)
    batch = next(iter(_loader()))
    reference = copy.deepcopy(module.model).train()
    out = reference(batch[0])
    main = F.cross_entropy(out.logits, batch[1])
    groups = reference.partition[0][batch[1]]
    aux = F.cross_entropy(out.aux_logits[:, 0], groups)
    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, _loader())
    logged = trainer.logged_metrics
    assert logged["train/main_loss_step"].item() == pytest.approx(main.item(), rel=1e-5)
    assert logged["train/aux_loss_step"].item() == pytest.approx(aux.item(), rel=1e-5)
    total = 0.6 * main + 0.4 * aux
    assert logged["train/loss_step"].item() == pytest.approx(total.item(), rel=1e-5)
    accuracy = (out.logits.argmax(1) == batch[1]).float().mean().item()
    assert logged["train/acc_step"].item() == pytest.approx(accuracy)


def test_without_an_auxiliary_head_it_is_cross_entropy(tmp_path):
    module = AuxTransferModule(_backbone(), num_classes=5, weight=0.0, lr=0.0, momentum=0.0)
    assert not module.aux
    batch = next(iter(_loader()))
    expected = F.cross_entropy(copy.deepcopy(module.model).train()(batch[0]), batch[1])
    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, _loader(), _loader())
    assert trainer.logged_metrics["train/loss_step"].item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    assert "train/aux_loss_step" not in trainer.logged_metrics
    assert {"val/loss", "val/acc"} <= set(trainer.logged_metrics)


def test_unfreezing_adds_layerwise_groups_and_trains_them(tmp_path):
    module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4, lr=0.1)
    callback = FreezeUntil("2.1", unfreeze_at_epoch=1, lr=0.01, decay=0.5)
    frozen, _ = _frozen_names("2.1", "freeze")
    before = copy.deepcopy(module.model.state_dict())
    trainer = _trainer(tmp_path, 2, [callback], limit_val_batches=0)
    trainer.fit(module, _loader())
    groups = trainer.optimizers[0].param_groups
    # stem, 1.1, 2.1 at 0.01 * 0.5 ** k from 2.1 back; one group per address.
    assert [(g["addresses"], g["lr"]) for g in groups[1:]] == [
        (("stem", "stem"), 0.0025), (("1.1", "1.1"), 0.005), (("2.1", "2.1"), 0.01)
    ]  # fmt: skip
    names = {id(p): n for n, p in module.model.named_parameters()}
    assert {names[id(p)] for g in groups[1:] for p in g["params"]} == frozen
    assert all(p.requires_grad for p in module.model.parameters())
    after = module.model.state_dict()
    assert any(not torch.equal(after[n], before[n]) for n in frozen)  # trained in epoch 1


@pytest.mark.parametrize("stop", [2, 3], ids=["before-unfreeze", "after-unfreeze"])
def test_a_resumed_fit_ends_where_an_uninterrupted_one_does(tmp_path, stop):
    def fit(epochs, ckpt_path=None, folder="straight"):
        torch.manual_seed(0)
        module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4, lr=0.1)
        callback = FreezeUntil("2.1", unfreeze_at_epoch=2, lr=0.01)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / folder, save_last=True, every_n_epochs=1)
        trainer = _trainer(tmp_path / folder, epochs, [callback, checkpoint], limit_val_batches=0)
        trainer.fit(module, _loader(), ckpt_path=ckpt_path)
        return module, trainer

    straight, straight_trainer = fit(4)
    fit(stop, folder="parts")
    resumed, resumed_trainer = fit(4, ckpt_path=tmp_path / "parts" / "last.ckpt", folder="parts")
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    groups = [(len(g["params"]), g["lr"]) for g in straight_trainer.optimizers[0].param_groups]
    assert [
        (len(g["params"]), g["lr"]) for g in resumed_trainer.optimizers[0].param_groups
    ] == groups
    assert groups == [(12, 0.1), (19, 0.01)]  # the unfrozen layers: one group at lr
    assert all(p.requires_grad for p in resumed.model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"until": "9.9"}, ValueError, r"`until` to be one of the addresses .* got '9.9'"),
        ({"until": "2", "module": "net"}, ValueError, r"`module` to name a submodule .* got 'net'"),
    ],
)
def test_an_unknown_address_or_module_is_named_when_the_fit_starts(tmp_path, kwargs, error, match):
    module = AuxTransferModule(_backbone(), num_classes=5)
    with pytest.raises(error, match=match):
        _trainer(tmp_path, 1, [FreezeUntil(**kwargs)]).fit(module, _loader())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"until": "2", "unfreeze_at_epoch": 3}, r"`lr`, the learning rate of the layers unfrozen"),
        ({"until": "2", "bn": "eval"}, r"`bn` to be 'freeze' or 'update', but got 'eval'"),
        (
            {"until": "2", "unfreeze_at_epoch": -1, "lr": 0.1},
            r"`unfreeze_at_epoch` to be an int >= 0",
        ),
        ({"until": "2", "lr": -0.1}, r"`lr` to be a finite float >= 0"),
    ],
)
def test_bad_callback_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FreezeUntil(**kwargs)


def test_the_example_runs_both_phases(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "lightning_transfer.py"
    spec = importlib.util.spec_from_file_location("lightning_transfer", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--smoke", "--until", "2.1"])
    assert set(results) == {"a_val_acc", "b_val_acc"}
    assert all(0.0 <= value <= 1.0 for value in results.values())
    out = capsys.readouterr().out
    assert "frozen on B: froze 3 layer groups (stem ... 2.1)" in out


def test_validate_leaves_the_model_and_a_second_fit_freezes_anew(tmp_path):
    module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4, lr=0.1)
    callback = FreezeUntil("2.1", unfreeze_at_epoch=1, lr=0.01)
    trainer = _trainer(tmp_path, 2, [callback])
    trainer.fit(module, _loader(), _loader())
    assert all(p.requires_grad for p in module.model.parameters())
    trainer.validate(module, _loader())  # not a fit: nothing frozen again
    assert all(p.requires_grad for p in module.model.parameters())
    # The same callback in a new fit: frozen from the start, unfrozen at epoch 1 again.
    frozen, _ = _frozen_names("2.1", "freeze")
    seen = []

    class Watch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            names = {n for n, p in pl_module.model.named_parameters() if not p.requires_grad}
            seen.append(names)

    _trainer(tmp_path, 2, [callback, Watch()], limit_val_batches=0).fit(module, _loader())
    assert seen == [frozen, set()]


def test_unfreezing_is_refused_under_ddp():
    from types import SimpleNamespace

    module = AuxTransferModule(_backbone(), num_classes=5)
    callback = FreezeUntil("2", unfreeze_at_epoch=1, lr=0.01)
    with pytest.raises(
        ValueError, match=r"one process for `unfreeze_at_epoch` \(1\), but the trainer has 2"
    ):
        callback.setup(SimpleNamespace(world_size=2), module, "fit")
    FreezeUntil("2").setup(
        SimpleNamespace(world_size=2, strategy=None), module, "fit"
    )  # freezing alone is fine


# --- Hugging Face backbones, every argument checked, checkpoints, `backbone`, eval mode ---


def _hf(name, num_labels=5):
    pytest.importorskip("transformers")
    from ._tiny_hf import build

    torch.manual_seed(0)
    return build(name, num_labels=num_labels)


@pytest.mark.parametrize("weight", [0.0, 0.4], ids=["weight-0", "weight-0.4"])
@pytest.mark.parametrize("name", ["ViTForImageClassification", "ResNetForImageClassification"])
def test_a_hugging_face_backbone_trains_and_validates(tmp_path, name, weight):
    # Their forward returns an ImageClassifierOutput, not a tensor.
    module = AuxTransferModule(_hf(name), num_classes=5, weight=weight, lr=0.0, momentum=0.0)
    batch = next(iter(_loader()))
    out = copy.deepcopy(module.model).train()(batch[0])
    main = F.cross_entropy(out.logits, batch[1])
    trainer = _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, _loader(), _loader())
    logged = trainer.logged_metrics
    assert logged["train/main_loss_step" if weight else "train/loss_step"].item() == (
        pytest.approx(main.item(), rel=1e-5)
    )
    assert {"val/loss", "val/acc"} <= set(logged)
    module.eval()
    with torch.no_grad():
        expected = F.cross_entropy(module.model(batch[0]).logits, batch[1])
    assert logged["val/loss"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"until": "2", "unfreeze_at_epoch": 1, "lr": 0.1, "decay": 3}, ValueError,
         r"^Expected `decay` to be a float in \(0, 1\] .*, but got 3\.$"),
        ({"until": "2", "unfreeze_at_epoch": 1, "lr": 0.1, "decay": 0}, ValueError,
         r"^Expected `decay` to be a float in \(0, 1\] .*, but got 0\.$"),
        ({"until": "2", "unfreeze_at_epoch": 1, "lr": 0.1, "decay": "0.5"}, TypeError,
         r"^Expected `decay` to be a float in \(0, 1\] .*, but got '0.5' \(str\)\.$"),
        ({"until": "2", "lr": 0.1}, ValueError,
         r"^Expected `unfreeze_at_epoch` with `lr` \(0.1\).*, but got None\.$"),
        ({"until": "2", "decay": 0.5}, ValueError,
         r"^Expected `unfreeze_at_epoch` with `decay` \(0.5\).*, but got None\.$"),
        ({"until": "2", "unfreeze_at_epoch": 1.5, "lr": 0.1}, TypeError,
         r"^Expected `unfreeze_at_epoch` to be an int >= 0, but got 1.5 \(float\)\.$"),
        ({"until": "2", "module": 3}, TypeError,
         r"^Expected `module` to be an attribute name \(str\) or None, but got 3 \(int\)\.$"),
        ({"until": ""}, TypeError, r"^Expected `until` to be a layer address \(str\), but got ''"),
        ({"until": 2}, TypeError, r"^Expected `until` to be a layer address \(str\), but got 2"),
    ],
)  # fmt: skip
def test_every_callback_argument_is_checked_when_it_is_made(kwargs, error, match):
    with pytest.raises(error, match=match) as caught:
        FreezeUntil(**kwargs)
    assert "\n" not in str(caught.value)


_PARTITION = torch.tensor([[0, 1, 0, 1, 1]])


@pytest.mark.parametrize("weight", [0.0, 0.4], ids=["weight-0", "weight-0.4"])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backbone": "resnet18"}, TypeError,
         r"^Expected `backbone` to be an nn.Module, but got 'resnet18' \(str\)\.$"),
        ({"num_classes": 5.0}, TypeError, r"^Expected `num_classes` to be an int >= 2, but got 5.0"),
        ({"weight": 1.5}, ValueError, r"^Expected `weight` to be a float in \[0, 1\], but got 1.5"),
        ({"num_partitions": 0}, ValueError, r"^Expected `num_partitions` to be an int >= 1, but got 0"),
        ({"num_groups": 1}, ValueError, r"^Expected `num_groups` to be an int >= 2, but got 1"),
        ({"num_groups": 6}, ValueError, r"`num_groups`.* 6"),
        ({"partition": torch.tensor([[0, 1, 0, 1]])}, ValueError,
         r"^Expected `partition` to have 5 columns"),
        ({"partition": _PARTITION, "num_partitions": 2}, ValueError,
         r"^Expected `num_partitions` to match the 1 rows of `partition`, but got 2\.$"),
        ({"partition": _PARTITION, "num_groups": 3}, ValueError,
         r"^Expected `num_groups` to match the 2 groups of `partition`, but got 3\.$"),
        ({"seed": -1}, ValueError, r"^Expected `seed` to be an int >= 0, but got -1\.$"),
        ({"lr": float("nan")}, ValueError, r"^Expected `lr` to be a finite float >= 0"),
        ({"momentum": 1.0}, ValueError, r"^Expected `momentum` to be in \[0, 1\)"),
        ({"weight_decay": -1e-4}, ValueError, r"^Expected `weight_decay` to be a finite float >= 0"),
        ({"nesterov": "yes"}, TypeError,
         r"^Expected `nesterov` to be a bool, but got 'yes' \(str\)\.$"),
        ({"nesterov": True, "momentum": 0.0}, ValueError,
         r"^Expected `momentum` > 0 with `nesterov=True`, but got 0.0\.$"),
        ({"milestones": 100}, TypeError,
         r"^Expected `milestones` to be a sequence of epochs \(ints >= 1\), but got 100 \(int\)\.$"),
        ({"milestones": [0, 10]}, ValueError, r"^Expected `milestones` to be an int >= 1, but got 0"),
        ({"milestones": [10], "gamma": 0}, ValueError,
         r"^Expected `gamma` to be a float in \(0, 1\], but got 0"),
        ({"milestones": [10], "gamma": 10}, ValueError,
         r"^Expected `gamma` to be a float in \(0, 1\], but got 10"),
        ({"gamma": "0.1"}, TypeError,
         r"^Expected `gamma` to be a float in \(0, 1\], but got '0.1' \(str\)\.$"),
    ],
)  # fmt: skip
def test_every_module_argument_is_checked_when_it_is_made(kwargs, error, match, weight):
    arguments = {"backbone": _backbone(), "num_classes": 5, "weight": weight, **kwargs}
    with pytest.raises(error, match=match) as caught:
        AuxTransferModule(**arguments)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("weight", [0.0, 0.4], ids=["weight-0", "weight-0.4"])
def test_num_classes_is_checked_against_the_classifier(weight):
    with pytest.raises(ValueError, match=r"^Expected `num_classes` to match the 5 classes of"):
        AuxTransferModule(_backbone(), num_classes=7, weight=weight)
    with pytest.raises(ValueError, match=r"^Expected `num_classes` to match the 5 classes of"):
        AuxTransferModule(_hf("ResNetForImageClassification"), num_classes=3, weight=weight)


def test_num_classes_is_checked_on_the_first_batch_where_no_classifier_is_found(tmp_path):
    # No `fc`, `classifier` or `head`: the logits' width is checked when they come.
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 5))
    module = AuxTransferModule(backbone, num_classes=7, weight=0.0)
    with pytest.raises(
        ValueError, match=r"^Expected `num_classes` \(7\) .* got logits of shape \(8, 5\)"
    ):
        _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=0).fit(module, _loader())


@pytest.mark.parametrize("weight", [0.0, 0.4], ids=["weight-0", "weight-0.4"])
def test_a_label_outside_the_classes_is_named(tmp_path, weight):
    images, labels = _data().tensors
    labels = labels.clone()
    labels[3] = 7
    module = AuxTransferModule(_backbone(), num_classes=5, weight=weight)
    loader = _loader(TensorDataset(images, labels))
    with pytest.raises(ValueError, match=r"hold class indices in \[0, 5\), but got 7\.$"):
        _trainer(tmp_path, 1, limit_train_batches=1, limit_val_batches=0).fit(module, loader)
    with pytest.raises(ValueError, match=r"hold class indices in \[0, 5\), but got 7\.$"):
        _trainer(tmp_path, 1).validate(module, loader)


def _equal(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


@pytest.mark.parametrize("weight", [0.0, 0.4], ids=["weight-0", "weight-0.4"])
def test_a_checkpoint_loads_with_its_hyperparameters(tmp_path, weight):
    settings = {"num_classes": 5, "weight": weight, "lr": 0.05, "milestones": [1], "seed": 3}
    if weight:
        settings["partition"] = _PARTITION
    module = AuxTransferModule(_backbone(), **settings)
    trainer = _trainer(tmp_path, 1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, _loader())
    path = tmp_path / "module.ckpt"
    trainer.save_checkpoint(path)
    # A backbone built as for training; its weights come from the checkpoint.
    torch.manual_seed(1)
    fresh = cifar_densenet_bc_100(num_classes=5, depth=10, growth_rate=4)
    loaded = AuxTransferModule.load_from_checkpoint(path, backbone=fresh)
    assert loaded.model.state_dict().keys() == module.model.state_dict().keys()
    for name, value in module.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    assert loaded.aux == module.aux == bool(weight)
    if weight:
        assert torch.equal(loaded.model.partition, _PARTITION)
    assert set(loaded.hparams) == set(module.hparams) == set(settings) | {
        "num_partitions", "num_groups", "partition", "momentum", "weight_decay", "nesterov",
        "gamma", "classifier",
    }  # fmt: skip
    for name in module.hparams:
        assert _equal(loaded.hparams[name], module.hparams[name]), name
    assert "backbone" not in loaded.hparams
    with pytest.raises(TypeError, match="backbone"):
        AuxTransferModule.load_from_checkpoint(path)


class _Finetune(L.LightningModule):
    """A LightningModule of its own, its network under `backbone` (or other names)."""

    def __init__(self, **modules):
        super().__init__()
        for name, module in modules.items():
            setattr(self, name, module)
        self.trains = next(iter(modules))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(getattr(self, self.trains)(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


@pytest.mark.parametrize("name", ["model", "backbone"])
def test_the_default_module_is_model_or_backbone(tmp_path, name):
    pl_module = _Finetune(**{name: _backbone()})
    callback = FreezeUntil("2.1")
    _trainer(tmp_path, 1, [callback], limit_train_batches=1).fit(pl_module, _loader())
    expected = _backbone()
    freeze_until(expected, "2.1")
    frozen = {n for n, p in getattr(pl_module, name).named_parameters() if not p.requires_grad}
    assert frozen == {n for n, p in expected.named_parameters() if not p.requires_grad}
    assert frozen
    assert callback.model_of(pl_module) is getattr(pl_module, name)


@pytest.mark.parametrize(
    ("modules", "match"),
    [
        ({"net": None}, r"^Expected _Finetune to hold its model as `model` or `backbone`, the "
                        r"attributes FreezeUntil's default `module` looks for, but it has neither"),
        ({"model": None, "backbone": None}, r"^Expected _Finetune to hold one model as `model` "
                                            r"or `backbone`, .* but it has both"),
    ],
)  # fmt: skip
def test_the_default_module_refuses_neither_and_both(tmp_path, modules, match):
    pl_module = _Finetune(**{name: _backbone() for name in modules})
    with pytest.raises(ValueError, match=match) as caught:
        _trainer(tmp_path, 1, [FreezeUntil("2.1")], limit_train_batches=1).fit(pl_module, _loader())
    assert "\n" not in str(caught.value)
    # Named, either works.
    callback = FreezeUntil("2.1", module=next(iter(modules)))
    _trainer(tmp_path, 1, [callback], limit_train_batches=1).fit(pl_module, _loader())
    assert callback.summary is not None


def test_the_norm_layers_held_in_eval_mode_are_explained_not_warned_about(tmp_path):
    import logging
    import warnings

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    def fit(module):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            _trainer(tmp_path, 1, [FreezeUntil("2.1", bn="freeze")], limit_train_batches=1,
                     limit_val_batches=0).fit(module, _loader())  # fmt: skip
        return [str(w.message) for w in record if "in eval mode at the start" in str(w.message)]

    handler = Lines()
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    try:
        assert fit(AuxTransferModule(_backbone(), num_classes=5, weight=0.4)) == []
        # A module of the user's own in eval mode is still warned about, all 7 counted.
        module = AuxTransferModule(_backbone(), num_classes=5, weight=0.4)
        module.model.backbone.classifier.eval()
        assert [w[:30] for w in fit(module)] == ["Found 7 module(s) in eval mode"]
    finally:
        logger.removeHandler(handler)
    # Each fit logs what was frozen, and that the 6 norm layers stay in eval mode on purpose.
    lines = [line for line in handler.lines if line.startswith("FreezeUntil")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("FreezeUntil on `model`: froze 3 layer groups (stem ... 2.1): ")
    assert "These 6 stay in eval mode while the rest trains, by design" in lines[0]
    # The line the docs show.
    docs = (Path(__file__).resolve().parents[1] / "docs" / "lightning.md").read_text()
    shown = re.search(r"<!-- output: freeze-info -->\n```text\n(.*?)\n```", docs, re.S)
    assert shown and shown.group(1) == lines[0]
    # Nothing is left in the warning filters.
    assert not [f for f in warnings.filters if "in eval mode" in str(f[1])]
