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

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import BaseFinetuning
from torch import Tensor, nn

from ._checks import check_int, check_seed, check_unit_float, describe
from .freezing import DEFAULT_BN, BatchNormPolicy, FreezeSummary, check_bn, freeze_until, unfreeze
from .heads import RandomPartitionHead
from .layers import layer_map
from .losses import combined_loss_terms
from .optim import MOMENTUM, WEIGHT_DECAY, check_rate, check_sgd, layerwise_lr

__all__ = ["AuxTransferModule", "FreezeUntil"]


class FreezeUntil(BaseFinetuning):
    """Freeze a LightningModule's model up to a layer address, with auxtransfer's BatchNorm
    policy; optionally train those layers again from an epoch on, at layer-wise rates.

    Before training (``setup``) this calls [`freeze_until`][auxtransfer.freeze_until] on
    the module's ``module`` submodule: the stem up to and including ``until`` gets
    ``requires_grad=False``, and with ``bn="freeze"`` its norm layers stay in eval mode
    through every ``model.train()`` Lightning calls, so their running statistics stay A's
    (Lightning's own ``BaseFinetuning.freeze`` turns ``track_running_stats`` off instead,
    which makes frozen norm layers normalise with each batch's statistics). ``bn="update"``
    freezes the parameters only, and the statistics follow the new data.

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

    Args:
        until: The last address to freeze (``"2.9"``, a block ``"2"``, ``"stem"``, a full
            module name); checked against the model's layer map when training starts.
        bn: ``"freeze"`` or ``"update"``, the BatchNorm policy of the frozen layers.
        module: The attribute of the LightningModule holding the model (``""``: the
            LightningModule itself).
        unfreeze_at_epoch: The epoch from which the frozen layers train again; None: they
            stay frozen.
        lr: The learning rate of the address ``until`` once unfrozen (needed with
            ``unfreeze_at_epoch``).
        decay: Optional factor in (0, 1] per address towards the stem.
    """

    def __init__(
        self,
        until: str,
        *,
        bn: BatchNormPolicy = DEFAULT_BN,
        module: str = "model",
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
        if not isinstance(module, str):
            raise TypeError(
                f"Expected `module` to be an attribute name (str), but got {describe(module)}."
            )
        if unfreeze_at_epoch is not None:
            unfreeze_at_epoch = check_int("unfreeze_at_epoch", unfreeze_at_epoch, minimum=0)
            if lr is None:
                raise ValueError(
                    "Expected `lr`, the learning rate of the layers unfrozen at "
                    f"`unfreeze_at_epoch` ({unfreeze_at_epoch}), but got None."
                )
        if lr is not None:
            lr = check_rate("lr", lr)
        self.until, self.bn, self.module = until, bn, module
        self.unfreeze_at_epoch, self.lr, self.decay = unfreeze_at_epoch, lr, decay
        self.summary: FreezeSummary | None = None
        self._unfrozen = False

    def model_of(self, pl_module: pl.LightningModule) -> nn.Module:
        """The submodule this callback freezes."""
        if not self.module:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            children = [name for name, _ in pl_module.named_children()]
            raise ValueError(
                f"Expected `module` to name a submodule of {type(pl_module).__name__} (it has "
                f"{children}), but got {self.module!r}."
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
        model = self.model_of(pl_module)
        layer_map(model).resolve(self.until, name="until")  # an unknown one names `until`
        self.summary = freeze_until(model, self.until, bn=self.bn)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restarting and self._unfrozen:
            # Resumed after the unfreeze: setup froze again; the groups restored below hold
            # these parameters, which train again.
            unfreeze(self.model_of(pl_module))
        super().on_fit_start(trainer, pl_module)

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


class AuxTransferModule(pl.LightningModule):
    """Train a backbone with a [`RandomPartitionHead`][auxtransfer.RandomPartitionHead] and
    the combined loss ``(1 - w) * CE(y) + w * CE(aux(y))``; ``weight=0``: the plain model
    and cross-entropy (the baseline, or a transfer run).

    Logs ``train/loss``, ``train/main_loss``, ``train/aux_loss`` (with an auxiliary head)
    and ``train/acc`` every step and epoch, ``val/loss`` and ``val/acc`` per epoch;
    accuracies through ``torchmetrics``. Optimises with SGD over the trainable parameters,
    at ``lr`` stepped down by ``gamma`` at each epoch of ``milestones``.

    Args:
        backbone: Any classification model (timm, torchvision, Hugging Face, your own).
        num_classes: The number of classes the backbone outputs.
        weight: The auxiliary term's weight ``w`` (the paper's 0.4); 0: no auxiliary head.
        num_partitions: Auxiliary heads, each with its own partition.
        num_groups: Groups of each drawn partition (2: binary).
        partition: A given ``[n, C]`` table of group ids instead of a drawn one
            ([`group_partition`][auxtransfer.group_partition]).
        seed: Seeds the partition and the auxiliary head.
        lr: SGD's learning rate.
        momentum: SGD's momentum.
        weight_decay: SGD's weight decay.
        nesterov: Nesterov momentum.
        milestones: Epochs (0-based) at whose start the rate is multiplied by ``gamma``.
        gamma: The factor of each milestone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        weight: float = 0.4,
        num_partitions: int = 1,
        num_groups: int | None = None,
        partition: Tensor | None = None,
        seed: int = 0,
        lr: float = 0.1,
        momentum: float = MOMENTUM,
        weight_decay: float = WEIGHT_DECAY,
        nesterov: bool = False,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.weight = check_unit_float("weight", weight)
        num_classes = check_int("num_classes", num_classes, minimum=2)
        check_seed("seed", seed)
        self.lr = check_rate("lr", lr)
        self.momentum, self.weight_decay = check_sgd(momentum=momentum, weight_decay=weight_decay)
        self.nesterov = nesterov
        self.model: nn.Module = backbone
        if self.weight > 0:
            self.model = RandomPartitionHead(
                backbone,
                num_partitions=None if partition is not None else num_partitions,
                num_groups=num_groups,
                partition=partition,
                seed=seed,
            )
        self.milestones = [check_int("milestones", m, minimum=1) for m in milestones]
        self.gamma = gamma
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    @property
    def aux(self) -> bool:
        """Whether the model has an auxiliary head."""
        return isinstance(self.model, RandomPartitionHead)

    def forward(self, x: Tensor) -> Any:
        return self.model(x)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        out = self.model(x)
        if self.aux:
            assert isinstance(self.model, RandomPartitionHead)
            terms = combined_loss_terms(out, y, self.model.relabel(y), self.weight)
            loss, logits = terms.total, out.logits
            self.log("train/main_loss", terms.main, on_step=True, on_epoch=True)
            self.log("train/aux_loss", terms.aux, on_step=True, on_epoch=True)
        else:
            logits = out
            loss = F.cross_entropy(logits, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        out = self.model(x)
        logits = out.logits if self.aux else out
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
