"""The paper's experiments as data: tables of conditions and steps, expanded into plans.

An experiment ([`Experiment`][auxtransfer.experiments.protocols.Experiment]) is a row of
``EXPERIMENTS``: its parameters with their defaults (the paper's values for DenseNet-BC-100
on CIFAR-100, ``PAPER.md``; where the paper gives none, the comments say what was chosen),
the conditions it pre-trains on A and the steps each condition then takes on B. Each
parameter is a row of ``PARAMETERS``: its one check, and the flag the examples give it.
``build(experiment, setup=..., **parameters)`` expands an experiment into a
[`Plan`][auxtransfer.experiments.plan.Plan]; adding an experiment is adding a row. A
``Setup`` replaces some defaults for another network or data set: ``WRN_CIFAR``
(WRN-28-10, Fig. 6), ``DENSENET121_IMAGENET`` (DenseNet-121 on ImageNet-100, Fig. 15) and
``DIGITS`` (a small CNN on scikit-learn's 8x8 digits, 5 + 5 classes: every run classifies
the ``side_classes`` of its setup).

A *test* is one A/B class split (``splits``) and one replication on it
(``replications``); per test every condition pre-trains on A once, and every step of that
condition starts from that pre-training. Run ids read
``split<seed>[/rep<r>]/<condition>/<step>``: ``split3/binary/pretrain``,
``split3/binary/freeze-2.9``, ``split0/rep4/baseline/longtail``. Replication ``r`` trains
with seed ``options.seed + r`` and, unless ``options.partition_seed`` fixes it, draws its
own partition with the same number; the conditions of one test share it, so they start from
the same weights and see the same data (the paired design).
"""

from __future__ import annotations

import posixpath
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .._checks import check_int, check_seed, check_unit_float, describe
from .plan import Plan, PlannedRun
from .settings import RunConfig, RunOptions, Schedule

__all__ = [
    "AUX_KINDS",
    "DENSENET121_IMAGENET",
    "DENSENET_CIFAR",
    "DIGITS",
    "DIGITS_PRETRAIN",
    "EXPERIMENTS",
    "FINETUNE_40",
    "FINETUNE_100",
    "FREEZE_AT",
    "IMAGENET_FINETUNE",
    "IMAGENET_PRETRAIN",
    "PAPER_OPTIONS",
    "PARAMETERS",
    "PRETRAIN",
    "RESET_100",
    "RESET_AT",
    "SMOKE_EPOCHS",
    "SMOKE_OPTIONS",
    "WEIGHTS",
    "WRN_CIFAR",
    "WRN_FREEZE_AT",
    "WRN_RESET_AT",
    "Condition",
    "Experiment",
    "Parameter",
    "RunOptions",
    "Schedule",
    "Setup",
    "Step",
    "build",
    "defaults",
    "smoke_parameters",
]

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
#: The auxiliary-label kinds of ``aux-labels``: the paper's random binary partition, a
#: random balanced partition into ``num_groups`` groups, and the data's coarse labels.
AUX_KINDS = ("binary", "random", "coarse")
#: CIFAR-100's superclasses: the coarse labels' group count, and ``aux-labels``' K.
COARSE_GROUPS = 20

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
class Condition:
    """What a pre-training on A learns beside its classes: an auxiliary head of loss weight
    ``aux_weight`` (0: none, the baseline) over ``num_partitions`` partitions into
    ``num_groups`` groups, drawn at random or the data's coarse labels."""

    name: str
    aux_weight: float = 0.0
    num_partitions: int = 1
    num_groups: int = 2
    aux_labels: str = "random"


@dataclass(frozen=True)
class Step:
    """What a run on B does with its condition's pre-training: freeze or keep up to an
    address, on all of B or ``per_class`` images of each class."""

    name: str
    freeze: str | None = None
    reset: str | None = None
    per_class: int | None = None


Values = Mapping[str, Any]


@dataclass(frozen=True)
class Parameter:
    """A parameter of the experiments: its one check and its flag in the examples.

    Args:
        name: The parameter (a keyword of ``build``).
        check: Returns the value checked (as a tuple where it is a list), or raises an
            error that names the parameter in backticks.
        help: The flag's help.
        flag: The examples' flag (default: ``--`` and the name with dashes).
        kind: The type of one value on the command line.
        many: The flag takes one value or more.
        choices: The values allowed on the command line.
        metavar: The flag's placeholder in ``--help``.
    """

    name: str
    check: Callable[[Any], Any]
    help: str
    flag: str = ""
    kind: Callable[[str], Any] | None = None
    many: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None

    def __post_init__(self) -> None:
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))


@dataclass(frozen=True)
class Experiment:
    """An experiment: its parameters with their defaults, the conditions it pre-trains on A
    and the steps each takes on B, both made from the checked parameter values.

    Every experiment takes ``splits``, ``replications``, ``pretrain`` and ``transfer``
    besides its own ``parameters``. A condition's pre-training is ``<condition>/pretrain``,
    its steps ``<condition>/<step>``.
    """

    name: str
    help: str
    parameters: Mapping[str, Any]
    conditions: Callable[[Values], Sequence[Condition]]
    steps: Callable[[Values], Sequence[Step]] = lambda values: (Step("finetune"),)

    @property
    def defaults(self) -> dict[str, Any]:
        """Every parameter with its default (the DenseNet-BC-100 on CIFAR-100 setup's)."""
        common = {"splits": 1, "replications": 1, "pretrain": PRETRAIN, "transfer": FINETUNE_100}
        return {**common, **self.parameters}


def _splits(value: Any) -> tuple[int, ...] | int:
    if isinstance(value, int) and not isinstance(value, bool):
        return check_int("splits", value, minimum=1)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value:
        raise ValueError(
            f"Expected `splits` to be a number of splits >= 1 or a list of split seeds, but got {describe(value)}."
        )
    return _distinct("splits", [check_seed("splits", s) for s in value])


def _distinct(name: str, values: Sequence[Any], shown: Sequence[Any] | None = None) -> tuple:
    shown = list(values if shown is None else shown)
    repeated = sorted({str(v) for v in shown if shown.count(v) > 1})
    if repeated:
        raise ValueError(
            f"Expected `{name}` to hold distinct values, but got {', '.join(repeated)} more than once."
        )
    return tuple(values)


def _many(name: str, check: Callable[[str, Any], Any], what: str) -> Callable[[Any], tuple]:
    """A check of a non-empty list of distinct values, each checked by ``check``."""

    def checked(value: Any) -> tuple:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueError(f"Expected `{name}` to hold at least one {what}, but got {describe(value)}.")  # fmt: skip
        values = [check(name, v) for v in value]
        return _distinct(name, values, [f"{v:g}" if isinstance(v, float) else v for v in values])

    return checked


def _schedule(name: str, roles: int) -> Callable[[Any], Schedule]:
    def checked(value: Any) -> Schedule:
        if not isinstance(value, Schedule) or len(value.rates) != roles:
            raise ValueError(
                f"Expected `{name}` to be a Schedule with {roles} role(s) of rates, but got {value!r}."
            )
        return value

    return checked


def _addresses(name: str) -> Callable[[Any], tuple[str, ...]]:
    """Layer addresses, distinct; whether the model has them is checked with the options."""

    def checked(value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise ValueError(
                f"Expected `{name}` to be a list of layer addresses, but got {describe(value)}."
            )
        return _distinct(name, [str(a) for a in value])

    return checked


def _aux(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not value or any(kind not in AUX_KINDS for kind in value):
        raise ValueError(
            f"Expected `aux` to be kinds of {', '.join(AUX_KINDS)}, but got {describe(value)}."
        )
    return _distinct("aux", list(value))


def _positive_weight(value: Any) -> float:
    weight = check_unit_float("aux_weight", value)
    if weight == 0:
        raise ValueError(
            "Expected `aux_weight` to be above 0 (the auxiliary heads' loss weight), but got 0."
        )
    return weight


#: Every parameter of the experiments, with its one check and its flag.
PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    Parameter("splits", _splits, "A/B class splits (seeds 0 .. N-1)", kind=int),
    Parameter("replications", lambda v: check_int("replications", v, minimum=1), "tests per split", kind=int),
    Parameter("binary_weight", lambda v: check_unit_float("binary_weight", v), "loss weight of the binary condition", kind=float),
    Parameter("weights", _many("weights", check_unit_float, "binary weight"), "weight-sweep: the binary weights", kind=float, many=True),
    Parameter("partitions", lambda v: check_int("partitions", v, minimum=1), "weight-sweep: heads sharing each weight", kind=int),
    Parameter("head_weight", lambda v: check_unit_float("head_weight", v), "heads: the weight b of each head (B = b x n)", kind=float),
    Parameter("heads", _many("heads", lambda n, v: check_int(n, v, minimum=1), "number of heads"), "heads: the numbers of heads n", kind=int, many=True),
    Parameter("freeze_at", _addresses("freeze_at"), "freeze: freeze up to and including each address ('0': nothing)", many=True, metavar="ADDRESS"),
    Parameter("reset_at", _addresses("reset_at"), "reset: keep up to each address, re-initialise the rest", many=True, metavar="ADDRESS"),
    Parameter("per_class", lambda v: check_int("per_class", v, minimum=1), "long-tail: training images per class of B", kind=int),
    Parameter("aux", _aux, "aux-labels: the kinds beside the baseline (binary: the paper's random binary partition; random: K random groups; coarse: the data's superclasses)", many=True, choices=AUX_KINDS, metavar="KIND"),
    Parameter("aux_weight", _positive_weight, "aux-labels: loss weight of every auxiliary head", kind=float),
    Parameter("num_groups", lambda v: check_int("num_groups", v, minimum=2), "aux-labels: groups of the random condition", flag="--groups", kind=int, metavar="K"),
    Parameter("pretrain", _schedule("pretrain", 1), "the schedule on A"),
    Parameter("transfer", _schedule("transfer", 2), "the schedule on B (kept layers, new layers)"),
)}  # fmt: skip


def _baseline_and_binary(values: Values) -> list[Condition]:
    return [Condition("baseline"), Condition("binary", values["binary_weight"])]


def _weights(values: Values) -> list[Condition]:
    # `partitions` heads share each weight: one of the two readings of Fig. 10.
    return [Condition(f"w{w:g}", w, values["partitions"]) for w in values["weights"]]


def _heads(values: Values) -> list[Condition]:
    # Each of n heads has weight b, so together they weigh b x n (the other reading of
    # Fig. 10 is weight-sweep with `partitions`); 0.1 x 4 sums to the paper's 0.4.
    b, found = values["head_weight"], [Condition("baseline")]
    for n in values["heads"]:
        total = round(b * n, 12)
        if total > 1:
            raise ValueError(
                f"Expected `head_weight` x `heads` to be at most 1 (the binary terms' total "
                f"weight), but {b:g} x {n} = {total:g}."
            )
        found.append(Condition(f"b{b:g}x{n}", total, n))
    return found


def _aux_kinds(values: Values) -> list[Condition]:
    w, k, kinds = values["aux_weight"], values["num_groups"], values["aux"]
    if "random" in kinds and k < 3:
        raise ValueError(f"Expected `num_groups` to be an int >= 3 (random groups that are not the binary condition), but got {k}.")  # fmt: skip
    made = {
        "binary": Condition("binary", w),
        "random": Condition(f"random{k}", w, num_groups=k),
        "coarse": Condition("coarse", w, num_groups=COARSE_GROUPS, aux_labels="coarse"),
    }
    return [Condition("baseline"), *(made[kind] for kind in AUX_KINDS if kind in kinds)]


#: The paper's experiments (and one beyond it), by name.
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    # Fig. 5: baseline and binary on the identical split, each fine-tuned on B.
    Experiment("paired", "baseline vs binary on each split", {"splits": 2, "binary_weight": 0.4},
               _baseline_and_binary),
    # Exp. 1 (Figs. 2, 7, 9): freeze up to each address, fine-tune the rest 40 epochs; the
    # paper's figure is the mean of two tests.
    Experiment("freeze", "Exp. 1, freeze up to each address",
               {"splits": 2, "binary_weight": 0.4, "freeze_at": FREEZE_AT, "transfer": FINETUNE_40},
               _baseline_and_binary,
               lambda v: [Step(f"freeze-{a}", freeze=a) for a in v["freeze_at"]]),
    # Exp. 2 (Figs. 3, 8): keep up to each address, re-initialise the rest; the paper
    # shows one test of the baseline.
    Experiment("reset", "Exp. 2, re-initialise after each address",
               {"binary_weight": 0.4, "reset_at": RESET_AT, "transfer": RESET_100},
               _baseline_and_binary,
               lambda v: [Step(f"reset-{a}", reset=a) for a in v["reset_at"]]),
    # Fig. 4: a pre-training per binary weight (all on each split, unlike the paper).
    Experiment("weight-sweep", "a pre-training per binary weight",
               {"weights": WEIGHTS, "partitions": 1}, _weights),
    # Fig. 10: n binary heads, each its own partition.
    Experiment("heads", "several binary heads", {"head_weight": 0.1, "heads": (1, 2, 4)},
               _heads),
    # Table 1 (Fig. 14): two splits of seven replications, B cut to 60 images per class.
    Experiment("long-tail", "B cut to a few images per class",
               {"splits": 2, "replications": 7, "binary_weight": 0.4, "per_class": 60,
                "transfer": FINETUNE_40},
               _baseline_and_binary,
               lambda v: [Step("longtail", per_class=v["per_class"])]),
    # Beyond the paper: kinds of auxiliary labels against the baseline, as paired.
    Experiment("aux-labels", "baseline vs binary, K random groups and superclasses on each split",
               {"splits": 2, "aux": AUX_KINDS, "aux_weight": 0.4, "num_groups": COARSE_GROUPS},
               _aux_kinds),
)}  # fmt: skip


@dataclass(frozen=True)
class Setup:
    """One network on one data set: the defaults its experiments start from.

    The experiments' own defaults are those of DenseNet-BC-100 on CIFAR-100
    (``DENSENET_CIFAR``). A setup replaces some of them: the options every run shares (the
    model, its batch size and weight decay), the default of a parameter in every
    experiment that takes it (freeze and reset points in the network's own layer map, the
    schedules), and what the smoke plans run (a tiny model of the same family, and points
    that exist in it).

    Args:
        name: What it is, for messages: ``"WRN-28-10 on CIFAR-100"``.
        options: What every run shares.
        parameters: Parameters' defaults, each in every experiment that takes it.
        smoke_options: The smoke runs' options (a tiny model; ``smoke=True``).
        smoke_parameters: The smoke plans' parameters beyond ``smoke_parameters``' common
            ones (freeze and reset points of the tiny model).
        experiments: The experiments it offers, names of ``EXPERIMENTS`` (default: every
            row of ``EXPERIMENTS``, those added later included; ``offered()``).
        num_classes: The classes of the data set, split into halves A and B of
            ``side_classes`` each (100: CIFAR-100, ImageNet-100).

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
    experiments: tuple[str, ...] | None = None
    num_classes: int = 100

    def __post_init__(self) -> None:
        classes = check_int("num_classes", self.num_classes, minimum=4)
        if classes % 2:
            raise ValueError(
                f"Expected `num_classes` to be even (two halves A and B of the same size), "
                f"but got {classes}."
            )
        offered = self.offered()
        if not offered or any(name not in EXPERIMENTS for name in offered):
            raise ValueError(
                f"Expected `experiments` to be names of {', '.join(EXPERIMENTS)}, but got "
                f"{list(offered)}."
            )
        taken = {p for e in offered for p in EXPERIMENTS[e].defaults}
        for name, given in (("parameters", self.parameters), ("smoke_parameters", self.smoke_parameters)):  # fmt: skip
            extra = sorted(set(given) - taken)
            if extra:
                raise ValueError(
                    f"Expected `{name}` to name parameters of {', '.join(offered)} "
                    f"({', '.join(sorted(taken))}), but got {', '.join(extra)}."
                )
        for name, options in (("options", self.options), ("smoke_options", self.smoke_options)):
            if not isinstance(options, RunOptions):
                raise TypeError(f"Expected `{name}` to be RunOptions, but got {describe(options)}.")

    @property
    def side_classes(self) -> int:
        """The classes of A, and of B: half the data set's (every run's ``num_classes``)."""
        return self.num_classes // 2

    def offered(self) -> tuple[str, ...]:
        """The names of the experiments this setup offers."""
        return tuple(EXPERIMENTS) if self.experiments is None else tuple(self.experiments)

    def defaults(self, experiment: str) -> dict[str, Any]:
        """Every parameter of ``experiment`` with its default in this setup, and the
        ``options``."""
        if experiment not in self.offered():
            raise ValueError(
                f"Expected `experiment` to be one of {', '.join(self.offered())}, but got "
                f"{experiment!r}."
            )
        found = EXPERIMENTS[experiment].defaults
        found.update({k: v for k, v in self.parameters.items() if k in found})
        return {**found, "options": self.options}


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

#: DenseNet-BC-100 on CIFAR-100: the experiments' own defaults (the paper's), batch 64,
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

#: The digits' pre-training on A: the paper's schedule scaled to 30 epochs (drops at 22 and
#: 27, the fractions of 126 and 151 of 175).
DIGITS_PRETRAIN = PRETRAIN.scaled(30)
#: A small CNN (``digits_cnn``, width 32) on scikit-learn's 8x8 digits, 5 + 5 classes
#: (``examples/digits.py``): ``long-tail`` first, B cut to 10 images per class, on 20
#: splits of one replication; ``DIGITS_PRETRAIN`` on A, the paper's 100-epoch fine-tuning
#: on B (``FINETUNE_100``: 2 steps an epoch on B's 50 images); batch 32; training images
#: shifted by up to one pixel (``pad=1``) and never mirrored (a mirrored digit is another
#: shape); ``aux-labels`` beside binary: 3 random groups. Smoke: width 4, batch 8.
_DIGITS_OPTIONS = replace(PAPER_OPTIONS, model="digits_cnn", batch_size=32, pad=1, flip=False)
DIGITS = Setup(
    "a small CNN on scikit-learn's digits",
    _DIGITS_OPTIONS,
    parameters={
        "splits": 20, "replications": 1, "per_class": 10, "pretrain": DIGITS_PRETRAIN,
        "transfer": FINETUNE_100, "aux": ("binary", "random"), "num_groups": 3,
    },
    smoke_options=replace(_DIGITS_OPTIONS, model_kwargs={"width": 4}, batch_size=8, smoke=True),
    experiments=("long-tail", "paired", "aux-labels"),
    num_classes=10,
)  # fmt: skip


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
    for name in setup.offered():
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


def build(experiment: str, *, setup: Setup = DENSENET_CIFAR, **parameters: Any) -> Plan:
    """The plan of an experiment that ``setup`` offers, from the setup's defaults and the
    ``parameters`` given (and ``options``, the ``RunOptions`` every run shares).

    Examples:
        >>> plan = build("paired", setup=WRN_CIFAR)
        >>> len(plan), plan.runs[0].config.model, plan.runs[0].config.batch_size
        (8, 'cifar_wrn_28_10', 128)
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(
            f"Expected `experiment` to be one of {', '.join(EXPERIMENTS)}, but got {experiment!r}."
        )
    values = setup.defaults(experiment)
    unknown = sorted(set(parameters) - set(values))
    if unknown:
        raise ValueError(
            f"Expected parameters of {experiment} ({', '.join(sorted(values))}), but got "
            f"{', '.join(unknown)}."
        )
    values.update(parameters)
    options = values.pop("options")
    if not isinstance(options, RunOptions):
        raise TypeError(f"Expected `options` to be RunOptions, but got {describe(options)}.")
    checked = {name: PARAMETERS[name].check(value) for name, value in values.items()}
    side = setup.side_classes
    if checked.get("num_groups", 2) > side:
        raise ValueError(
            f"Expected `num_groups` to be at most the {side} classes of A, but got "
            f"{checked['num_groups']}."
        )
    for name in ("freeze_at", "reset_at"):
        if name in checked:
            _check_addresses(options, checked[name], name, side)
    return expand(EXPERIMENTS[experiment], checked, options, side_classes=side)


def expand(
    experiment: Experiment, values: Values, options: RunOptions, *, side_classes: int
) -> Plan:
    """The runs of ``experiment`` with checked parameter ``values``: per split and
    replication, a pre-training on A per condition, then each step of each condition on B
    from that condition's pre-training; every run classifies ``side_classes`` classes."""
    conditions, steps = experiment.conditions(values), experiment.steps(values)
    pretrain, transfer = values["pretrain"], values["transfer"]
    splits = values["splits"]
    seeds = range(splits) if isinstance(splits, int) else splits
    replications = values["replications"]
    runs = []
    for split in seeds:
        for rep in range(replications):
            prefix = f"split{split}" + (f"/rep{rep}" if replications > 1 else "")
            seed = options.seed + rep
            shared = RunConfig(
                model=options.model, num_classes=side_classes, epochs=pretrain.epochs,
                momentum=options.momentum, weight_decay=options.weight_decay,
                nesterov=options.nesterov, batch_size=options.batch_size, seed=seed,
                amp=options.amp, channels_last=options.channels_last, compile=options.compile,
                model_kwargs=dict(options.model_kwargs), split_seed=split, smoke=options.smoke,
                num_workers=options.num_workers, pad=options.pad, flip=options.flip,
            )  # fmt: skip
            for c in conditions:
                config = replace(
                    shared, lr=pretrain.rates[0][0], lr_table=pretrain.lr_table,
                    binary_weight=c.aux_weight, num_partitions=c.num_partitions,
                    num_groups=c.num_groups, aux_labels=c.aux_labels, side="A",
                    partition_seed=seed if options.partition_seed is None else options.partition_seed,
                    phase="pretrain", condition=c.name,
                )  # fmt: skip
                runs.append(PlannedRun(f"{prefix}/{c.name}/pretrain", config))
            for c in conditions:
                for step in steps:
                    run_id = f"{prefix}/{c.name}/{step.name}"
                    config = replace(
                        shared, epochs=transfer.epochs, lr=transfer.rates[0][0],
                        lr_table=transfer.lr_table, side="B", condition=c.name,
                        per_class=step.per_class, phase=step.name.partition("-")[0],
                        transfer_from=posixpath.relpath(f"{prefix}/{c.name}/pretrain", run_id),
                        transfer_weights=options.transfer_weights, freeze=step.freeze,
                        reset=step.reset, bn=options.bn,
                    )  # fmt: skip
                    runs.append(PlannedRun(run_id, config))
    return Plan(runs)


def _check_addresses(
    options: RunOptions, addresses: Sequence[str], name: str, num_classes: int
) -> None:
    """Every address (but ``"0"``) names layers of the model before its head."""
    from ..layers import layer_map
    from .transfer import timm_model

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm_model(options.model, num_classes, options.model_kwargs)
    layers = layer_map(model)
    groups = layers.groups
    for address in addresses:
        try:
            index = None if address == "0" else layers.resolve(address, name=name)
        except ValueError as error:
            if not options.smoke:
                raise
            kwargs = ", ".join(f"{k}={v}" for k, v in options.model_kwargs.items())
            raise ValueError(
                f"{error} These are the addresses of the smoke runs' tiny model ({kwargs}): "
                f"give one of them, or leave `{name}` out for the smoke points."
            ) from None
        if index == len(groups) - 1:
            raise ValueError(
                f"Expected `{name}` to end before the head ({groups[-2].address!r} at most), but "
                f"{address!r} includes the classifier."
            )
