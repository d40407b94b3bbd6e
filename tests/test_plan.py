"""Plans of runs: ids, selection, the checks before writing, skip / resume, and run data."""

import json

import pytest
import torch

from auxtransfer.experiments import protocols
from auxtransfer.experiments.execute import execute
from auxtransfer.experiments.plan import (
    Plan,
    PlannedRun,
    RunDirConflictError,
    check_data,
    check_plan,
    format_summary,
    summarise,
)
from auxtransfer.experiments.rundir import RunDir, parse_learning_rates
from auxtransfer.experiments.sources import Cifar100, SyntheticCifar100, run_data
from auxtransfer.experiments.splits import split_classes
from auxtransfer.experiments.train import RunConfig

# FakeTrain's weights are stand-ins that the similarity of paired A runs, measured after
# the runs (experiments.similarity), cannot read; it says so, and that is not under test here.
pytestmark = pytest.mark.filterwarnings("ignore:no similarity for:RuntimeWarning")


def _config(**kwargs):
    return RunConfig(model="cifar_densenet_bc_100", num_classes=50, epochs=2, **kwargs)


def _smoke(experiment="paired"):
    return protocols.build(experiment, **protocols.smoke_parameters(experiment))


class FakeTrain:
    """Stands in for train_run: records each call and writes the files that mark a run."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, run_dir, train_data, test_data, *, resume, stop_after, **kwargs):
        self.calls.append((str(run_dir), resume, stop_after, len(train_data[1])))
        run = RunDir(run_dir)
        run.write_config(config.to_json())
        done = len(run.read_metrics()) if run.metrics_path.exists() else 0
        last = config.epochs if stop_after is None else min(config.epochs, done + stop_after)
        for epoch in range(done + 1, last + 1):
            run.append_metrics({"epoch": epoch, "test_error": 50.0}, fresh=epoch == 1)
        run.checkpoint_path.write_bytes(b"checkpoint")
        if last < config.epochs:
            return None
        results = {"epochs": config.epochs, "final_test_error": 50.0, "best_test_error": 50.0,
                   "best_epoch": 1}  # fmt: skip
        (run.path / "best.pt").write_bytes(b"weights")  # what a transfer from it reads
        run.write_results(results)
        return results


def test_plan_rejects_bad_ids_repeats_and_order():
    pre = PlannedRun("s/pretrain", _config(side="A", split_seed=0))
    fine = PlannedRun("s/fine", _config(side="B", split_seed=0, transfer_from="../pretrain"))
    assert fine.requires == "s/pretrain"
    assert Plan([pre, fine]).ids == ["s/pretrain", "s/fine"]
    with pytest.raises(ValueError, match="comes before 's/pretrain'"):
        Plan([fine, pre])
    with pytest.raises(ValueError, match="'s/pretrain' appears twice"):
        Plan([pre, pre])
    for bad in ("../x", "/abs", "a//b", "a b", ""):
        with pytest.raises(ValueError, match="relative paths of names"):
            Plan([PlannedRun(bad, _config())])
    # A transfer from a run outside the plan has no dependency in it.
    assert PlannedRun("x", _config(transfer_from="/runs/a")).requires is None


def test_select_keeps_plan_order_and_names_unknown_ids():
    plan = _smoke()
    picked = plan.select(["split0/binary/finetune", "split0/baseline/pretrain"])
    assert [run.id for run in picked] == ["split0/baseline/pretrain", "split0/binary/finetune"]
    with pytest.raises(
        ValueError,
        match=r"'split0/binary/fine' is not in the plan; valid ids: split0/binary/finetune",
    ):
        plan.select(["split0/binary/fine"])


def test_check_plan_needs_the_pretraining(tmp_path):
    plan = _smoke()
    with pytest.raises(
        ValueError,
        match=r"'split0/binary/finetune' transfers from 'split0/binary/pretrain', which has not finished",
    ):
        check_plan(plan, tmp_path, ["split0/binary/finetune"])
    assert not list(tmp_path.iterdir())
    # Selected together, or finished before, it is fine.
    check_plan(plan, tmp_path, ["split0/binary/finetune", "split0/binary/pretrain"])
    execute(plan, tmp_path, SyntheticCifar100(), ids=["split0/binary/pretrain"], train=FakeTrain())
    assert [s for _, s in check_plan(plan, tmp_path, ["split0/binary/finetune"])] == ["new"]


def test_check_plan_refuses_a_run_directory_with_other_settings(tmp_path):
    plan = _smoke()
    execute(
        plan, tmp_path, SyntheticCifar100(), ids=["split0/baseline/pretrain"], train=FakeTrain()
    )
    other = protocols.build(
        "paired", **{**protocols.smoke_parameters("paired"), "binary_weight": 0.3}
    )
    check_plan(other, tmp_path, ["split0/baseline/pretrain"])  # the baseline is the same
    changed = protocols.build(
        "paired",
        **{**protocols.smoke_parameters("paired"), "pretrain": protocols.PRETRAIN.scaled(3)},
    )
    with pytest.raises(
        RunDirConflictError, match=r"split0/baseline/pretrain.*\(epochs, lr_table differ\)"
    ):
        check_plan(changed, tmp_path)


def test_check_data(tmp_path):
    plan = protocols.build(
        "long-tail", **{**protocols.smoke_parameters("long-tail"), "per_class": 5}
    )
    with pytest.raises(ValueError, match=r"`per_class` to be at most the 4 training images"):
        check_data(plan, SyntheticCifar100())
    check_data(plan, SyntheticCifar100(train_per_class=5))
    with pytest.raises(FileNotFoundError, match="CIFAR-100 is not under"):
        check_data(plan, Cifar100(tmp_path))
    check_data(plan, Cifar100(tmp_path, download=True))  # would download
    assert not list(tmp_path.iterdir())


def test_a_run_directory_from_before_a_setting_existed_is_the_same_run(tmp_path):
    """A config.json written before a setting was added lacks it: at its default that is
    the same run (skipped, not a conflict); at another value it is not."""
    plan = _smoke()
    execute(plan, tmp_path, SyntheticCifar100(), ids=["split0/binary/pretrain"], train=FakeTrain())
    path = tmp_path / "split0/binary/pretrain/config.json"
    saved = json.loads(path.read_text())
    for added in ("num_groups", "aux_labels"):
        del saved[added]
    path.write_text(json.dumps(saved))
    assert [s for _, s in check_plan(plan, tmp_path, ["split0/binary/pretrain"])] == ["finished"]
    wider = protocols.build(
        "aux-labels", **protocols.smoke_parameters("aux-labels"), aux=["random"]
    )
    run = next(r for r in wider if r.id.endswith("random20/pretrain"))
    (tmp_path / "split0/random20").mkdir()
    (tmp_path / "split0/binary/pretrain").rename(tmp_path / "split0/random20/pretrain")
    with pytest.raises(RunDirConflictError, match=r"\(condition, num_groups differ\)"):
        check_plan(Plan([run]), tmp_path)


class _TenCoarseLabels(SyntheticCifar100):
    """Coarse labels of another count than the plan's 20."""

    def coarse_labels(self):
        return torch.arange(100) % 10


def test_a_coarse_partition_that_cannot_be_made_stops_before_anything_is_written(tmp_path):
    plan = protocols.build("aux-labels", **protocols.smoke_parameters("aux-labels"))
    for jobs in (1, 2):
        with pytest.raises(ValueError, match=r"`num_groups` to be the 10 coarse classes"):
            execute(plan, tmp_path, _TenCoarseLabels(), train=FakeTrain(), jobs=jobs)
        assert not list(tmp_path.iterdir())


class _NoCoarseLabels(SyntheticCifar100):
    """A data source without a grouping of its classes (as ImageNet-100)."""

    coarse_labels = None


def test_coarse_labels_are_checked_before_anything_is_written(tmp_path):
    plan = protocols.build("aux-labels", **protocols.smoke_parameters("aux-labels"))
    source = _NoCoarseLabels()
    with pytest.raises(ValueError, match=r"coarse labels .* for run 'split0/coarse/pretrain'"):
        execute(plan, tmp_path, source, train=FakeTrain())
    assert not list(tmp_path.iterdir())
    # The runs that draw their partitions need no coarse labels.
    execute(plan, tmp_path, source, train=FakeTrain(), ids=["split0/random20/pretrain"])


def test_execute_gives_a_coarse_run_its_partition(tmp_path):
    plan = protocols.build("aux-labels", **protocols.smoke_parameters("aux-labels"))
    train, source = FakeTrain(), SyntheticCifar100()
    given = {}
    train_and_keep = lambda config, run_dir, *a, partition=None, **k: (  # noqa: E731
        given.setdefault(config.condition, partition),
        train(config, run_dir, *a, **k),
    )[1]
    execute(plan, tmp_path, source, train=train_and_keep)
    a_classes, _ = split_classes(100, seed=0)
    coarse = source.coarse_labels()[a_classes].tolist()
    order = sorted(set(coarse))  # the groups A holds, renumbered in order of their ids
    assert given["coarse"].tolist() == [[order.index(g) for g in coarse]]
    assert {c: p for c, p in given.items() if c != "coarse"} == dict.fromkeys(
        ("baseline", "binary", "random20"), None
    )


def test_a_run_that_raises_is_reported_and_the_runs_that_do_not_need_it_finish(tmp_path):
    plan = _smoke()
    fake = FakeTrain()

    def train(config, run_dir, *args, **kwargs):
        if str(run_dir).endswith("baseline/pretrain"):
            raise ValueError("Expected last.pt to be an auxtransfer checkpoint\n(details)")
        return fake(config, run_dir, *args, **kwargs)

    lines = []
    outcomes = execute(plan, tmp_path, SyntheticCifar100(), train=train, report=lines.append)
    assert [(o.id.split("/", 1)[1], o.status) for o in outcomes] == [
        ("baseline/pretrain", "failed"), ("binary/pretrain", "trained"),
        ("baseline/finetune", "blocked"), ("binary/finetune", "trained"),
    ]  # fmt: skip
    assert outcomes[0].error == "ValueError: Expected last.pt to be an auxtransfer checkpoint"
    assert outcomes[2].error == "the run it transfers from, split0/baseline/pretrain, failed"
    assert (
        "failed split0/baseline/pretrain: ValueError: Expected last.pt to be an auxtransfer checkpoint"
        in lines
    )
    assert "not started split0/baseline/finetune: the run it transfers from, " \
        "split0/baseline/pretrain, failed" in lines  # fmt: skip
    assert not (tmp_path / "split0/baseline/finetune").exists()


def test_metrics_without_their_checkpoint_are_not_overwritten(tmp_path):
    plan = _smoke()
    execute(plan, tmp_path, SyntheticCifar100(), train=FakeTrain(), ids=["split0/binary/pretrain"])
    run = RunDir(tmp_path / "split0/binary/pretrain")
    run.results_path.unlink()
    run.checkpoint_path.unlink()  # deleted, say, because it was damaged
    before = run.metrics_path.read_bytes()
    with pytest.raises(
        RunDirConflictError, match=r"metrics\.csv holds the metrics of a run whose last\.pt is gone"
    ):
        execute(plan, tmp_path, SyntheticCifar100(), train=FakeTrain())
    assert run.metrics_path.read_bytes() == before


def test_a_damaged_results_file_is_refused_naming_it(tmp_path):
    plan = _smoke()
    execute(plan, tmp_path, SyntheticCifar100(), train=FakeTrain(), ids=["split0/binary/pretrain"])
    path = tmp_path / "split0/binary/pretrain/results.json"
    path.write_text('{"epochs": 2, "final')  # cut short
    with pytest.raises(
        RunDirConflictError,
        match=r"results\.json to hold a finished run's results, but it does not parse .*: delete it; the run then resumes at its last epoch",
    ):
        check_plan(plan, tmp_path)


def test_execute_skips_resumes_and_stops(tmp_path):
    plan = _smoke()
    train = FakeTrain()
    first = execute(plan, tmp_path, SyntheticCifar100(), train=train, stop_after=5)
    # 2 + 2 epochs, then 1 of the third run: it stops there, unfinished.
    assert [(o.id, o.status) for o in first] == [
        ("split0/baseline/pretrain", "trained"), ("split0/binary/pretrain", "trained"),
        ("split0/baseline/finetune", "stopped"),
    ]  # fmt: skip
    assert [c[2] for c in train.calls] == [5, 3, 1]
    assert [c[3] for c in train.calls] == [200, 200, 200]  # 4 images of each of 50 classes
    train.calls.clear()
    second = execute(plan, tmp_path, SyntheticCifar100(), train=train)
    assert [o.status for o in second] == ["skipped", "skipped", "resumed", "trained"]
    assert [(c[0].removeprefix(str(tmp_path)), c[1]) for c in train.calls] == [
        ("/split0/baseline/finetune", True), ("/split0/binary/finetune", False),
    ]  # fmt: skip
    assert all(o.results["final_test_error"] == 50.0 for o in second)


def test_summary_table(tmp_path):
    plan = _smoke()
    execute(plan, tmp_path, SyntheticCifar100(), train=FakeTrain(), stop_after=3)
    rows = summarise(plan, tmp_path)
    assert [row["state"] for row in rows] == ["finished", "unfinished", "new", "new"]
    lines = format_summary(rows).splitlines()
    assert lines[0].split() == ["run", "data", "final", "error", "best", "error", "(epoch)"]
    assert lines[1].split() == ["split0/baseline/pretrain", "A", "50.00", "50.00", "(1)"]
    assert lines[2].split() == ["split0/binary/pretrain", "A", "unfinished"]
    assert lines[4].split() == ["split0/binary/finetune", "B", "new"]


def test_run_data_cuts_sides_and_images_per_class():
    whole = SyntheticCifar100(train_per_class=5, test_per_class=2).load()
    assert whole[0][0].shape == (500, 3, 32, 32) and whole[0][0].dtype == torch.uint8
    a, b = split_classes(100, seed=3)
    for side, classes in (("A", a), ("B", b)):
        (x, y), (_, ty) = run_data(whole, num_classes=100, side=side, split_seed=3)
        assert (len(y), len(ty)) == (250, 100)
        # Relabelled 0..49 in the order of the side's classes, images kept with their labels.
        original = whole[0][1][torch.isin(whole[0][1], torch.tensor(classes))]
        assert torch.equal(torch.tensor(classes)[y], original)
        for label in range(50):
            assert torch.equal(x[y == label], whole[0][0][whole[0][1] == classes[label]])
    (x, y), (_tx, ty) = run_data(
        whole, num_classes=100, side="B", split_seed=3, per_class=2, seed=1
    )
    assert torch.equal(torch.bincount(y), torch.full((50,), 2)) and len(ty) == 100
    (x2, _y2), _ = run_data(whole, num_classes=100, side="B", split_seed=3, per_class=2, seed=2)
    assert not torch.equal(x, x2)  # another replication, other images
    assert len(run_data(whole, num_classes=100)[0][1]) == 500
    with pytest.raises(ValueError, match="`split_seed` for side='A'"):
        run_data(whole, num_classes=100, side="A")
    with pytest.raises(ValueError, match="`side` to be 'A', 'B' or 'all'"):
        run_data(whole, num_classes=100, side="C", split_seed=0)


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _rows(run_dir):
    return [
        {k: v for k, v in row.items() if k != "seconds"} for row in RunDir(run_dir).read_metrics()
    ]


def test_interrupted_smoke_sweep_resumes_to_the_same_result(tmp_path, one_thread):
    plan, source = _smoke(), SyntheticCifar100()
    straight, split = tmp_path / "straight", tmp_path / "interrupted"
    assert [o.status for o in execute(plan, straight, source)] == ["trained"] * 4

    # The pre-trainings alone (as one --run call), then a call stopped after one epoch.
    pretrainings = ["split0/baseline/pretrain", "split0/binary/pretrain"]
    execute(plan, split, source, ids=pretrainings)
    stopped = execute(plan, split, source, stop_after=1)
    assert [o.status for o in stopped] == ["skipped", "skipped", "stopped"]
    assert RunDir(split / "split0/baseline/finetune").is_unfinished()
    before = {run_id: _snapshot(split / run_id) for run_id in pretrainings}

    resumed = execute(plan, split, source)
    assert [o.status for o in resumed] == ["skipped", "skipped", "resumed", "trained"]
    # Finished runs untouched: same bytes, same modification times.
    assert {run_id: _snapshot(split / run_id) for run_id in pretrainings} == before
    for run in plan:
        a, b = straight / run.id, split / run.id
        assert json.loads((a / "results.json").read_text()) == json.loads(
            (b / "results.json").read_text()
        )
        assert _rows(a) == _rows(b), run.id
        wa = torch.load(a / "last.pt", weights_only=True)["model"]
        wb = torch.load(b / "last.pt", weights_only=True)["model"]
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), run.id
        # The engine trained every role at the rate of the plan's table.
        for row in RunDir(a).read_metrics():
            logged = list(parse_learning_rates(row["lr_groups"]).values())
            assert logged == list(run.config.schedule.rates_at(int(row["epoch"]))), run.id
        config = json.loads((a / "config.json").read_text())
        assert config["smoke"] is True
    binary = RunDir(straight / "split0/binary/pretrain").read_metrics()
    assert all(row["train_binary_loss"] != "" for row in binary)


def test_resuming_says_the_epochs_of_the_checkpoint(tmp_path, one_thread):
    """ "resuming ID (E epochs, K done)": K is the checkpoint's, which the run resumes after,
    even when metrics.csv lost its rows (rewritten from the checkpoint as the run resumes)."""
    plan, source, run_id = _smoke(), SyntheticCifar100(), "split0/baseline/pretrain"
    execute(plan, tmp_path, source, ids=[run_id], stop_after=1)
    metrics = RunDir(tmp_path / run_id).metrics_path
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # the header alone
    lines = []
    (outcome,) = execute(plan, tmp_path, source, ids=[run_id], report=lines.append)
    assert outcome.status == "resumed"
    assert lines == [f"resuming {run_id} (2 epochs, 1 done)"]
    assert [row["epoch"] for row in RunDir(tmp_path / run_id).read_metrics()] == ["1", "2"]
