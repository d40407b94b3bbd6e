import csv
import json

import pytest
import timm
import torch

import auxtransfer.models  # noqa: F401  (registers the CIFAR models)
from auxtransfer import freeze_until, layer_groups, reset_after, reset_classifier
from auxtransfer.experiments import load_backbone
from auxtransfer.experiments.checkpoint import read_weights
from auxtransfer.experiments.rundir import parse_learning_rates
from auxtransfer.experiments.settings import Schedule
from auxtransfer.experiments.train import RunConfig, train_run
from auxtransfer.experiments.transfer import set_learning_rates

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
# DenseNet-BC-10 (one layer per block), k=4: the paper's network, as small as it gets.
TINY = {"model": "cifar_densenet_bc_100", "model_kwargs": {"depth": 10, "growth_rate": 4}}
FINETUNE = ((1, (0.01, 0.1)), (2, (0.01, 0.01)), (3, (0.001, 0.001)))


def _data(n, seed, classes):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, classes, (n,), generator=g)


def _run(config, run_dir, **kwargs):
    classes = config.num_classes
    return train_run(
        config, run_dir, _data(32, 0, classes), _data(16, 1, classes), mean=MEAN, std=STD,
        **kwargs,
    )  # fmt: skip


def _rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A finished A run with the binary head: 3 epochs, 5 classes."""
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    config = RunConfig(
        **TINY, num_classes=5, epochs=3, lr=0.1, batch_size=8, binary_weight=0.4, side="A"
    )
    results = _run(config, out)
    return out, results


def _transfer(pretrained, **kwargs):
    settings = {
        **TINY,
        "num_classes": 3,
        "epochs": 3,
        "batch_size": 8,
        "lr_table": FINETUNE,
        "transfer_from": "../pretrain",
        "side": "B",
        **kwargs,
    }
    return RunConfig(**settings)


def test_best_weights_are_those_of_the_best_epoch(pretrained):
    run, results = pretrained
    state = torch.load(run / "best.pt", weights_only=True)
    rows = _rows(run)
    assert state["epoch"] == results["best_epoch"]
    assert state["test_error"] == pytest.approx(float(rows[state["epoch"] - 1]["test_error"]))
    assert state["test_error"] == min(float(r["test_error"]) for r in rows)
    if state["epoch"] == len(rows):  # the best is the last: best.pt holds last.pt's weights
        last = torch.load(run / "last.pt", weights_only=True)["model"]
        assert all(torch.equal(last[k], v) for k, v in state["model"].items())
    assert not list(run.glob(".*.tmp"))


def test_metrics_log_the_class_and_binary_terms_of_the_loss(pretrained):
    run, _ = pretrained
    for row in _rows(run):
        main, binary = float(row["train_main_loss"]), float(row["train_binary_loss"])
        assert float(row["train_loss"]) == pytest.approx(0.6 * main + 0.4 * binary, rel=1e-6)
        assert main != pytest.approx(float(row["train_loss"]), rel=1e-3)


def test_load_backbone_gives_the_plain_model_with_a_fresh_classifier(pretrained):
    run, _ = pretrained
    weights = read_weights(run / "best.pt")
    model = load_backbone(run, num_classes=3, seed=7)
    assert not any(k.startswith(("aux_head", "partition")) for k in model.state_dict())
    for name, value in model.state_dict().items():
        if not name.startswith("classifier."):
            assert torch.equal(value, weights[f"backbone.{name}"]), name
    twin = timm.create_model("cifar_densenet_bc_100", num_classes=5, **TINY["model_kwargs"])
    reset_classifier(twin, 3, seed=7)
    assert torch.equal(model.classifier.weight, twin.classifier.weight)
    assert torch.equal(model.classifier.bias, torch.zeros(3))
    same = load_backbone(run, which="last")
    assert same.classifier.out_features == 5
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    assert torch.equal(same.classifier.weight, last["backbone.classifier.weight"])


def test_load_backbone_refuses_what_it_cannot_load(tmp_path, pretrained):
    run, _ = pretrained
    with pytest.raises(ValueError, match=r"`which` to be 'best' or 'last', but got 'first'"):
        load_backbone(run, which="first")
    with pytest.raises(FileNotFoundError, match=r"a run directory with a config.json"):
        load_backbone(tmp_path)
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"best.pt with the run's best weights"):
        load_backbone(tmp_path)


def test_fine_tuning_follows_the_learning_rate_table(pretrained):
    run, _ = pretrained
    out = run.parent / "finetune"
    results = _run(_transfer(pretrained), out)
    assert results["epochs"] == 3
    saved = json.loads((out / "config.json").read_text())
    assert saved["transfer_from"] == "../pretrain" and saved["side"] == "B"
    rates = [parse_learning_rates(row["lr_groups"]) for row in _rows(out)]
    # Kept: everything but the classifier; new: the classifier.
    assert rates == [
        {"stem..3.1": 0.01, "head": 0.1},
        {"stem..3.1": 0.01, "head": 0.01},
        {"stem..3.1": 0.001, "head": 0.001},
    ]
    assert [float(row["lr"]) for row in _rows(out)] == [0.1, 0.01, 0.001]


def test_freezing_keeps_the_frozen_layers_of_a(pretrained):
    run, _ = pretrained
    out = run.parent / "freeze-2"
    _run(_transfer(pretrained, freeze="2", bn="freeze"), out)
    start = read_weights(run / "best.pt")
    end = torch.load(out / "last.pt", weights_only=True)["model"]
    model = load_backbone(run)
    frozen = {
        t for g in layer_groups(model) if g.address in ("stem", "1.1", "2.1") for t in g.tensors
    }
    assert frozen
    for name in frozen:  # weights and running statistics alike (bn="freeze")
        assert torch.equal(end[name], start[f"backbone.{name}"]), name
    assert not torch.equal(
        end["features.denseblock3.denselayer1.conv1.weight"],
        start["backbone.features.denseblock3.denselayer1.conv1.weight"],
    )
    rates = [parse_learning_rates(row["lr_groups"]) for row in _rows(out)]
    assert rates[0] == {"3.1": 0.01, "head": 0.1}  # frozen layers are in no group


def test_reset_reinitialises_what_follows_and_trains_it_at_the_new_rate(pretrained):
    run, _ = pretrained
    out = run.parent / "reset-1.1"
    config = _transfer(pretrained, reset="1.1", epochs=1, lr_table=FINETUNE[:1])
    _run(config, out)
    rates = parse_learning_rates(_rows(out)[0]["lr_groups"])
    assert rates == {"stem..1.1": 0.01, "2.1..head": 0.1}
    # The model the run started from: A's weights up to 1.1, fresh ones after it (here from
    # the CIFAR model's init_weights(): timm's default-depth twin does not fit depth 10).
    start = load_backbone(run, num_classes=3, seed=config.seed)
    a_weights = {k: v.clone() for k, v in start.state_dict().items()}
    assert reset_after(start, "1.1", seed=config.seed).init == "init_weights"
    after = start.state_dict()
    assert torch.equal(after["features.conv0.weight"], a_weights["features.conv0.weight"])
    name = "features.denseblock3.denselayer1.conv1.weight"
    assert not torch.equal(after[name], a_weights[name])
    norm = "features.denseblock3.denselayer1.norm1"
    assert torch.equal(after[f"{norm}.weight"], torch.ones_like(after[f"{norm}.weight"]))
    assert torch.equal(after[f"{norm}.running_var"], torch.ones_like(after[f"{norm}.running_var"]))


def test_a_transfer_run_resumes_exactly(pretrained):
    run, _ = pretrained
    straight, resumed = run.parent / "straight", run.parent / "resumed"
    config = _transfer(pretrained, freeze="1", bn="update")
    _run(config, straight)
    assert _run(config, resumed, stop_after=1) is None
    _run(config, resumed, resume=True)
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(
        torch.load(straight / "best.pt", weights_only=True)["model"]["classifier.weight"],
        torch.load(resumed / "best.pt", weights_only=True)["model"]["classifier.weight"],
    )


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (
            {"transfer_from": "../missing"},
            r"`transfer_from` to name a finished run, but .*missing has no results.json",
        ),
        ({"lr_table": ()}, r"`lr_table` with two rates per entry .* for a transfer run"),
        (
            {"lr_table": ((1, (0.1,)),)},
            r"`lr_table` to give 2 rate\(s\) per entry .* but it gives 1",
        ),
        (
            {"model_kwargs": {"depth": 16, "growth_rate": 4}},
            r"`model_kwargs` to be the one of the run in",
        ),
        ({"freeze": "9.9"}, r"`address` to be one of the addresses of CifarDenseNet"),
        ({"bn": "eval"}, r"`bn` to be 'freeze' or 'update', but got 'eval'"),
        ({"side": "C"}, r"`side` to be one of \('all', 'A', 'B'\), but got 'C'"),
        ({"transfer_weights": "first"}, r"`transfer_weights` to be one of \('best', 'last'\)"),
    ],
)
def test_bad_transfer_settings_write_nothing(pretrained, settings, match):
    run, _ = pretrained
    out = run.parent / "refused"
    with pytest.raises(ValueError, match=match):
        _run(_transfer(pretrained, **settings), out)
    assert not out.exists()


def test_freeze_or_reset_need_a_transfer(tmp_path):
    config = RunConfig(**TINY, num_classes=3, epochs=1, batch_size=8, freeze="1")
    with pytest.raises(ValueError, match=r"`transfer_from` with `freeze` or `reset`"):
        _run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_learning_rate_tables():
    table = [[1, [0.01, 0.1]], [51, [0.01, 0.01]], [76, [0.001, 0.001]]]
    schedule = Schedule.from_table(table, epochs=100)
    assert schedule.lr_table == ((1, (0.01, 0.1)), (51, (0.01, 0.01)), (76, (0.001, 0.001)))
    groups = [{"role": 0, "lr": 0.0}, {"role": 1, "lr": 0.0}]
    seen = {}
    for epoch in (1, 50, 51, 75, 76, 100):
        set_learning_rates(groups, epoch, schedule)
        seen[epoch] = [g["lr"] for g in groups]
    assert seen == {
        1: [0.01, 0.1], 50: [0.01, 0.1], 51: [0.01, 0.01], 75: [0.01, 0.01],
        76: [0.001, 0.001], 100: [0.001, 0.001],
    }  # fmt: skip
    # A run without a table: each group its own starting rate, times gamma per milestone
    # passed, exactly as MultiStepLR computes it.
    from auxtransfer.experiments.train import _schedule

    config = RunConfig(**TINY, num_classes=3, epochs=175, milestones=(126, 151), gamma=0.1)
    groups = [{"initial_lr": 0.1, "lr": 0.0}, {"initial_lr": 0.01, "lr": 0.0}]
    schedule, roles = _schedule(config, groups)
    set_learning_rates(groups, 151, schedule, roles)
    assert [g["lr"] for g in groups] == [0.1 * 0.1**2, 0.01 * 0.1**2]
    model = torch.nn.Linear(2, 2)
    reference = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.01}]
    )
    steps = torch.optim.lr_scheduler.MultiStepLR(reference, milestones=[125, 150], gamma=0.1)
    for epoch in range(1, 176):  # MultiStepLR counts epochs from 0
        set_learning_rates(groups, epoch, schedule, roles)
        assert [g["lr"] for g in groups] == pytest.approx([g["lr"] for g in reference.param_groups])
        reference.step()
        steps.step()
    for bad, error in [
        ((), TypeError),
        (((2, (0.1,)),), ValueError),
        (((1, (0.1,)), (1, (0.01,))), ValueError),
        (((1, (0.1,)), (5, (0.01, 0.1))), ValueError),
        (((1, (-0.1,)),), ValueError),
        (((1, (0.1,)), (101, (0.01,))), ValueError),
        (((1, ("0.1",)),), TypeError),
    ]:
        with pytest.raises(error, match=r"`lr_table` to be \(\(from_epoch"):
            Schedule.from_table(bad, epochs=100)


def test_freeze_zero_freezes_nothing(pretrained):
    run, _ = pretrained
    model = load_backbone(run, num_classes=3)
    freeze_until(model, "1")  # a stale freeze on another object does not matter
    out = run.parent / "freeze-0"
    _run(_transfer(pretrained, freeze="0", epochs=1, lr_table=FINETUNE[:1]), out)
    rates = parse_learning_rates(_rows(out)[0]["lr_groups"])
    assert rates == {"stem..3.1": 0.01, "head": 0.1}


def test_a_transfer_run_records_its_scores_before_training_on_b(pretrained):
    """scores.json: LogME and H-score of B's training features at the classifier's input,
    LEEP and NCE of A's classifier, as the probe functions give them on features taken by
    hand from A's network (nothing is re-initialised, so the transferred features are A's)."""
    import json

    from auxtransfer import find_classifier
    from auxtransfer.probe import hscore, layer_scores, leep, logme, nce

    run, _ = pretrained
    out = run.parent / "scored"
    config = _transfer(pretrained)
    _run(config, out)
    saved = json.loads((out / "scores.json").read_text())
    images, labels = _data(32, 0, 3)
    x = (images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    source = load_backbone(run).eval()
    taken = []
    source.get_submodule(find_classifier(source)).register_forward_pre_hook(
        lambda m, a: taken.append(a[0])
    )
    with torch.no_grad():
        probs = source(x).double().softmax(-1)
    f = taken[0].double()
    assert saved["samples"] == 32
    assert saved["logme"] == pytest.approx(logme(f, labels), rel=1e-4)
    assert saved["hscore"] == pytest.approx(hscore(f, labels), rel=1e-3)
    assert saved["leep"] == pytest.approx(leep(probs, labels), rel=1e-4)
    assert saved["nce"] == pytest.approx(nce(probs.argmax(1), labels), rel=1e-6)
    # LogME at every address of A's network but the head, as layer_scores gives it.
    by_layer = layer_scores(source, x, labels)
    assert list(saved["layers"]) == list(by_layer)
    assert saved["layers"] == pytest.approx(by_layer, rel=1e-4)


def test_scoring_draws_no_random_numbers(tmp_path, monkeypatch):
    """A transfer run that scores trains exactly as one that does not: a WRN with dropout,
    whose masks come from the global generator that building A's network would advance."""
    import json

    from auxtransfer.experiments import train as train_module

    wrn = {
        "model": "cifar_wrn_28_10",
        "model_kwargs": {"depth": 10, "widen_factor": 1, "drop_rate": 0.3},
    }
    pre = RunConfig(**wrn, num_classes=5, epochs=1, lr=0.1, batch_size=8, side="A")
    _run(pre, tmp_path / "pretrain")
    config = RunConfig(**wrn, num_classes=3, epochs=2, batch_size=8, lr_table=FINETUNE[:2],
                       transfer_from="../pretrain", side="B")  # fmt: skip
    _run(config, tmp_path / "scored")
    assert json.loads((tmp_path / "scored" / "scores.json").read_text())["samples"] == 32
    monkeypatch.setattr(train_module, "load_backbone", lambda *a, **k: torch.nn.Identity())
    monkeypatch.setattr(train_module, "transfer_scores", lambda *a: {})
    _run(config, tmp_path / "unscored")
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(tmp_path / "unscored")) == drop(_rows(tmp_path / "scored"))
