"""The paper's experiments as plans of runs.

Each builder returns a [`Plan`][auxtransfer.experiments.plan.Plan]. Every schedule,
weight and count is a parameter whose default is the paper's value for DenseNet-BC-100 on
CIFAR-100 (``PAPER.md``); where the paper does not give one, the docstring says what was
chosen. A ``Setup`` replaces some of those defaults for another network or data set:
``WRN_CIFAR`` (WRN-28-10, Fig. 6) and ``DENSENET121_IMAGENET`` (DenseNet-121 on
ImageNet-100, Fig. 15); ``build(experiment, setup=...)`` builds an experiment's plan from a
setup's defaults.

A *test* is one A/B class split (``splits``) and one replication on it
(``replications``); per test every condition pre-trains on A once, and every transfer of
that condition starts from that pre-training. Run ids read
``split<seed>[/rep<r>]/<condition>/<step>``: ``split3/binary/pretrain``,
``split3/binary/freeze-2.9``, ``split0/rep4/baseline/longtail``. Replication ``r`` trains
with seed ``options.seed + r`` and, unless ``options.partition_seed`` fixes it, draws its
own partition with the same number; the conditions of one test share it, so they start from
the same weights and see the same data (the paired design).

Schedules are [`Schedule`][auxtransfer.experiments.settings.Schedule] objects: the rates
of each role of parameter group (one for a pre-training; kept and new layers for a
transfer) in each phase between the milestones. ``Schedule.scaled(epochs)`` keeps the
milestones at the same fractions of the run.
"""

from __future__ import annotations

import inspect
import posixpath
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .._checks import check_int, check_seed, check_unit_float, describe
from .plan import Plan, PlannedRun
from .settings import RunConfig, RunOptions, Schedule, rates_at

__all__ = [
    "AUX_KINDS",
    "DENSENET121_IMAGENET",
    "DENSENET_CIFAR",
    "EXPERIMENTS",
    "FINETUNE_40",
    "FINETUNE_100",
    "FREEZE_AT",
    "IMAGENET_FINETUNE",
    "IMAGENET_PRETRAIN",
    "PAPER_OPTIONS",
    "PRETRAIN",
    "RESET_100",
    "RESET_AT",
    "SMOKE_EPOCHS",
    "SMOKE_OPTIONS",
    "WEIGHTS",
    "WRN_CIFAR",
    "WRN_FREEZE_AT",
    "WRN_RESET_AT",
    "RunOptions",
    "Schedule",
    "Setup",
    "aux_labels",
    "build",
    "defaults",
    "freeze",
    "heads",
    "long_tail",
    "paired",
    "rates_at",
    "reset",
    "smoke_parameters",
    "weight_sweep",
]

#: The data's 100 classes (CIFAR-100, ImageNet-100) split in two halves of 50 classes.
NUM_CLASSES = 100
SIDE_CLASSES = NUM_CLASSES // 2


#: Pre-training on A: 175 epochs, 0.1 / 0.01 / 0.001 from epochs 1 / 126 / 151.
PRETRAIN = Schedule(175, (126, 151), ((0.1, 0.01, 0.001),))
#: Fine-tuning on B for 100 epochs (the paired runs, Figs. 4, 5, 10): drops at 51 and 76,
#: the transferred body 0.01 / 0.01 / 0.001, the new classifier 0.1 / 0.01 / 0.001.
FINETUNE_100 = Schedule(100, (51, 76), ((0.01, 0.01, 0.001), (0.1, 0.01, 0.001)))
#: Fine-tuning on B for 40 epochs (Exp. 1 and the long tail): drops at 26 and 36.
FINETUNE_40 = Schedule(40, (26, 36), ((0.01, 0.01, 0.001), (0.1, 0.01, 0.001)))
#: Exp. 2: the kept layers from 0.01, the re-initialised ones from 0.1; 100 epochs, drops
#: at 51 and 76.
RESET_100 = FINETUNE_100

#: Exp. 1's freeze points, from nothing frozen (``"0"``) to all three blocks (``"3"``).
#: The figures' tick labels are not in the paper's text: these cover every half block,
#: and the last layers of block 3 more densely, where the paper reports the error rising.
FREEZE_AT = ("0", "1.8", "1", "2.8", "2", "3.4", "3.8", "3.12", "3.14", "3")
#: Exp. 2's points, from block 1 kept (``"1"``) to all three blocks kept (``"3"``);
#: the paper's text does not give the ticks in between.
RESET_AT = ("1", "2.8", "2", "3.8", "3")
#: Fig. 4's binary weights (the paper's text does not list them; it chose 0.4).
WEIGHTS = (0.0, 0.2, 0.4, 0.6, 0.8)


#: The paper's options, where they are not RunOptions' own defaults: frozen layers'
#: BatchNorm statistics follow B (``bn="update"``), which the paper's code most likely did
#: (``docs/freezing.md``). Every setup of the paper starts from these.
PAPER_OPTIONS = RunOptions(bn="update")
#: The smoke runs' model and batch: a DenseNet-BC of depth 10 and growth rate 4 (one layer
#: per block; addresses ``stem, 1.1, 2.1, 3.1, head``), 16 images per step.
SMOKE_OPTIONS = replace(
    PAPER_OPTIONS, model_kwargs={"depth": 10, "growth_rate": 4}, batch_size=16, smoke=True
)
#: Epochs of every smoke run (the schedules scaled to them).
SMOKE_EPOCHS = 2


@dataclass(frozen=True)
class _Condition:
    name: str
    binary_weight: float
    num_partitions: int = 1
    num_groups: int = 2
    aux_labels: str = "random"


@dataclass(frozen=True)
class _Transfer:
    step: str
    freeze: str | None = None
    reset: str | None = None
    per_class: int | None = None


def paired(
    *,
    splits: int | Sequence[int] = 2,
    replications: int = 1,
    binary_weight: float = 0.4,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_100,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Baseline and binary on the identical split, each fine-tuned on B (Fig. 5).

    Per test: ``baseline/pretrain`` and ``binary/pretrain`` (weight ``binary_weight``) on
    A, then ``baseline/finetune`` and ``binary/finetune``: all layers on B, a new
    classifier, the body at 0.01 / 0.01 / 0.001 and the classifier from 0.1.

    Args:
        splits: The number of A/B splits (seeds ``0 .. n-1``), or the split seeds.
        replications: Tests per split.
        binary_weight: The binary condition's loss weight (the paper's 0.4).
        pretrain: The schedule on A.
        transfer: The schedule on B (roles: body, new classifier).
        options: What every run shares.
    """
    conditions = _baseline_and_binary(binary_weight)
    return _plan(
        splits, replications, conditions, [_Transfer("finetune")], pretrain, transfer, options
    )


def freeze(
    *,
    splits: int | Sequence[int] = 2,
    replications: int = 1,
    binary_weight: float = 0.4,
    freeze_at: Sequence[str] = FREEZE_AT,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_40,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Exp. 1 (Figs. 2, 7, 9): freeze up to and including each address, fine-tune the rest.

    Per test and condition (baseline, binary): one pre-training, then ``freeze-<N>`` for
    every ``N`` of ``freeze_at`` (``"0"``: nothing frozen): A's weights, a new classifier,
    40 epochs, drops at 26 and 36, the trainable body at 0.01 / 0.01 / 0.001, the classifier
    from 0.1. The paper's figure is the mean of two tests (``splits=2``).
    """
    _check_addresses(options, freeze_at, "freeze_at", zero=True)
    conditions = _baseline_and_binary(binary_weight)
    steps = [_Transfer(f"freeze-{address}", freeze=address) for address in freeze_at]
    return _plan(splits, replications, conditions, steps, pretrain, transfer, options)


def reset(
    *,
    splits: int | Sequence[int] = 1,
    replications: int = 1,
    binary_weight: float = 0.4,
    reset_at: Sequence[str] = RESET_AT,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = RESET_100,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Exp. 2 (Figs. 3, 8): keep the layers up to each address, re-initialise the rest.

    ``reset-<N>``: layers up to and including ``N`` keep A's weights and start at 0.01,
    every later layer is re-initialised (the model's own initialisation) and starts at
    0.1; 100 epochs, drops at 51 and 76. The paper shows one test of the baseline; the
    binary condition runs too (select runs with ``--run``).
    """
    _check_addresses(options, reset_at, "reset_at", zero=True)
    conditions = _baseline_and_binary(binary_weight)
    steps = [_Transfer(f"reset-{address}", reset=address) for address in reset_at]
    return _plan(splits, replications, conditions, steps, pretrain, transfer, options)


def weight_sweep(
    *,
    splits: int | Sequence[int] = 1,
    replications: int = 1,
    weights: Sequence[float] = WEIGHTS,
    partitions: int = 1,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_100,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Fig. 4: pre-train with each binary weight, fine-tune each on B (as ``paired``).

    Condition ``w<b>`` pre-trains with binary weight ``b`` (``w0`` is the baseline). With
    ``partitions=n`` the weight ``b`` is shared by ``n`` heads, each with its own partition
    (``b / n`` each): one of the two readings of Fig. 10 (``heads`` is the other).
    Unlike the paper, which drew a new split per run, all weights share each split.
    """
    check_int("partitions", partitions, minimum=1)
    if not weights:
        raise ValueError("Expected `weights` to hold at least one binary weight, but got none.")
    checked = [check_unit_float("weights", w) for w in weights]
    _check_unique("weights", [f"{w:g}" for w in checked])
    conditions = [_Condition(f"w{w:g}", w, partitions) for w in checked]
    return _plan(
        splits, replications, conditions, [_Transfer("finetune")], pretrain, transfer, options
    )


def heads(
    *,
    splits: int | Sequence[int] = 1,
    replications: int = 1,
    head_weight: float = 0.1,
    heads: Sequence[int] = (1, 2, 4),
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_100,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Fig. 10: ``n`` binary heads, each with its own partition, for each ``n`` of ``heads``.

    The figure's "B = b x n" is read here as: each of the ``n`` heads has weight ``b``
    (``head_weight``), so the binary terms weigh ``b * n`` together, shared equally. The
    wording also allows the other reading, a total ``b`` shared by the ``n`` heads: that
    is ``weight_sweep(weights=[b], partitions=n)``. Condition ``b<b>x<n>``, beside a
    ``baseline`` without binary head on the same splits; the values of ``b`` and ``n`` are
    not in the paper's text (``0.1 x 4`` sums to its chosen 0.4).
    """
    b = check_unit_float("head_weight", head_weight)
    if not heads:
        raise ValueError("Expected `heads` to hold at least one number of heads, but got none.")
    counts = [check_int("heads", n, minimum=1) for n in heads]
    _check_unique("heads", counts)
    conditions = []
    for n in counts:
        total = round(b * n, 12)
        if total > 1:
            raise ValueError(
                f"Expected `head_weight` x `heads` to be at most 1 (the binary terms' total "
                f"weight), but {b:g} x {n} = {total:g}."
            )
        conditions.append(_Condition(f"b{b:g}x{n}", total, n))
    conditions.insert(0, _Condition("baseline", 0.0, 1))
    return _plan(
        splits, replications, conditions, [_Transfer("finetune")], pretrain, transfer, options
    )


def long_tail(
    *,
    splits: int | Sequence[int] = 2,
    replications: int = 7,
    binary_weight: float = 0.4,
    per_class: int = 60,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_40,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Table 1 (Fig. 14): B cut to ``per_class`` training images per class.

    Per test and condition: a pre-training on all of A, then ``longtail``: all of A's
    weights but the classifier, fine-tuned 40 epochs on B's ``per_class`` images per class
    (drawn with the replication's seed, the same for both conditions), drops at 26 and 36.
    Two splits of seven replications, as Table 1; each replication pre-trains anew.
    """
    check_int("per_class", per_class, minimum=1)
    conditions = _baseline_and_binary(binary_weight)
    steps = [_Transfer("longtail", per_class=per_class)]
    return _plan(splits, replications, conditions, steps, pretrain, transfer, options)


#: The auxiliary-label kinds of ``aux_labels``: the paper's random binary partition, a
#: random balanced partition into ``num_groups`` groups, and the data's coarse labels.
AUX_KINDS = ("binary", "random", "coarse")
#: CIFAR-100's superclasses: the coarse labels' group count, and ``aux_labels``' K.
COARSE_GROUPS = 20


def aux_labels(
    *,
    splits: int | Sequence[int] = 2,
    replications: int = 1,
    aux: Sequence[str] = AUX_KINDS,
    aux_weight: float = 0.4,
    num_groups: int = COARSE_GROUPS,
    pretrain: Schedule = PRETRAIN,
    transfer: Schedule = FINETUNE_100,
    options: RunOptions = PAPER_OPTIONS,
) -> Plan:
    """Kinds of auxiliary labels against the baseline on the identical split (as ``paired``).

    Per test, beside ``baseline``, one pre-training on A per kind of ``aux``, each with loss
    weight ``aux_weight``, then a fine-tuning of all layers on B (the paper's 100 epochs):

    - ``binary``: the paper's random balanced binary partition of A's classes;
    - ``random<K>``: a random balanced partition into ``K = num_groups`` groups (20 by
      default, the superclass count; ``random20``);
    - ``coarse``: the data's own coarse labels of A's classes (CIFAR-100's 20 superclasses,
      those A's 50 classes fall in, renumbered; rarely all 20 with five classes each).

    The conditions of a test share the split, the seed (weights and data order) and, for
    the random kinds, the partition seed. Not in the paper: it asked the binary question
    only.
    """
    weight = check_unit_float("aux_weight", aux_weight)
    if weight == 0:
        raise ValueError(
            "Expected `aux_weight` to be above 0 (the auxiliary heads' loss weight), but got 0."
        )
    if isinstance(aux, str) or not aux or any(kind not in AUX_KINDS for kind in aux):
        raise ValueError(
            f"Expected `aux` to be kinds of {', '.join(AUX_KINDS)}, but got {describe(aux)}."
        )
    _check_unique("aux", list(aux))
    num_groups = check_int("num_groups", num_groups, minimum=3 if "random" in aux else 2)
    if num_groups > SIDE_CLASSES:
        raise ValueError(
            f"Expected `num_groups` to be at most the {SIDE_CLASSES} classes of A, but got "
            f"{num_groups}."
        )
    made = {
        "binary": _Condition("binary", weight),
        "random": _Condition(f"random{num_groups}", weight, num_groups=num_groups),
        "coarse": _Condition("coarse", weight, num_groups=COARSE_GROUPS, aux_labels="coarse"),
    }
    conditions = [_Condition("baseline", 0.0), *(made[kind] for kind in AUX_KINDS if kind in aux)]
    return _plan(
        splits, replications, conditions, [_Transfer("finetune")], pretrain, transfer, options
    )


#: The experiments by name.
EXPERIMENTS: dict[str, Callable[..., Plan]] = {
    "paired": paired,
    "freeze": freeze,
    "reset": reset,
    "weight-sweep": weight_sweep,
    "heads": heads,
    "long-tail": long_tail,
    "aux-labels": aux_labels,
}


def _signature(experiment: str) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(EXPERIMENTS[experiment]).parameters


@dataclass(frozen=True)
class Setup:
    """One network on one data set: the defaults its experiments start from.

    The builders' own defaults are those of DenseNet-BC-100 on CIFAR-100
    (``DENSENET_CIFAR``). A setup replaces some of them: the options every run shares (the
    model, its batch size and weight decay), the default of a builder parameter in every
    experiment that takes it (freeze and reset points in the network's own layer map, the
    schedules), and what the smoke plans run (a tiny model of the same family, and points
    that exist in it).

    Args:
        name: What it is, for messages: ``"WRN-28-10 on CIFAR-100"``.
        options: What every run shares.
        parameters: Builder parameters' defaults, each in every experiment that takes it.
        smoke_options: The smoke runs' options (a tiny model; ``smoke=True``).
        smoke_parameters: The smoke plans' parameters beyond ``smoke_parameters``' common
            ones (freeze and reset points of the tiny model).
        experiments: The experiments it offers, names of ``EXPERIMENTS``.

    Examples:
        >>> setup = Setup("a tiny WRN", RunOptions(model="cifar_wrn_28_10",
        ...     model_kwargs={"depth": 10, "widen_factor": 1}), experiments=("paired",))
        >>> build("paired", setup=setup, splits=1).runs[0].config.model_kwargs
        {'depth': 10, 'widen_factor': 1}
    """

    name: str
    options: RunOptions = PAPER_OPTIONS
    parameters: Mapping[str, Any] = field(default_factory=dict)
    smoke_options: RunOptions = SMOKE_OPTIONS
    smoke_parameters: Mapping[str, Any] = field(default_factory=dict)
    experiments: tuple[str, ...] = tuple(EXPERIMENTS)

    def __post_init__(self) -> None:
        unknown = [name for name in self.experiments if name not in EXPERIMENTS]
        if unknown or not self.experiments:
            raise ValueError(
                f"Expected `experiments` to be names of {', '.join(EXPERIMENTS)}, but got "
                f"{list(self.experiments)}."
            )
        for name, given in (
            ("parameters", self.parameters),
            ("smoke_parameters", self.smoke_parameters),
        ):
            taken = {p for e in self.experiments for p in _signature(e)} - {"options"}
            extra = sorted(set(given) - taken)
            if extra:
                raise ValueError(
                    f"Expected `{name}` to name parameters of {', '.join(self.experiments)} "
                    f"({', '.join(sorted(taken))}), but got {', '.join(extra)}."
                )
        for name, options in (("options", self.options), ("smoke_options", self.smoke_options)):
            if not isinstance(options, RunOptions):
                raise TypeError(f"Expected `{name}` to be RunOptions, but got {describe(options)}.")

    def defaults(self, experiment: str) -> dict[str, Any]:
        """Every parameter of ``experiment``'s builder with its default in this setup."""
        self._check_experiment(experiment)
        found = {name: p.default for name, p in _signature(experiment).items()}
        found.update({k: v for k, v in self.parameters.items() if k in found})
        found["options"] = self.options
        return found

    def _check_experiment(self, experiment: str) -> None:
        if experiment not in self.experiments:
            raise ValueError(
                f"Expected `experiment` to be one of {', '.join(self.experiments)}, but got "
                f"{experiment!r}."
            )


#: WRN-28-10's freeze points (its layer map is ``stem, 1.0 .. 1.3, 2.0 .. 2.3, 3.0 .. 3.3,
#: head``): nothing, half of each block and each block whole, every layer of block 3.
WRN_FREEZE_AT = ("0", "1.1", "1", "2.1", "2", "3.0", "3.1", "3.2", "3")
#: WRN-28-10's reset points: block 1 kept up to all three blocks kept.
WRN_RESET_AT = ("1", "2.1", "2", "3.1", "3")

#: ImageNet pre-training (the paper gives none): DenseNet's own ImageNet recipe, 90 epochs,
#: 0.1 / 0.01 / 0.001 from epochs 1 / 31 / 61.
IMAGENET_PRETRAIN = Schedule(90, (31, 61), ((0.1, 0.01, 0.001),))
#: ImageNet fine-tuning on B (the paper gives none): the paper's fine-tuning scaled with
#: the pre-training (175 to 90 epochs, about half), 50 epochs with drops at 26 and 39 (the
#: fractions of 51 and 76 of 100), the body 0.01 / 0.01 / 0.001, the classifier from 0.1.
IMAGENET_FINETUNE = FINETUNE_100.scaled(50)

#: DenseNet-BC-100 on CIFAR-100: the builders' own defaults (the paper's), batch 64,
#: weight decay 1e-4; smoke: DenseNet-BC of depth 10 and growth rate 4.
DENSENET_CIFAR = Setup(
    "DenseNet-BC-100 on CIFAR-100",
    smoke_parameters={"freeze_at": ("0", "2.1", "3"), "reset_at": ("1", "3")},
)
#: WRN-28-10 (dropout 0.3) on CIFAR-100 (Fig. 6): batch 128, weight decay 5e-4 (the WRN
#: code the paper built on), the paper's schedules, freeze and reset points of its layer
#: map; smoke: a WRN of depth 10 and width 1 (``stem, 1.0, 2.0, 3.0, head``).
WRN_CIFAR = Setup(
    "WRN-28-10 on CIFAR-100",
    replace(PAPER_OPTIONS, model="cifar_wrn_28_10", batch_size=128, weight_decay=5e-4),
    parameters={"freeze_at": WRN_FREEZE_AT, "reset_at": WRN_RESET_AT},
    smoke_options=replace(
        SMOKE_OPTIONS, model="cifar_wrn_28_10", model_kwargs={"depth": 10, "widen_factor": 1}
    ),
    smoke_parameters={"freeze_at": ("0", "2.0", "3"), "reset_at": ("1", "3")},
)
#: DenseNet-121 (k=32; timm's ``densenet121``, the same network as torchvision's) on
#: ImageNet-100 (Fig. 15), the paired experiment only: batch 256, weight decay 1e-4,
#: ``IMAGENET_PRETRAIN`` and ``IMAGENET_FINETUNE``; smoke: growth rate 4, one layer per
#: block (``stem, 1.1, 2.1, 3.1, 4.1, head``).
DENSENET121_IMAGENET = Setup(
    "DenseNet-121 on ImageNet-100",
    replace(PAPER_OPTIONS, model="densenet121", batch_size=256),
    parameters={"pretrain": IMAGENET_PRETRAIN, "transfer": IMAGENET_FINETUNE},
    smoke_options=replace(
        SMOKE_OPTIONS,
        model="densenet121",
        model_kwargs={"growth_rate": 4, "block_config": (1, 1, 1, 1)},
    ),
    experiments=("paired",),
)


def build(experiment: str, *, setup: Setup = DENSENET_CIFAR, **parameters: Any) -> Plan:
    """The plan of an experiment that ``setup`` offers, from the setup's defaults and the
    ``parameters`` given.

    Examples:
        >>> plan = build("paired", setup=WRN_CIFAR)
        >>> len(plan), plan.runs[0].config.model, plan.runs[0].config.batch_size
        (8, 'cifar_wrn_28_10', 128)
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"Expected `experiment` to be one of {', '.join(EXPERIMENTS)}, but got {experiment!r}."
        )
    return EXPERIMENTS[experiment](**{**setup.defaults(experiment), **parameters})


def defaults(parameter: str, setup: Setup = DENSENET_CIFAR) -> dict[str, Any]:
    """The default of ``parameter`` in every experiment of ``setup`` that takes it, by
    experiment name.

    Examples:
        >>> defaults("replications")
        {'paired': 1, 'freeze': 1, 'reset': 1, 'weight-sweep': 1, 'heads': 1, 'long-tail': 7, 'aux-labels': 1}
        >>> defaults("freeze_at", WRN_CIFAR)["freeze"][:3]
        ('0', '1.1', '1')
    """
    found = {}
    for name in setup.experiments:
        values = setup.defaults(name)
        if parameter in values:
            found[name] = values[parameter]
    return found


def smoke_parameters(experiment: str, setup: Setup = DENSENET_CIFAR) -> dict[str, Any]:
    """The parameters of an experiment's smoke plan: one split, at most two replications,
    ``SMOKE_EPOCHS`` epochs, the setup's ``smoke_options`` (a tiny model) and points that
    exist in it: every step of the experiment in seconds, on synthetic data."""
    paper = setup.defaults(experiment)
    smoke: dict[str, Any] = {
        "splits": 1,
        "replications": min(paper["replications"], 2),
        "pretrain": paper["pretrain"].scaled(SMOKE_EPOCHS),
        "transfer": paper["transfer"].scaled(SMOKE_EPOCHS),
        "options": setup.smoke_options,
    }
    extra = {"weights": (0.0, 0.4), "heads": (1, 2), "per_class": 2, **setup.smoke_parameters}
    smoke.update({name: value for name, value in extra.items() if name in paper})
    return smoke


def _baseline_and_binary(binary_weight: float) -> list[_Condition]:
    weight = check_unit_float("binary_weight", binary_weight)
    return [_Condition("baseline", 0.0), _Condition("binary", weight)]


def _split_seeds(splits: int | Sequence[int]) -> list[int]:
    if isinstance(splits, int) and not isinstance(splits, bool):
        return list(range(check_int("splits", splits, minimum=1)))
    if not isinstance(splits, Sequence) or isinstance(splits, str) or not splits:
        raise ValueError(
            f"Expected `splits` to be a number of splits >= 1 or a list of split seeds, but got {describe(splits)}."
        )
    seeds = [check_seed("splits", s) for s in splits]
    _check_unique("splits", seeds)
    return seeds


def _check_unique(name: str, values: Sequence[Any]) -> None:
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    if repeated:
        raise ValueError(
            f"Expected `{name}` to hold distinct values, but got {', '.join(repeated)} more than once."
        )


def _check_addresses(
    options: RunOptions, addresses: Sequence[str], name: str, *, zero: bool
) -> None:
    """Every address names layers of the model before its head (``"0"`` where ``zero``)."""
    import timm

    from .. import models  # noqa: F401  (registers the CIFAR models)
    from ..layers import layer_map

    if isinstance(addresses, str) or not addresses:
        raise ValueError(
            f"Expected `{name}` to be a list of layer addresses, but got {describe(addresses)}."
        )
    _check_unique(name, list(addresses))
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(
            options.model, pretrained=False, num_classes=SIDE_CLASSES, **dict(options.model_kwargs)
        )
    layers = layer_map(model)
    groups = layers.groups
    for address in addresses:
        if zero and address == "0":
            continue
        if layers.resolve(address, name=name) == len(groups) - 1:
            raise ValueError(
                f"Expected `{name}` to end before the head ({groups[-2].address!r} at most), but "
                f"{address!r} includes the classifier."
            )


def _plan(
    splits: int | Sequence[int],
    replications: int,
    conditions: Sequence[_Condition],
    steps: Sequence[_Transfer],
    pretrain: Schedule,
    transfer: Schedule,
    options: RunOptions,
) -> Plan:
    seeds = _split_seeds(splits)
    replications = check_int("replications", replications, minimum=1)
    if not isinstance(options, RunOptions):
        raise TypeError(f"Expected `options` to be RunOptions, but got {describe(options)}.")
    for name, schedule, roles in (("pretrain", pretrain, 1), ("transfer", transfer, 2)):
        if not isinstance(schedule, Schedule) or len(schedule.rates) != roles:
            raise ValueError(
                f"Expected `{name}` to be a Schedule with {roles} role(s) of rates, but got {schedule!r}."
            )
    runs = []
    for split in seeds:
        for rep in range(replications):
            prefix = f"split{split}" + (f"/rep{rep}" if replications > 1 else "")
            seed = options.seed + rep
            partition_seed = seed if options.partition_seed is None else options.partition_seed
            common: dict[str, Any] = {
                "model": options.model,
                "num_classes": SIDE_CLASSES,
                "momentum": options.momentum,
                "weight_decay": options.weight_decay,
                "nesterov": options.nesterov,
                "batch_size": options.batch_size,
                "seed": seed,
                "amp": options.amp,
                "channels_last": options.channels_last,
                "compile": options.compile,
                "model_kwargs": dict(options.model_kwargs),
                "split_seed": split,
                "smoke": options.smoke,
                "num_workers": options.num_workers,
            }
            for condition in conditions:
                runs.append(
                    PlannedRun(
                        f"{prefix}/{condition.name}/pretrain",
                        RunConfig(
                            **common,
                            epochs=pretrain.epochs,
                            lr=pretrain.rates[0][0],
                            lr_table=pretrain.lr_table,
                            binary_weight=condition.binary_weight,
                            num_partitions=condition.num_partitions,
                            num_groups=condition.num_groups,
                            aux_labels=condition.aux_labels,
                            partition_seed=partition_seed,
                            side="A",
                            phase="pretrain",
                            condition=condition.name,
                        ),
                    )
                )
            for condition in conditions:
                for step in steps:
                    run_id = f"{prefix}/{condition.name}/{step.step}"
                    source = posixpath.relpath(f"{prefix}/{condition.name}/pretrain", run_id)
                    runs.append(
                        PlannedRun(
                            run_id,
                            RunConfig(
                                **common,
                                epochs=transfer.epochs,
                                lr=transfer.rates[0][0],
                                lr_table=transfer.lr_table,
                                side="B",
                                condition=condition.name,
                                per_class=step.per_class,
                                phase=step.step.partition("-")[0],
                                transfer_from=source,
                                transfer_weights=options.transfer_weights,
                                freeze=step.freeze,
                                reset=step.reset,
                                bn=options.bn,
                            ),
                        )
                    )
    return Plan(runs)
