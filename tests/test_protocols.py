"""The paper's experiments as plans: run ids, dependencies, settings and every schedule."""

import re

import pytest
import timm
import torch

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer import layer_names
from auxtransfer.experiments import protocols
from auxtransfer.experiments.protocols import (
    DENSENET121_IMAGENET,
    DENSENET_CIFAR,
    EXPERIMENTS,
    FINETUNE_100,
    PRETRAIN,
    SMOKE_OPTIONS,
    WRN_CIFAR,
    RunOptions,
    Schedule,
    Setup,
)
from auxtransfer.experiments.transfer import set_learning_rates

# The paper's schedules, written out epoch by epoch (PAPER.md): the rate every epoch trains
# with, for each role of parameter group.
PAPER_PRETRAIN = [[0.1] * 125 + [0.01] * 25 + [0.001] * 25]  # 175 epochs, from 1 / 126 / 151
PAPER_FINETUNE_100 = [
    [0.01] * 50 + [0.01] * 25 + [0.001] * 25,  # the transferred body: 0.01, 0.01, 0.001
    [0.1] * 50 + [0.01] * 25 + [0.001] * 25,  # the new classifier from 0.1; drops at 51, 76
]
PAPER_FINETUNE_40 = [
    [0.01] * 25 + [0.01] * 10 + [0.001] * 5,  # drops at 26 and 36
    [0.1] * 25 + [0.01] * 10 + [0.001] * 5,
]
PAPER_TRANSFER = {
    "paired": PAPER_FINETUNE_100,
    "freeze": PAPER_FINETUNE_40,  # Exp. 1: 40 epochs, drops at 26 and 36
    "reset": PAPER_FINETUNE_100,  # Exp. 2: kept from 0.01, re-initialised from 0.1, 51 / 76
    "weight-sweep": PAPER_FINETUNE_100,
    "heads": PAPER_FINETUNE_100,
    "long-tail": PAPER_FINETUNE_40,
    "aux-labels": PAPER_FINETUNE_100,  # as paired: every kind fine-tuned 100 epochs on B
}


def _engine_rates(config):
    """The rate of every role in every epoch, as the training loop sets them."""
    roles = len(config.lr_table[0][1])
    groups = [{"role": role, "lr": None} for role in range(roles)]
    per_epoch = []
    for epoch in range(1, config.epochs + 1):
        set_learning_rates(groups, epoch, config.schedule)
        per_epoch.append([group["lr"] for group in groups])
    return [list(column) for column in zip(*per_epoch, strict=True)]


# The ImageNet schedules (the paper gives none): DenseNet's ImageNet recipe on A, the
# paper's fine-tuning over 50 epochs on B.
IMAGENET_PRETRAIN = [[0.1] * 30 + [0.01] * 30 + [0.001] * 30]  # 90 epochs, from 1 / 31 / 61
IMAGENET_FINETUNE = [
    [0.01] * 25 + [0.01] * 13 + [0.001] * 12,  # drops at 26 and 39
    [0.1] * 25 + [0.01] * 13 + [0.001] * 12,
]


@pytest.mark.parametrize(
    ("setup", "experiment"),
    [(setup, e) for setup in (DENSENET_CIFAR, WRN_CIFAR) for e in EXPERIMENTS],
    ids=lambda value: value.name.split()[0] if isinstance(value, Setup) else value,
)
def test_every_run_follows_the_papers_schedule(setup, experiment):
    plan = protocols.build(experiment, setup=setup)
    for run in plan:
        expected = PAPER_PRETRAIN if run.config.side == "A" else PAPER_TRANSFER[experiment]
        assert run.config.epochs == len(expected[0]), run.id
        assert _engine_rates(run.config) == expected, run.id
        mine = [run.config.schedule.rates_at(e) for e in range(1, run.config.epochs + 1)]
        assert [list(c) for c in zip(*mine, strict=True)] == expected, run.id


def test_paired_plan_ids_and_settings():
    plan = protocols.build("paired")
    assert plan.ids == [
        "split0/baseline/pretrain", "split0/binary/pretrain",
        "split0/baseline/finetune", "split0/binary/finetune",
        "split1/baseline/pretrain", "split1/binary/pretrain",
        "split1/baseline/finetune", "split1/binary/finetune",
    ]  # fmt: skip
    pre, binary = plan["split1/baseline/pretrain"].config, plan["split1/binary/pretrain"].config
    assert (pre.binary_weight, binary.binary_weight, binary.num_partitions) == (0.0, 0.4, 1)
    assert (pre.side, pre.split_seed, pre.num_classes, pre.transfer_from) == ("A", 1, 50, None)
    # Paired: the two conditions of a split start from the same seed.
    assert pre.seed == binary.seed == 0
    fine = plan["split1/binary/finetune"]
    assert fine.requires == "split1/binary/pretrain"
    assert fine.config.transfer_from == "../pretrain"
    assert (fine.config.side, fine.config.split_seed, fine.config.binary_weight) == ("B", 1, 0.0)
    assert (fine.config.freeze, fine.config.reset, fine.config.per_class) == (None, None, None)
    assert (fine.config.transfer_weights, fine.config.bn) == (
        "best",
        "update",
    )  # the paper's setups: PAPER_OPTIONS
    assert all(not run.config.smoke for run in plan)
    assert protocols.build("paired", splits=[3, 7]).ids[0] == "split3/baseline/pretrain"
    assert len(protocols.build("paired", splits=5)) == 20


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_runs_come_after_the_pretraining_they_share(experiment):
    for plan in (
        protocols.build(experiment),
        protocols.build(experiment, **protocols.smoke_parameters(experiment)),
    ):
        seen = []
        for run in plan:
            if run.config.side == "A":
                assert run.id.endswith("/pretrain") and run.requires is None
            else:
                assert run.requires in seen, run.id
                prefix = run.id.rsplit("/", 1)[0]
                assert run.requires == f"{prefix}/pretrain"
                pre = plan[run.requires].config
                # The transfer sees the other side of the same split, with the same seed.
                assert (run.config.split_seed, run.config.seed) == (pre.split_seed, pre.seed)
                assert (run.config.model, run.config.model_kwargs) == (pre.model, pre.model_kwargs)
            seen.append(run.id)
        pretrainings = [run.id for run in plan if run.config.side == "A"]
        assert len(set(pretrainings)) == len(pretrainings)  # each done once


def test_aux_labels_plan_pairs_every_kind_with_the_baseline_of_its_split():
    plan = protocols.build("aux-labels", splits=[3])
    assert plan.ids == [
        "split3/baseline/pretrain", "split3/binary/pretrain",
        "split3/random20/pretrain", "split3/coarse/pretrain",
        "split3/baseline/finetune", "split3/binary/finetune",
        "split3/random20/finetune", "split3/coarse/finetune",
    ]  # fmt: skip
    heads = {
        run.id.split("/")[1]: (c.binary_weight, c.num_groups, c.aux_labels, c.num_partitions)
        for run in plan
        if (c := run.config).side == "A"
    }
    assert heads == {
        "baseline": (0.0, 2, "random", 1),
        "binary": (0.4, 2, "random", 1),
        "random20": (0.4, 20, "random", 1),
        "coarse": (0.4, 20, "coarse", 1),
    }
    # Paired: one split, seed and partition seed for every condition; B runs plain.
    assert {(r.config.split_seed, r.config.seed, r.config.partition_seed) for r in plan} == {
        (3, 0, 0)
    }
    assert {(r.config.binary_weight, r.config.freeze) for r in plan if r.config.side == "B"} == {
        (0.0, None)
    }
    # The binary condition's pre-training is the paired experiment's, setting for setting.
    paired = protocols.build("paired", splits=[3])["split3/binary/pretrain"].config
    assert plan["split3/binary/pretrain"].config == paired
    # K is the random condition's: without it, any K the coarse labels do not read.
    assert len(protocols.build("aux-labels", splits=1, aux=["coarse"], num_groups=2)) == 4
    chosen = protocols.build("aux-labels", splits=1, aux=["coarse", "random"], num_groups=5)
    assert [r.id for r in chosen if r.config.side == "A"] == [
        "split0/baseline/pretrain",
        "split0/random5/pretrain",
        "split0/coarse/pretrain",
    ]


def test_freeze_plan():
    plan = protocols.build("freeze")
    addresses = ["0", "1.8", "1", "2.8", "2", "3.4", "3.8", "3.12", "3.14", "3"]
    per_split = ["baseline/pretrain", "binary/pretrain"] + [
        f"{condition}/freeze-{a}" for condition in ("baseline", "binary") for a in addresses
    ]
    assert plan.ids == [f"split{s}/{step}" for s in (0, 1) for step in per_split]
    run = plan["split1/binary/freeze-2.8"].config
    assert (run.freeze, run.reset, run.bn, run.phase) == ("2.8", None, "update", "freeze")
    assert plan["split0/baseline/freeze-0"].config.freeze == "0"  # nothing frozen
    assert protocols.build("freeze", options=RunOptions(bn="update")).runs[-1].config.bn == "update"


def test_reset_plan():
    plan = protocols.build("reset", reset_at=["1", "2.8", "3"])
    assert plan.ids == [
        "split0/baseline/pretrain", "split0/binary/pretrain",
        "split0/baseline/reset-1", "split0/baseline/reset-2.8", "split0/baseline/reset-3",
        "split0/binary/reset-1", "split0/binary/reset-2.8", "split0/binary/reset-3",
    ]  # fmt: skip
    run = plan["split0/binary/reset-2.8"].config
    assert (run.reset, run.freeze, run.epochs) == ("2.8", None, 100)


def test_weight_sweep_and_heads_are_the_two_readings_of_fig_10():
    sweep = protocols.build("weight-sweep", weights=[0, 0.4], partitions=4)
    assert sweep.ids == [
        "split0/w0/pretrain", "split0/w0.4/pretrain", "split0/w0/finetune", "split0/w0.4/finetune",
    ]  # fmt: skip
    # A total weight b shared by n heads.
    run = sweep["split0/w0.4/pretrain"].config
    assert (run.binary_weight, run.num_partitions) == (0.4, 4)
    plan = protocols.build("heads")
    assert [run.id for run in plan if run.config.side == "A"] == [
        "split0/baseline/pretrain", "split0/b0.1x1/pretrain", "split0/b0.1x2/pretrain",
        "split0/b0.1x4/pretrain",
    ]  # fmt: skip
    assert plan["split0/baseline/pretrain"].config.binary_weight == 0.0
    # n heads of weight b each: b x n in all.
    for n in (1, 2, 4):
        run = plan[f"split0/b0.1x{n}/pretrain"].config
        assert (run.binary_weight, run.num_partitions) == (pytest.approx(0.1 * n), n)
    with pytest.raises(ValueError, match=r"`head_weight` x `heads` to be at most 1.*0.3 x 4 = 1.2"):
        protocols.build("heads", head_weight=0.3)


def test_long_tail_plan_replications():
    plan = protocols.build("long-tail")
    assert len(plan) == 2 * 7 * 4
    assert plan.ids[:4] == [
        "split0/rep0/baseline/pretrain", "split0/rep0/binary/pretrain",
        "split0/rep0/baseline/longtail", "split0/rep0/binary/longtail",
    ]  # fmt: skip
    assert plan.ids[-1] == "split1/rep6/binary/longtail"
    for rep in range(7):
        binary = plan[f"split1/rep{rep}/binary/pretrain"].config
        baseline_b = plan[f"split1/rep{rep}/baseline/longtail"].config
        # Each replication draws its own seed and partition; B keeps 60 images per class.
        assert (binary.seed, binary.partition_seed) == (rep, rep)
        assert (baseline_b.per_class, baseline_b.epochs, baseline_b.freeze) == (60, 40, None)
    fixed = protocols.build("long-tail", options=RunOptions(seed=10, partition_seed=3))
    configs = [fixed[f"split0/rep{r}/binary/pretrain"].config for r in range(7)]
    assert [c.seed for c in configs] == list(range(10, 17))
    assert {c.partition_seed for c in configs} == {3}


def test_schedule_lr_table_and_scaling():
    assert PRETRAIN.lr_table == ((1, (0.1,)), (126, (0.01,)), (151, (0.001,)))
    assert FINETUNE_100.lr_table == ((1, (0.01, 0.1)), (51, (0.01, 0.01)), (76, (0.001, 0.001)))
    # Same fractions of the run: 125/175 and 150/175 of 350 epochs.
    assert PRETRAIN.scaled(350).milestones == (251, 301)
    assert FINETUNE_100.scaled(40).milestones == (21, 31)
    assert PRETRAIN.scaled(175) is PRETRAIN
    # Two epochs: the first drop lands on epoch 2, the second would come after the end.
    assert PRETRAIN.scaled(2).lr_table == ((1, (0.1,)), (2, (0.01,)))
    assert PRETRAIN.scaled(1).lr_table == ((1, (0.1,)),)
    # Drops landing on one epoch keep the later rates.
    squeezed = Schedule(10, (8, 9), ((1.0, 0.5, 0.25),)).scaled(3)
    assert squeezed.lr_table == ((1, (1.0,)), (3, (0.25,)))


def test_schedule_adjusted():
    assert FINETUNE_100.adjusted(epochs=40).milestones == (21, 31)
    assert FINETUNE_100.adjusted(epochs=40, milestones=[26, 36]).lr_table == (
        protocols.FINETUNE_40.lr_table
    )
    body = FINETUNE_100.adjusted(rates=[[0.02, 0.002, 0.0002], None])
    assert body.lr_table[0] == (1, (0.02, 0.1))
    assert FINETUNE_100.adjusted(milestones=[30], rates=[[0.01, 0.001], [0.1, 0.001]]).lr_table == (
        (1, (0.01, 0.1)),
        (30, (0.001, 0.001)),
    )
    with pytest.raises(ValueError, match=r"one rate per phase \(2 with milestones \[30\]\)"):
        FINETUNE_100.adjusted(milestones=[30])
    with pytest.raises(ValueError, match=r"`milestones` to be increasing epochs in \[2, 100\]"):
        FINETUNE_100.adjusted(milestones=[76, 51])
    with pytest.raises(ValueError, match="`epochs` to be an int >= 1"):
        Schedule(0, (), ((0.1,),))


@pytest.mark.parametrize(
    ("experiment", "parameters", "match"),
    [
        ("paired", {"splits": 0}, r"`splits` to be an int >= 1, but got 0"),
        (
            "paired",
            {"splits": [1, 1]},
            r"`splits` to hold distinct values, but got 1 more than once",
        ),
        (
            "paired",
            {"binary_weight": 1.5},
            r"`binary_weight` to be a float in \[0, 1\], but got 1.5",
        ),
        ("paired", {"replications": 0}, r"`replications` to be an int >= 1"),
        (
            "freeze",
            {"freeze_at": ["2.99"]},
            r"`freeze_at` to be one of the addresses .* got '2.99'",
        ),
        (
            "freeze",
            {"freeze_at": ["head"]},
            r"`freeze_at` to end before the head \('3.16' at most\)",
        ),
        ("freeze", {"freeze_at": "2.9"}, r"`freeze_at` to be a list of layer addresses"),
        ("reset", {"reset_at": ["4"]}, r"`reset_at` to be one of the addresses"),
        ("weight-sweep", {"weights": [0.2, -0.1]}, r"`weights` to be a float in \[0, 1\]"),
        ("heads", {"heads": [0]}, r"`heads` to be an int >= 1"),
        ("long-tail", {"per_class": 0}, r"`per_class` to be an int >= 1"),
        ("paired", {"pretrain": FINETUNE_100}, r"`pretrain` to be a Schedule with 1 role"),
        ("aux-labels", {"aux": ["binary", "superclass"]}, r"`aux` to be kinds of binary, random"),
        ("aux-labels", {"aux": "coarse"}, r"`aux` to be kinds of .* but got 'coarse' \(str\)"),
        ("aux-labels", {"aux": ["coarse", "coarse"]}, r"`aux` to hold distinct values"),
        ("aux-labels", {"aux_weight": 0.0}, r"`aux_weight` to be above 0"),
        ("aux-labels", {"num_groups": 2}, r"`num_groups` to be an int >= 3"),
        ("aux-labels", {"num_groups": 51}, r"`num_groups` to be at most the 50 classes of A"),
    ],
)
def test_bad_parameters_are_named(experiment, parameters, match):
    with pytest.raises(ValueError, match=match):
        protocols.build(experiment, **parameters)


def test_unknown_experiment():
    with pytest.raises(ValueError, match=r"`experiment` to be one of paired, freeze, .* got 'x'"):
        protocols.build("x")


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_smoke_plans_have_every_step_on_the_tiny_model(experiment):
    full = protocols.build(experiment)
    smoke = protocols.build(experiment, **protocols.smoke_parameters(experiment))
    tiny = timm.create_model(SMOKE_OPTIONS.model, num_classes=50, **SMOKE_OPTIONS.model_kwargs)
    assert layer_names(tiny) == ["stem", "1.1", "2.1", "3.1", "head"]
    conditions = {run.id.split("/")[-2] for run in smoke}
    steps = {run.id.split("/")[-1].split("-")[0] for run in smoke}
    # Both conditions (two of the sweeps' values), every kind of step.
    assert conditions <= {run.id.split("/")[-2] for run in full} and len(conditions) >= 2
    assert steps == {run.id.split("/")[-1].split("-")[0] for run in full}
    assert any(run.config.binary_weight > 0 for run in smoke)
    for run in smoke:
        assert run.config.smoke and run.config.model_kwargs == {"depth": 10, "growth_rate": 4}
        assert run.config.epochs == protocols.SMOKE_EPOCHS
        for address in (run.config.freeze, run.config.reset):
            assert address in (None, "0") or address.split(".")[0] in {"1", "2", "3"}


def test_defaults_per_experiment():
    assert protocols.defaults("replications")["long-tail"] == 7
    assert protocols.defaults("per_class") == {"long-tail": 60}
    assert protocols.defaults("transfer")["freeze"].epochs == 40


def test_imagenet_runs_follow_their_schedules():
    plan = protocols.build("paired", setup=DENSENET121_IMAGENET)
    assert len(plan) == 8
    for run in plan:
        expected = IMAGENET_PRETRAIN if run.config.side == "A" else IMAGENET_FINETUNE
        assert run.config.epochs == len(expected[0]), run.id
        assert _engine_rates(run.config) == expected, run.id
        assert (run.config.model, run.config.model_kwargs) == ("densenet121", {})
        assert (run.config.batch_size, run.config.weight_decay, run.config.num_classes) == (
            256,
            1e-4,
            50,
        )


def test_wrn_setup():
    plan = protocols.build("paired", setup=WRN_CIFAR)
    assert plan.ids == protocols.build("paired").ids  # the same plan of runs as the DenseNet's
    for run in plan:
        assert (run.config.model, run.config.model_kwargs) == ("cifar_wrn_28_10", {})
        assert (run.config.batch_size, run.config.weight_decay) == (128, 5e-4)
        assert run.config.binary_weight == (0.4 if "/binary/pretrain" in run.id else 0.0)
    model = timm.create_model("cifar_wrn_28_10", num_classes=50)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    # Every default point is an address of WRN-28-10, "1" and "3" whole blocks.
    from auxtransfer import layer_map

    layers = layer_map(model)
    covered = {a: layers.groups[layers.resolve(a)].address for a in protocols.WRN_FREEZE_AT[1:]}
    assert covered == {
        "1.1": "1.1", "1": "1.3", "2.1": "2.1", "2": "2.3",
        "3.0": "3.0", "3.1": "3.1", "3.2": "3.2", "3": "3.3",
    }  # fmt: skip
    assert set(protocols.WRN_RESET_AT) <= set(covered)
    freeze = protocols.build("freeze", setup=WRN_CIFAR, splits=1)
    assert [run.config.freeze for run in freeze if run.id.startswith("split0/binary/freeze")] == [
        *protocols.WRN_FREEZE_AT
    ]


@pytest.mark.parametrize(
    ("setup", "names"),
    [
        (WRN_CIFAR, ["stem", "1.0", "2.0", "3.0", "head"]),
        (DENSENET121_IMAGENET, ["stem", "1.1", "2.1", "3.1", "4.1", "head"]),
    ],
    ids=["wrn", "imagenet"],
)
def test_other_setups_smoke_on_tiny_models(setup, names):
    options = setup.smoke_options
    tiny = timm.create_model(options.model, num_classes=50, **options.model_kwargs)
    assert layer_names(tiny) == names
    for experiment in setup.offered():
        smoke = protocols.build(
            experiment, setup=setup, **protocols.smoke_parameters(experiment, setup)
        )
        assert len({run.id.split("/")[0] for run in smoke}) == 1  # one split
        for run in smoke:
            assert run.config.smoke and run.config.epochs == protocols.SMOKE_EPOCHS
            assert (run.config.model, run.config.model_kwargs) == (
                options.model,
                options.model_kwargs,
            )
            for address in (run.config.freeze, run.config.reset):
                assert address in (None, "0") or address.split(".")[0] in {"1", "2", "3"}


def test_imagenet_setup_offers_the_paired_experiment_only():
    assert DENSENET121_IMAGENET.experiments == ("paired",)
    assert protocols.defaults("splits", DENSENET121_IMAGENET) == {"paired": 2}
    with pytest.raises(ValueError, match=r"`experiment` to be one of paired, but got 'freeze'"):
        protocols.build("freeze", setup=DENSENET121_IMAGENET)


def test_setup_checks_its_parameters():
    with pytest.raises(ValueError, match=r"`experiments` to be names of paired, .* got \['nope'\]"):
        Setup("x", experiments=("nope",))
    with pytest.raises(
        ValueError, match=r"`parameters` to name parameters of paired .* got freeze_at"
    ):
        Setup("x", parameters={"freeze_at": ("0",)}, experiments=("paired",))
    with pytest.raises(TypeError, match="Expected `options` to be RunOptions"):
        Setup("x", options={"model": "resnet18"})
    # A given parameter wins over the setup's default; the setup's over the builder's.
    plan = protocols.build("paired", setup=WRN_CIFAR, splits=[5])
    assert plan.ids[0] == "split5/baseline/pretrain"
    assert plan.runs[0].config.batch_size == 128


def test_run_options_num_workers_reach_every_run():
    plan = protocols.build("paired", options=RunOptions(num_workers=6))
    assert {run.config.num_workers for run in plan} == {6}
    with pytest.raises(ValueError, match="`num_workers` to be an int >= 0"):
        RunOptions(num_workers=-1)


@pytest.mark.parametrize("rates", [None, [[0.1, 0.01, 0.001]]])
def test_schedule_adjusted_refuses_zero_epochs_with_milestones_too(rates):
    # `epochs or self.epochs` took 0 for "not given": 175 epochs trained instead of a refusal.
    with pytest.raises(ValueError, match="`epochs` to be an int >= 1, but got 0"):
        PRETRAIN.adjusted(epochs=0, milestones=[126, 151], rates=rates)


def test_the_docs_example_adds_an_experiment_as_a_row(capsys, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "experiments.md").read_text()
    code = re.search(r"<!-- example: new-experiment -->\n```python\n(.*?)\n```", text, re.S)
    shown = re.search(r"<!-- output: new-experiment -->\n```text\n(.*?)\n```", text, re.S)
    assert code and shown
    monkeypatch.setattr(protocols, "EXPERIMENTS", dict(protocols.EXPERIMENTS))
    exec(code.group(1), {})
    assert capsys.readouterr().out == shown.group(1) + "\n"
    plan = protocols.build("frozen-weights")
    assert [run.config.freeze for run in plan if run.config.side == "B"] == ["2"] * 3
