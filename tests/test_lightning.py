"""auxtransfer.lightning with a real lightning.Trainer on the CPU: frozen parameters and
BatchNorm statistics under both policies, the logged loss terms against a hand
computation, unfreezing with layer-wise rates, and a resumed fit equal to an uninterrupted
one."""

import copy

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
