"""Every setting of a run, with its one default and its one check.

[`RunConfig`][auxtransfer.experiments.settings.RunConfig] holds the settings of one run
(its ``config.json``); [`RunOptions`][auxtransfer.experiments.settings.RunOptions] those
every run of a plan shares, with RunConfig's defaults;
[`Schedule`][auxtransfer.experiments.settings.Schedule] is a step schedule of learning
rates. The defaults the library shares with the application (the BatchNorm policy, SGD's
momentum and weight decay) come from the library itself, so that the Python API, the
command line and the Lightning integration agree. This module reads no data and builds no
model: the report reads run folders with it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_int, check_seed, describe
from ..freezing import DEFAULT_BN, check_bn
from ..optim import MOMENTUM, WEIGHT_DECAY, check_sgd
from .rundir import as_json

__all__ = ["LrTable", "RunConfig", "RunOptions", "Schedule", "check_fields"]


#: ``((from_epoch, rates), ...)``: from epoch ``m`` on (1-based; the first entry is epoch 1),
#: the learning rate of each role of parameter group: one role for a pre-training, two
#: (kept layers, new layers) for a transfer.
LrTable = tuple[tuple[int, tuple[float, ...]], ...]


@dataclass(frozen=True)
class Schedule:
    """A step schedule: ``epochs``, the epochs whose start changes the rates, and the rates.

    ``milestones`` are "from epoch m on" (1-based): ``(126, 151)`` trains epochs 1-125 at
    the first rates, 126-150 at the second, 151-175 at the third. ``rates`` holds one tuple
    per role of parameter group, with one rate per phase (``len(milestones) + 1``).

    Args:
        epochs: Number of epochs, at least 1.
        milestones: Increasing epochs in ``[2, epochs]``.
        rates: Per role, the rate of each phase.

    Examples:
        >>> s = Schedule(100, (51, 76), ((0.01, 0.01, 0.001), (0.1, 0.01, 0.001)))
        >>> s.lr_table
        ((1, (0.01, 0.1)), (51, (0.01, 0.01)), (76, (0.001, 0.001)))
        >>> s.scaled(40).milestones
        (21, 31)
    """

    epochs: int
    milestones: tuple[int, ...]
    rates: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        epochs = check_int("epochs", self.epochs, minimum=1)
        milestones = tuple(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones) or (
            list(milestones) != sorted(set(milestones))
            or any(not 1 < m <= epochs for m in milestones)
        ):
            raise ValueError(
                f"Expected `milestones` to be increasing epochs in [2, {epochs}] (the epochs "
                f"from which on the next rates apply), but got {list(milestones)}."
            )
        rates = tuple(tuple(float(r) for r in role) for role in self.rates)
        if not rates:
            raise ValueError(
                "Expected `rates` to hold the rates of at least one role, but got none."
            )
        for role in rates:
            if len(role) != len(milestones) + 1:
                raise ValueError(
                    f"Expected one rate per phase ({len(milestones) + 1} with milestones "
                    f"{list(milestones)}), but got {len(role)}: {list(role)}."
                )
            if any(not math.isfinite(r) or r < 0 for r in role):
                raise ValueError(f"Expected rates to be finite and >= 0, but got {list(role)}.")
        object.__setattr__(self, "epochs", epochs)
        object.__setattr__(self, "milestones", milestones)
        object.__setattr__(self, "rates", rates)

    @property
    def lr_table(self) -> tuple[tuple[int, tuple[float, ...]], ...]:
        """``((from_epoch, rates of every role), ...)``, as ``RunConfig.lr_table`` takes it."""
        starts = (1, *self.milestones)
        return tuple(
            (start, tuple(role[phase] for role in self.rates)) for phase, start in enumerate(starts)
        )

    @classmethod
    def from_table(cls, table: Any, *, epochs: int, roles: int | None = None) -> Schedule:
        """The schedule of a table ``((from_epoch, (rate of each role, ...)), ...)`` (a
        run's ``lr_table``, as ``config.json`` holds it), or the error naming ``lr_table``."""
        expected = (
            "((from_epoch, (rate, ...)), ...) with from_epoch 1 first, increasing epochs up to "
            f"{epochs}, and the same number of finite rates >= 0 in every entry"
        )
        if not isinstance(table, Sequence) or isinstance(table, str) or not table:
            raise TypeError(f"Expected `lr_table` to be {expected}, but got {table!r}.")
        checked = []
        for entry in table:
            if (
                not isinstance(entry, Sequence)
                or len(entry) != 2
                or not isinstance(entry[1], Sequence)
                or isinstance(entry[0], bool)
                or not isinstance(entry[0], numbers.Integral)
                or any(isinstance(r, bool) or not isinstance(r, numbers.Real) for r in entry[1])
            ):
                raise TypeError(
                    f"Expected `lr_table` to be {expected}, but got the entry {entry!r}."
                )
            checked.append((int(entry[0]), tuple(float(r) for r in entry[1])))
        starts = [start for start, _ in checked]
        widths = {len(rates) for _, rates in checked}
        if (
            starts[0] != 1
            or starts != sorted(set(starts))
            or starts[-1] > epochs
            or len(widths) != 1
            or 0 in widths
            or any(not math.isfinite(r) or r < 0 for _, rates in checked for r in rates)
        ):
            raise ValueError(f"Expected `lr_table` to be {expected}, but got {table!r}.")
        if roles is not None and widths != {roles}:
            raise ValueError(
                f"Expected `lr_table` to give {roles} rate(s) per entry (one per group role), but "
                f"it gives {widths.pop()}."
            )
        return cls(
            epochs, tuple(starts[1:]), tuple(zip(*(rates for _, rates in checked), strict=True))
        )

    def rates_at(self, epoch: int) -> tuple[float, ...]:
        """The rate of every role in ``epoch`` (1-based): that of the last phase started.

        Examples:
            >>> FINETUNE = Schedule(100, (51, 76), ((0.01, 0.01, 0.001), (0.1, 0.01, 0.001)))
            >>> FINETUNE.rates_at(50), FINETUNE.rates_at(51), FINETUNE.rates_at(100)
            ((0.01, 0.1), (0.01, 0.01), (0.001, 0.001))
        """
        phase = sum(m <= epoch for m in self.milestones)
        return tuple(role[phase] for role in self.rates)

    def scaled(self, epochs: int) -> Schedule:
        """The same schedule over ``epochs``: each milestone ``m`` of ``E`` epochs moves to
        ``1 + round((m - 1) / E * epochs)``, at the same fraction of the run. Phases that
        shrink to nothing are dropped (two drops landing on one epoch keep the later rates;
        one past the end never comes)."""
        epochs = check_int("epochs", epochs, minimum=1)
        if epochs == self.epochs:
            return self
        starts = [1] + [
            1 + math.floor((m - 1) / self.epochs * epochs + 0.5) for m in self.milestones
        ]
        phases: dict[int, int] = {}  # start epoch -> phase, later phases win
        for phase, start in enumerate(starts):
            if start <= epochs:
                phases[start] = phase
        kept = [phases[start] for start in sorted(phases)]
        return Schedule(
            epochs,
            tuple(sorted(phases))[1:],
            tuple(tuple(role[p] for p in kept) for role in self.rates),
        )

    def adjusted(
        self,
        *,
        epochs: int | None = None,
        milestones: Sequence[int] | None = None,
        rates: Sequence[Sequence[float] | None] | None = None,
    ) -> Schedule:
        """This schedule with some parts replaced.

        New ``epochs`` alone scale the milestones (``scaled``); with ``milestones`` given
        too, those are taken as they are. ``rates`` replaces the rates of each role that is
        not None (before scaling).
        """
        new = self.rates
        if rates is not None:
            if len(rates) != len(self.rates):
                raise ValueError(
                    f"Expected rates for {len(self.rates)} role(s), but got {len(rates)}."
                )
            new = tuple(
                tuple(old) if given is None else tuple(given)
                for old, given in zip(self.rates, rates, strict=True)
            )
        if milestones is not None:
            return Schedule(self.epochs if epochs is None else epochs, tuple(milestones), new)
        base = Schedule(self.epochs, self.milestones, new)
        return base if epochs is None else base.scaled(epochs)


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in allowed:
            raise ValueError(f"Expected `{name}` to be one of {allowed}, but got {value!r}.")
        return value

    return check


#: The one check of each setting that is checked on its own, by field name.
_FIELD_CHECKS: dict[str, Callable[[Any], Any]] = {
    "batch_size": lambda v: check_int("batch_size", v, minimum=1),
    "num_workers": lambda v: check_int("num_workers", v, minimum=0),
    "seed": lambda v: check_seed("seed", v),
    "partition_seed": lambda v: v is None or check_seed("partition_seed", v),
    "bn": check_bn,
    "transfer_weights": _choice("transfer_weights", ("best", "last")),
    "side": _choice("side", ("all", "A", "B")),
    "aux_labels": _choice("aux_labels", ("random", "coarse")),
    "pad": lambda v: check_int("pad", v, minimum=0),
    "flip": lambda v: _check_bool("flip", v),
}


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, but got {describe(value)}.")
    return value


def check_fields(settings: Any) -> None:
    """Check each field of a ``RunConfig`` or ``RunOptions`` that has a check of its own
    (and SGD's momentum and weight decay together)."""
    names = {f.name for f in dataclasses.fields(settings)}
    for name, check in _FIELD_CHECKS.items():
        if name in names:
            check(getattr(settings, name))
    check_sgd(momentum=settings.momentum, weight_decay=settings.weight_decay)


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one run; saved as ``config.json``.

    The learning rate follows ``lr_table`` when it is given: ``((from_epoch, rates), ...)``,
    from epoch ``m`` on (1-based) the rate of each role of parameter group, one role for a
    run from scratch, two (kept layers, new layers) for a transfer run. The paper's
    fine-tuning is ``((1, (0.01, 0.1)), (51, (0.01, 0.01)), (76, (0.001, 0.001)))``.
    Without a table, ``milestones`` are the epochs from which on the rate is multiplied by
    ``gamma`` once more: the paper's pre-training is ``epochs=175, lr=0.1,
    milestones=(126, 151)``. Either way ``schedule`` is the run's
    [`Schedule`][auxtransfer.experiments.settings.Schedule], the one form the training loop
    reads. ``binary_weight > 0`` adds a
    [`RandomPartitionHead`][auxtransfer.RandomPartitionHead] learning auxiliary labels:
    with ``aux_labels="random"`` (the paper's), ``num_partitions`` random balanced
    partitions into ``num_groups`` groups (2: binary) seeded by ``partition_seed``; with
    ``aux_labels="coarse"``, one partition given by the data's own coarse labels (CIFAR-100's
    20 superclasses: ``num_groups``), those of the run's classes, renumbered
    ([`run_partition_for`][auxtransfer.experiments.sources.run_partition_for] makes it).

    ``pad`` and ``flip`` augment training images given as tensors
    ([`DeviceBatches`][auxtransfer.experiments.batches.DeviceBatches]): a random crop of the
    image zero-padded by ``pad`` pixels (0: none) and random horizontal flips, CIFAR's 4 and
    on by default; data given as datasets (ImageNet) augment in their own transforms, and
    take neither. ``split_seed``, ``side`` (``"A"``, ``"B"`` or ``"all"``) and
    ``per_class`` record which data the run saw; ``smoke`` marks a run that is not a
    result; ``num_workers`` is the number of ``DataLoader`` workers for data given as a
    dataset; ``condition`` labels the
    experimental condition (``"baseline"``, ``"binary"``, ``"w0.4"``, ...), the same on a
    pre-training and the transfers from it, so that ``config.json`` alone tells the runs of
    a sweep apart. ``transfer_from`` makes a
    transfer run: it starts from the finished run in that directory (a relative path is taken
    from this run's directory, e.g. ``"../pretrain"``), its ``transfer_weights``
    (``"best"`` or ``"last"``) with a fresh classifier; ``reset`` re-initialises everything
    after that address (``"0"``: nothing is kept), ``freeze`` freezes everything up to and
    including that address (``"0"``: nothing) with the BatchNorm policy ``bn``. Its kept
    layers are the stem up to ``reset`` (without one, everything but the classifier).
    """

    model: str
    num_classes: int
    epochs: int
    lr: float = 0.1
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    momentum: float = MOMENTUM
    weight_decay: float = WEIGHT_DECAY
    nesterov: bool = False
    batch_size: int = 64
    binary_weight: float = 0.0
    num_partitions: int = 1
    num_groups: int = 2
    aux_labels: str = "random"
    partition_seed: int = 0
    seed: int = 0
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    phase: str = "train"
    lr_table: tuple[tuple[int, tuple[float, ...]], ...] = ()
    split_seed: int | None = None
    side: str = "all"
    per_class: int | None = None
    transfer_from: str | None = None
    transfer_weights: str = "best"
    freeze: str | None = None
    reset: str | None = None
    bn: str = DEFAULT_BN
    smoke: bool = False
    num_workers: int = 0
    condition: str = ""
    pad: int = 4
    flip: bool = True

    def check(self, *, transfer: bool | None = None) -> None:
        """Check every setting on its own and against the others (not the model name, the
        data or the run it transfers from: ``train_run`` checks those). ``transfer``:
        whether the run transfers from another (default: ``transfer_from`` is given)."""
        transfer = self.transfer_from is not None if transfer is None else transfer
        check_int("epochs", self.epochs, minimum=1)
        check_fields(self)
        # The one check of the rates and their epochs: the schedule's.
        if self.lr_table:
            Schedule.from_table(self.lr_table, epochs=self.epochs, roles=2 if transfer else None)
        elif transfer:
            raise ValueError(
                "Expected `lr_table` with two rates per entry (kept layers, new layers) for a "
                "transfer run (`transfer_from`), but got none."
            )
        else:
            self.schedule  # noqa: B018  (its check: the milestones, the rates lr * gamma**k)
        if not transfer and (self.freeze is not None or self.reset is not None):
            raise ValueError(
                f"Expected `transfer_from` with `freeze` or `reset` (they act on transferred "
                f"weights), but got freeze={self.freeze!r}, reset={self.reset!r} and no "
                f"`transfer_from`."
            )
        if self.num_groups < 2 or self.num_groups > self.num_classes:
            raise ValueError(
                f"Expected `num_groups` to be from 2 to `num_classes` ({self.num_classes}), "
                f"but got {self.num_groups}."
            )
        coarse = self.aux_labels == "coarse" and self.binary_weight > 0
        if coarse and self.num_partitions != 1:
            raise ValueError(
                f"Expected `num_partitions` to be 1 with aux_labels='coarse' (the data has one "
                f"grouping), but got {self.num_partitions}."
            )

    @property
    def schedule(self) -> Schedule:
        """The run's learning rates as a ``Schedule``: that of ``lr_table``, else ``lr``
        times ``gamma`` once more from each of the ``milestones`` on (one role)."""
        if self.lr_table:
            return Schedule.from_table(self.lr_table, epochs=self.epochs)
        steps = range(len(self.milestones) + 1)
        return Schedule(
            self.epochs, self.milestones, (tuple(self.lr * self.gamma**k for k in steps),)
        )

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-able values (``milestones`` as a list), as saved."""
        data = dataclasses.asdict(self)
        return dict(as_json(data))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting that has a default, with it, as JSON-able values: what a
        ``config.json`` written before a setting existed means by leaving it out."""
        found: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                found[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                found[f.name] = f.default_factory()
        return dict(as_json(found))


@dataclass(frozen=True)
class RunOptions:
    """Settings every run of a plan shares.

    Args:
        model: A timm model name (the CIFAR models are registered by ``auxtransfer.models``).
        model_kwargs: Passed to ``timm.create_model`` (``{"depth": 10, "growth_rate": 4}``
            makes the smoke runs' tiny DenseNet).
        batch_size: Images per optimizer step on each process (a run under ``torchrun``
            with n processes steps on n times as many).
        weight_decay: SGD weight decay (the reference DenseNet code's 1e-4).
        momentum: SGD momentum (the paper's 0.9).
        nesterov: Nesterov momentum.
        seed: Replication ``r`` trains with ``seed + r``.
        partition_seed: The partition seed of every binary run; None: replication ``r``
            draws its own, ``seed + r``.
        transfer_weights: ``"best"`` (the best epoch on A's test set, as the paper) or
            ``"last"``.
        bn: BatchNorm policy of frozen layers, ``"freeze"`` (the library's default) or
            ``"update"`` (what the paper's code most likely had, see ``docs/freezing.md``:
            the paper's setups take it, ``protocols.PAPER_OPTIONS``).
        amp: bf16 autocast on CUDA.
        channels_last: Channels-last memory format.
        compile: ``torch.compile`` the model.
        smoke: Mark every run as a smoke run, not a result.
        num_workers: ``DataLoader`` workers of data given as datasets (ImageNet); part of
            a run's settings, since the workers are seeded.
        pad: Zero padding of the random crop of training images given as tensors (0: no
            crop).
        flip: Random horizontal flips of training images given as tensors (off for data
            whose mirror image is another thing, such as digits).
    """

    # Every default but the model's is RunConfig's: one definition of each.
    model: str = "cifar_densenet_bc_100"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = RunConfig.batch_size
    weight_decay: float = RunConfig.weight_decay
    momentum: float = RunConfig.momentum
    nesterov: bool = RunConfig.nesterov
    seed: int = RunConfig.seed
    partition_seed: int | None = None
    transfer_weights: str = RunConfig.transfer_weights
    bn: str = RunConfig.bn
    amp: bool = RunConfig.amp
    channels_last: bool = RunConfig.channels_last
    compile: bool = RunConfig.compile
    smoke: bool = RunConfig.smoke
    num_workers: int = RunConfig.num_workers
    pad: int = RunConfig.pad
    flip: bool = RunConfig.flip

    def __post_init__(self) -> None:
        check_fields(self)
