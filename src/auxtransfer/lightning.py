"""PyTorch Lightning: a freezing callback with auxtransfer's BatchNorm policy, and a module
that trains any backbone with the combined loss.

Needs the optional extra ``auxtransfer[lightning]`` (``lightning`` and ``torchmetrics``);
nothing else in auxtransfer imports this module.

    import lightning as L
    from auxtransfer.lightning import AuxTransferModule, FreezeUntil

    module = AuxTransferModule(backbone, num_classes=50, weight=0.4)      # pre-training on A
    L.Trainer(max_epochs=175).fit(module, datamodule_a)

    module = AuxTransferModule(backbone_from_a, num_classes=50, weight=0.0)   # transfer to B
    callback = FreezeUntil("2.9", bn="freeze", unfreeze_at_epoch=20, lr=0.001)
    L.Trainer(max_epochs=40, callbacks=[callback]).fit(module, datamodule_b)
"""

from __future__ import annotations

import math
import numbers
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ._checks import check_int, check_labels, check_seed, check_unit_float, describe
from .classifier import classifier_widths, find_classifier, named_classifier
from .freezing import DEFAULT_BN, BatchNormPolicy, FreezeSummary, check_bn, freeze_until, unfreeze
from .heads import RandomPartitionHead, _main_logits
from .layers import layer_map
from .losses import combined_loss_terms
from .optim import MOMENTUM, WEIGHT_DECAY, check_rate, check_sgd, layerwise_lr
from .partition import as_partition, class_partition

__all__ = ["AuxTransferModule", "FreezeUntil"]

# Where FreezeUntil looks for the model when `module` is None: auxtransfer's name, and the
# one of Lightning's BackboneFinetuning.
_DEFAULT_MODULES = ("model", "backbone")
# The start of the warning Lightning's fit loop gives for modules in eval mode when training
# starts (lightning.pytorch.loops.fit_loop); `{}` is the count.
_EVAL_MODE_WARNING = "Found {} module(s) in eval mode at the start of training."


def _check_decay(decay: Any) -> float:
    """``decay`` as a float in (0, 1], or the error naming it (as ``layerwise_lr`` does)."""
    expected = "a float in (0, 1] (smaller learning rates towards the stem)"
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"Expected `decay` to be {expected}, but got {describe(decay)}.")
    if not 0.0 < float(decay) <= 1.0:
        raise ValueError(f"Expected `decay` to be {expected}, but got {decay}.")
    return float(decay)


class FreezeUntil(BaseFinetuning):
    """Freeze a LightningModule's model up to a layer address, with auxtransfer's BatchNorm
    policy; optionally train those layers again from an epoch on, at layer-wise rates.

    Before training (``setup``) this calls [`freeze_until`][auxtransfer.freeze_until] on
    the module's ``model`` or ``backbone`` submodule (or the one ``module`` names): the
    stem up to and including ``until`` gets ``requires_grad=False``, and with
    ``bn="freeze"`` its norm layers stay in eval mode through every ``model.train()``
    Lightning calls, so their running statistics stay A's (Lightning's own
    ``BaseFinetuning.freeze`` turns ``track_running_stats`` off instead, which makes frozen
    norm layers normalise with each batch's statistics). ``bn="update"`` freezes the
    parameters only, and the statistics follow the new data.

    What was frozen is logged once per fit (an info line on Lightning's logger) and kept in
    ``summary``. The norm layers held in eval mode are the ones Lightning's warning "Found
    N module(s) in eval mode at the start of training" counts: it is left out when they
    are the only modules in eval mode, and given as usual when any other module is.

    With ``unfreeze_at_epoch``, at the start of that epoch (0-based, as Lightning counts)
    the frozen layers train again and join the first optimizer as new parameter groups,
    from [`layerwise_lr`][auxtransfer.layerwise_lr]: ``lr`` for the address ``until``,
    times ``decay`` per address towards the stem. Build the optimizer over the trainable
    parameters only (``filter(lambda p: p.requires_grad, ...)``, as
    [`AuxTransferModule`][auxtransfer.lightning.AuxTransferModule] does). A scheduler made
    before then keeps its ``base_lrs`` for the first groups; ``MultiStepLR`` scales every
    group's current rate at its milestones, the new groups included.

    Resuming (``Trainer.fit(ckpt_path=...)``) restores what the run had: frozen before
    ``unfreeze_at_epoch``, trainable with the same groups, rates and momentum after it.
    Each ``fit`` freezes anew; ``validate`` and ``test`` leave the model as it is.
    ``unfreeze_at_epoch`` needs one process: under DDP, layers unfrozen after the model was
    wrapped would not be synchronised, and the fit is refused.

    Every argument is checked here; ``until`` and ``module``, which need the model, when
    the fit starts.

    Args:
        until: The last address to freeze (``"2.9"``, a block ``"2"``, ``"stem"``, a full
            module name); checked against the model's layer map when training starts.
        bn: ``"freeze"`` or ``"update"``, the BatchNorm policy of the frozen layers.
        module: The attribute of the LightningModule holding the model; ``""``: the
            LightningModule itself; None (default): ``model`` or ``backbone`` (Lightning's
            ``BackboneFinetuning`` convention), whichever it has (it must have one of them,
            or both as the same module).
        unfreeze_at_epoch: The epoch from which the frozen layers train again; None: they
            stay frozen.
        lr: The learning rate of the address ``until`` once unfrozen (needed with
            ``unfreeze_at_epoch``, refused without it).
        decay: Optional factor in (0, 1] per address towards the stem (only with
            ``unfreeze_at_epoch``).
    """

    def __init__(
        self,
        until: str,
        *,
        bn: BatchNormPolicy = DEFAULT_BN,
        module: str | None = None,
        unfreeze_at_epoch: int | None = None,
        lr: float | None = None,
        decay: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(until, str) or not until:
            raise TypeError(
                f"Expected `until` to be a layer address (str), but got {describe(until)}."
            )
        check_bn(bn)
        if module is not None and not isinstance(module, str):
            raise TypeError(
                f"Expected `module` to be an attribute name (str) or None, but got "
                f"{describe(module)}."
            )
        if lr is not None:
            lr = check_rate("lr", lr)
        if decay is not None:
            decay = _check_decay(decay)
        if unfreeze_at_epoch is not None:
            unfreeze_at_epoch = check_int("unfreeze_at_epoch", unfreeze_at_epoch, minimum=0)
            if lr is None:
                raise ValueError(
                    "Expected `lr`, the learning rate of the layers unfrozen at "
                    f"`unfreeze_at_epoch` ({unfreeze_at_epoch}), but got None."
                )
        else:
            for name, value in (("lr", lr), ("decay", decay)):
                if value is not None:
                    raise ValueError(
                        f"Expected `unfreeze_at_epoch` with `{name}` ({value}), which sets "
                        f"only the layers unfrozen then, but got None."
                    )
        self.until, self.bn, self.module = until, bn, module
        self.unfreeze_at_epoch, self.lr, self.decay = unfreeze_at_epoch, lr, decay
        self.summary: FreezeSummary | None = None
        self._unfrozen = False
        self._warning_filter: Any = None

    def model_of(self, pl_module: pl.LightningModule) -> nn.Module:
        """The submodule this callback freezes."""
        return self._find(pl_module)[1]

    def _find(self, pl_module: pl.LightningModule) -> tuple[str, nn.Module]:
        """The attribute name and the submodule this callback freezes."""
        owner = type(pl_module).__name__
        children = [name for name, _ in pl_module.named_children()]
        if self.module is None:
            found: dict[str, nn.Module] = {}
            for name in _DEFAULT_MODULES:
                candidate = getattr(pl_module, name, None)
                if isinstance(candidate, nn.Module):
                    found[name] = candidate
            if not found:
                raise ValueError(
                    f"Expected {owner} to hold its model as `model` or `backbone`, the "
                    f"attributes FreezeUntil's default `module` looks for, but it has neither "
                    f"(its submodules: {children}); name the one to freeze with `module=`."
                )
            if len({id(model) for model in found.values()}) > 1:
                raise ValueError(
                    f"Expected {owner} to hold one model as `model` or `backbone`, the "
                    f"attributes FreezeUntil's default `module` looks for, but it has both, "
                    f"two different modules; name the one to freeze with `module='model'` or "
                    f"`module='backbone'`."
                )
            return next(iter(found.items()))
        if not self.module:
            return owner, pl_module
        try:
            return self.module, pl_module.get_submodule(self.module)
        except AttributeError:
            raise ValueError(
                f"Expected `module` to name a submodule of {owner} (it has {children}), but "
                f"got {self.module!r}."
            ) from None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return  # validate / test / predict take the model as it is
        if self.unfreeze_at_epoch is not None and trainer.world_size > 1:
            raise ValueError(
                f"Expected one process for `unfreeze_at_epoch` ({self.unfreeze_at_epoch}), but "
                f"the trainer has {trainer.world_size}: DDP synchronises only the parameters "
                f"that train when it wraps the model, so layers unfrozen later would train "
                f"apart on each process. Freeze without unfreezing, or train on one device."
            )
        # A new fit starts frozen; a resumed one learns from its checkpoint whether the
        # layers were unfrozen (load_state_dict, after this).
        self._unfrozen = False
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        name, model = self._find(pl_module)
        layer_map(model).resolve(self.until, name="until")  # an unknown one names `until`
        self.summary = freeze_until(model, self.until, bn=self.bn)
        held = len(self.summary.frozen_norms) if self.bn == "freeze" else 0
        note = (
            f". These {held} stay in eval mode while the rest trains, by design; Lightning's "
            f'"module(s) in eval mode" warning is left out when they are the only ones'
            if held
            else ""
        )
        rank_zero_info(f"FreezeUntil on `{name}`: {self.summary}{note}.")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restarting and self._unfrozen:
            # Resumed after the unfreeze: setup froze again; the groups restored below hold
            # these parameters, which train again.
            unfreeze(self.model_of(pl_module))
        super().on_fit_start(trainer, pl_module)
        held = 0
        if self.summary is not None and self.bn == "freeze" and not self._unfrozen:
            held = len(self.summary.frozen_norms)
        self._leave_out_eval_mode_warning(held)

    def _leave_out_eval_mode_warning(self, held: int) -> None:
        """Ignore Lightning's eval-mode warning if it counts exactly the ``held`` norm layers.

        Lightning warns when training starts (after ``on_fit_start``, before
        ``on_train_start``) about every module in eval mode. With ``bn="freeze"`` the frozen
        norm layers are, on purpose, and the info line of ``freeze_before_training`` says
        so. The filter matches only the count of those layers: with any other module in
        eval mode the count differs and the warning is given. It is removed again in
        ``on_train_start`` (or ``teardown``, should training not start).
        """
        self._restore_warnings()
        if held:
            message = re.escape(_EVAL_MODE_WARNING.format(held))
            warnings.filterwarnings("ignore", message=message, category=PossibleUserWarning)
            self._warning_filter = warnings.filters[0]

    def _restore_warnings(self) -> None:
        entry, self._warning_filter = self._warning_filter, None
        filters = cast(list[Any], warnings.filters)  # a list, typed as a Sequence
        if entry is not None and entry in filters:
            filters.remove(entry)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore_warnings()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_warnings()

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._unfrozen or self.unfreeze_at_epoch is None or epoch < self.unfreeze_at_epoch:
            return
        if optimizer is not pl_module.trainer.optimizers[0]:
            return
        model = self.model_of(pl_module)
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        unfreeze(model)
        assert self.lr is not None  # checked in __init__
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        # The layers after `until` are in the optimizer already; another rate for them keeps
        # them out of the unfrozen layers' groups (and out of their "addresses").
        groups = layerwise_lr(
            model, until=self.until, lr=self.lr, new_lr=self.lr + 1.0, decay=self.decay
        )
        for group in groups:
            params = [p for p in group["params"] if id(p) not in trainable | in_optimizer]
            if params:
                optimizer.add_param_group({**group, "params": params})
        self._unfrozen = True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "unfrozen": self._unfrozen}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._unfrozen = bool(state_dict.get("unfrozen", False))
        super().load_state_dict(state_dict)


def _check_milestones(milestones: Any) -> list[int]:
    """``milestones`` as a list of epochs >= 1, or the error naming them."""
    if isinstance(milestones, (str, bytes, Tensor)) or not isinstance(milestones, Iterable):
        raise TypeError(
            f"Expected `milestones` to be a sequence of epochs (ints >= 1), but got "
            f"{describe(milestones)}."
        )
    # Any order, and an epoch twice multiplies by gamma twice, as MultiStepLR does.
    return [check_int("milestones", m, minimum=1) for m in milestones]


def _check_gamma(gamma: Any) -> float:
    """``gamma`` as a float in (0, 1], or the error naming it."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"Expected `gamma` to be a float in (0, 1], but got {describe(gamma)}.")
    if math.isnan(float(gamma)) or not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"Expected `gamma` to be a float in (0, 1], but got {gamma}.")
    return float(gamma)


def _check_partition_settings(
    num_classes: int,
    num_partitions: int | None,
    num_groups: int | None,
    partition: Any,
    seed: int,
) -> None:
    """The checks ``RandomPartitionHead`` makes of these settings, for ``weight=0``, where
    no head is built: a setting that would be refused with a head is refused without."""
    if partition is None:
        class_partition(
            num_classes, num_groups=num_groups or 2, num_partitions=num_partitions or 1, seed=seed
        )
        return
    table = as_partition(partition, num_classes=num_classes)
    if num_partitions is not None and num_partitions != table.shape[0]:
        raise ValueError(
            f"Expected `num_partitions` to match the {table.shape[0]} rows of `partition`, "
            f"but got {num_partitions}."
        )
    groups_in_table = int(table.max()) + 1
    if num_groups is not None and num_groups != groups_in_table:
        raise ValueError(
            f"Expected `num_groups` to match the {groups_in_table} groups of `partition`, "
            f"but got {num_groups}."
        )


def _classifier_classes(backbone: nn.Module, classifier: str | None) -> tuple[str, int] | None:
    """The backbone's classifier and the classes it outputs; None where none is found."""
    if classifier is None:
        try:
            classifier = find_classifier(backbone)
        except ValueError:
            return None  # checked on the first batch instead
    classifier, layer = named_classifier(backbone, classifier)
    return classifier, classifier_widths(layer, classifier)[1]


class AuxTransferModule(pl.LightningModule):
    """Train a backbone with a [`RandomPartitionHead`][auxtransfer.RandomPartitionHead] and
    the combined loss ``(1 - w) * CE(y) + w * CE(aux(y))``; ``weight=0``: the plain model
    and cross-entropy (the baseline, or a transfer run).

    Logs ``train/loss``, ``train/main_loss``, ``train/aux_loss`` (with an auxiliary head)
    and ``train/acc`` every step and epoch, ``val/loss`` and ``val/acc`` per epoch;
    accuracies through ``torchmetrics``. Optimises with SGD over the trainable parameters,
    at ``lr`` stepped down by ``gamma`` at each epoch of ``milestones``. Batches are
    ``(x, y, ...)`` with ``y`` class indices; the backbone may return a logits tensor, an
    output with ``.logits`` (Hugging Face) or a tuple starting with the logits.

    Every argument is checked here. ``num_classes`` must be what the backbone's classifier
    outputs (found by [`find_classifier`][auxtransfer.find_classifier], or named by
    ``classifier``); where no classifier is found and ``weight=0``, the logits' width is
    checked on every batch instead.

    The arguments but ``backbone`` are saved as hyperparameters (``module.hparams``, and in
    every checkpoint); a checkpoint holds the backbone's weights but not how to build it, so
    loading takes a backbone built as for training:
    ``AuxTransferModule.load_from_checkpoint(path, backbone=model)``.

    Args:
        backbone: Any classification model (timm, torchvision, Hugging Face, your own).
        num_classes: The number of classes the backbone outputs.
        weight: The auxiliary term's weight ``w`` (the paper's 0.4); 0: no auxiliary head.
        num_partitions: Auxiliary heads, each with its own partition (default 1, or the
            rows of ``partition``).
        num_groups: Groups of each drawn partition (2: binary).
        partition: A given ``[n, C]`` table of group ids instead of a drawn one
            ([`group_partition`][auxtransfer.group_partition]).
        seed: Seeds the partition and the auxiliary head.
        lr: SGD's learning rate.
        momentum: SGD's momentum.
        weight_decay: SGD's weight decay.
        nesterov: Nesterov momentum (needs ``momentum > 0``).
        milestones: Epochs (0-based, from 1) at whose start the rate is multiplied by
            ``gamma`` (an epoch given twice: twice, as ``MultiStepLR`` does).
        gamma: The factor of each milestone, in (0, 1].
        classifier: The name of the backbone's layer that outputs the class logits, where
            [`find_classifier`][auxtransfer.find_classifier] does not find it (as for
            [`RandomPartitionHead`][auxtransfer.RandomPartitionHead]).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        weight: float = 0.4,
        num_partitions: int | None = None,
        num_groups: int | None = None,
        partition: Tensor | None = None,
        seed: int = 0,
        lr: float = 0.1,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        nesterov: bool = False,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        classifier: str | None = None,
    ) -> None:
        super().__init__()
        # Every argument but the backbone, in hparams and checkpoints (load_from_checkpoint
        # takes the backbone again); Lightning reads them from this frame, as they came.
        self.save_hyperparameters(ignore=["backbone"])
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"Expected `backbone` to be an nn.Module, but got {describe(backbone)}."
            )
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.weight = check_unit_float("weight", weight)
        if num_partitions is not None:
            num_partitions = check_int("num_partitions", num_partitions, minimum=1)
        if num_groups is not None:
            num_groups = check_int("num_groups", num_groups, minimum=2)
        seed = check_seed("seed", seed)
        self.lr = check_rate("lr", lr)
        self.momentum, self.weight_decay = check_sgd(momentum=momentum, weight_decay=weight_decay)
        if not isinstance(nesterov, bool):
            raise TypeError(f"Expected `nesterov` to be a bool, but got {describe(nesterov)}.")
        if nesterov and self.momentum == 0:
            raise ValueError(
                f"Expected `momentum` > 0 with `nesterov=True`, but got {self.momentum}."
            )
        self.nesterov = nesterov
        self.milestones = _check_milestones(milestones)
        self.gamma = _check_gamma(gamma)
        found = _classifier_classes(backbone, classifier)
        if found is not None and found[1] != self.num_classes:
            raise ValueError(
                f"Expected `num_classes` to match the {found[1]} classes of the backbone's "
                f"classifier `{found[0]}`, but got {self.num_classes}."
            )
        self.model: nn.Module = backbone
        if self.weight > 0:
            self.model = RandomPartitionHead(
                backbone,
                num_partitions=num_partitions,
                num_groups=num_groups,
                partition=partition,
                seed=seed,
                classifier=classifier,
            )
        else:
            _check_partition_settings(self.num_classes, num_partitions, num_groups, partition, seed)
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=self.num_classes)

    @property
    def aux(self) -> bool:
        """Whether the model has an auxiliary head."""
        return isinstance(self.model, RandomPartitionHead)

    def forward(self, x: Tensor) -> Any:
        return self.model(x)

    def _logits(self, out: Any) -> Tensor:
        """The class logits of the model's output, checked against ``num_classes``."""
        logits = _main_logits(out)  # a tensor, a tuple, AuxOutput or a ModelOutput
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"Expected `num_classes` ({self.num_classes}) to be the width of the backbone's "
                f"logits, but got logits of shape {tuple(logits.shape)}."
            )
        return logits

    def _labels(self, batch: Sequence[Tensor]) -> Tensor:
        y = batch[1]
        if isinstance(y, Tensor) and not y.dtype.is_floating_point:
            check_labels("batch[1]", y, self.num_classes)
        return y

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], self._labels(batch)
        out = self.model(x)
        logits = self._logits(out)
        if self.aux:
            assert isinstance(self.model, RandomPartitionHead)
            # (logits, aux_logits) from an AuxOutput or a Hugging Face output alike.
            pair = (logits, out.aux_logits)
            terms = combined_loss_terms(pair, y, self.model.relabel(y), self.weight)
            loss = terms.total
            self.log("train/main_loss", terms.main, on_step=True, on_epoch=True)
            self.log("train/aux_loss", terms.aux, on_step=True, on_epoch=True)
        else:
            loss = F.cross_entropy(logits, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], self._labels(batch)
        logits = self._logits(self.model(x))
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_epoch=True)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(
            [p for p in self.parameters() if p.requires_grad],
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            nesterov=self.nesterov,
        )
        if not self.milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=self.milestones, gamma=self.gamma
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
