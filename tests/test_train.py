import argparse
import csv
import json
import shutil
import uuid

import pytest
import torch

from auxtransfer.experiments.checkpoint import (
    gather_rng_states,
    load_checkpoint,
    restore_rng_state,
)
from auxtransfer.experiments.loop import group_names, head_learning_rate, learning_rates
from auxtransfer.experiments.rundir import format_learning_rates, parse_learning_rates
from auxtransfer.experiments.train import RunConfig, train_run

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(
        0, 4, (n,), generator=g
    )


def _config(**kwargs):
    # WRN-10-1 with dropout: small, and dropout exercises the saved random state.
    settings = {
        "model": "cifar_wrn_28_10",
        "num_classes": 4,
        "epochs": 4,
        "lr": 0.05,
        "batch_size": 16,
        "model_kwargs": {"depth": 10, "widen_factor": 1, "drop_rate": 0.3},
        **kwargs,
    }
    return RunConfig(**settings)


def _run(config, run_dir, **kwargs):
    data = {"train_data": _data(48, 0), "test_data": _data(16, 1), **kwargs}
    return train_run(config, run_dir, mean=MEAN, std=STD, **data)


def _metrics(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _checkpoint(path):
    """A last.pt, its metrics rows without their timings."""
    state = torch.load(path, weights_only=True)
    state["metrics"] = _without_timing(state["metrics"])
    return state


def _files(folder):
    """Every file under ``folder`` with its bytes ({} when the folder does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_same(a, b, where="state"):
    """Exact, recursive equality: tensors bitwise (with dtype and shape), the rest with ==."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_exact_comparison_sees_what_str_hides():
    # A difference deep inside a large tensor: str() shows only its ends.
    a = {"state": {0: {"momentum_buffer": torch.zeros(5000)}}, "param_groups": [{"lr": 0.1}]}
    b = {"state": {0: {"momentum_buffer": torch.zeros(5000)}}, "param_groups": [{"lr": 0.1}]}
    b["state"][0]["momentum_buffer"][2500] = 1e-9
    assert str(a) == str(b)
    with pytest.raises(AssertionError, match=r"\['momentum_buffer'\]"):
        _assert_same(a, b)
    _assert_same(a, a)
    with pytest.raises(AssertionError, match="lr"):
        _assert_same(a, {**a, "param_groups": [{"lr": 0.1 + 1e-12}]})
    with pytest.raises(AssertionError, match="list != tuple"):
        _assert_same([1], (1,))


def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = _config(milestones=(3,))  # the learning rate drops after the resume point
    _run(config, straight)
    assert _run(config, resumed, stop_after=2) is None  # a job stopped after 2 of 4 epochs
    assert not (resumed / "results.json").exists()
    _run(config, resumed, resume=True)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["epoch"] == 4
    # The rows it keeps are the file's, timings aside.
    assert a["metrics"] == _metrics(straight) and b["metrics"] == _metrics(resumed)
    a["metrics"], b["metrics"] = _without_timing(a["metrics"]), _without_timing(b["metrics"])
    # Everything: weights, optimizer (momentum buffers, rates), random state, settings.
    _assert_same(a, b)
    assert len(_metrics(straight)) == 4
    assert _without_timing(_metrics(straight)) == _without_timing(_metrics(resumed))
    assert json.loads((straight / "results.json").read_text()) == json.loads(
        (resumed / "results.json").read_text()
    )


def test_run_directory_contents(tmp_path):
    results = _run(_config(epochs=2, binary_weight=0.4, num_partitions=2), tmp_path / "run")
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["binary_weight"] == 0.4
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == [
        "phase", "epoch", "lr", "train_loss", "train_error", "test_loss", "test_error",
        "train_binary_loss", "train_binary_error", "seconds", "lr_groups", "train_main_loss",
    ]  # fmt: skip
    rows = _metrics(run)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert all(row["train_binary_loss"] != "" for row in rows)  # binary-head loss logged
    assert [row["lr_groups"] for row in rows] == ["0=0.05", "0=0.05"]  # one group, no schedule
    assert results["best_epoch"] in (1, 2)
    assert set(json.loads((run / "results.json").read_text())) == {
        "epochs",
        "final_test_error",
        "best_test_error",
        "best_epoch",
    }
    assert not list(run.glob(".*.tmp"))
    state = torch.load(run / "last.pt", weights_only=True)
    assert "aux_head.weight" in state["model"]


def test_resume_after_a_stop_between_metrics_and_checkpoint(tmp_path):
    run = tmp_path / "run"
    config = _config(epochs=3)
    _run(config, run, stop_after=2)
    # Simulate a stop after epoch 3's metrics row but before its checkpoint.
    rows = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text(
        "\n".join([*rows, rows[-1].replace("train,2,", "train,3,", 1)]) + "\n"
    )
    _run(config, run, resume=True)
    assert [row["epoch"] for row in _metrics(run)] == ["1", "2", "3"]


def test_tuple_model_kwargs_resume(tmp_path):
    config = _config(
        epochs=2, model_kwargs={"depth": 10, "widen_factor": 1, "drop_rate": 0.3, "in_chans": 3}
    )
    _run(config, tmp_path / "run", stop_after=1)
    _run(config, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "results.json").exists()


def _bad_labels(data, index, value):
    images, labels = data
    labels = labels.clone()
    labels[index] = value
    return images, labels


@pytest.mark.parametrize(
    ("settings", "kwargs", "match"),
    [
        (
            {"model": "resnet_nope"},
            {},
            r"`model` to be a timm model name .* but got 'resnet_nope'",
        ),
        ({"epochs": 0}, {}, r"`epochs` to be an int >= 1, but got 0"),
        (
            {"milestones": (5,)},
            {},
            r"`milestones` to be increasing epochs in \[2, 4\] .* got \[5\]",
        ),
        ({"milestones": (1,)}, {}, r"`milestones` to be increasing epochs .* got \[1\]"),
        ({"milestones": (3, 2)}, {}, r"`milestones` to be increasing epochs .* got \[3, 2\]"),
        ({"milestones": (2, 2)}, {}, r"`milestones` to be increasing epochs .* got \[2, 2\]"),
        ({}, {"stop_after": 0}, r"`stop_after` to be at least 1 epoch, but got 0"),
        (
            {"num_classes": 3},
            {},
            r"labels of `train_data` to be in \[0, 3\) \(`num_classes`\), but they span \[0, 3\]",
        ),
        (
            {},
            {"test_data": _bad_labels(_data(16, 1), 5, -1)},
            r"labels of `test_data` to be in \[0, 4\) .* span \[-1, \d\]",
        ),
        (
            {"batch_size": 49},
            {},
            r"`batch_size` to be at most the 48 training images of each of the 1 process\(es\), but got 49",
        ),
    ],
    ids=[
        "model",
        "epochs",
        "milestone-past-end",
        "milestone-1",
        "milestones-decreasing",
        "milestones-repeated",
        "stop-after",
        "train-labels",
        "test-labels",
        "batch-size",
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, settings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _run(_config(**settings), tmp_path / "run", **kwargs)
    assert list(tmp_path.iterdir()) == []  # not even the run directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished and an unfinished (1 of 2 epochs) run of ``_config(epochs=2)``."""
    root = tmp_path_factory.mktemp("runs")
    _run(_config(epochs=2), root / "finished")
    _run(_config(epochs=2), root / "unfinished", stop_after=1)
    return root


def _drop(settings, *keys):
    for key in keys:
        del settings[key]


def _edit_checkpoint(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("start", "change", "resume", "settings", "error", "match"),
    [
        (
            "finished",
            None,
            False,
            {},
            FileExistsError,
            r"holds a finished run \(results\.json\); choose another run directory",
        ),
        ("finished", None, True, {}, FileExistsError, r"holds a finished run"),
        (
            "unfinished",
            None,
            False,
            {},
            FileExistsError,
            r"holds an unfinished run \(last\.pt\); pass resume=True to continue it",
        ),
        (
            "unfinished",
            None,
            True,
            {"lr": 0.5, "seed": 1},
            ValueError,
            r"settings of the run in .* to resume it, but these differ: \['lr', 'seed'\]",
        ),
        (
            "unfinished",
            lambda run: (run / "last.pt").write_bytes(b"not a checkpoint"),
            True,
            {},
            ValueError,
            r"last\.pt to be an auxtransfer checkpoint, but it cannot be read: it is damaged or "
            r"not a checkpoint \(not the zip archive that torch\.save writes\)$",
        ),
        (
            # Cut short (a copy interrupted): damaged, not "load it with weights_only=False".
            "unfinished",
            lambda run: (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:-4000]),
            True,
            {},
            ValueError,
            r"last\.pt to be an auxtransfer checkpoint, but it cannot be read: it is damaged or "
            r"not a checkpoint \(not the zip archive that torch\.save writes\)$",
        ),
        (
            # weights_only=True refuses arbitrary objects, with no fallback to a full unpickle.
            "unfinished",
            lambda run: torch.save(
                {"format": "auxtransfer-run-v1", "args": argparse.Namespace()}, run / "last.pt"
            ),
            True,
            {},
            ValueError,
            r"last\.pt to be an auxtransfer checkpoint, but it cannot be read: it holds what "
            r"weights_only=True does not load \(Unsupported global: GLOBAL argparse\.Namespace[^\n]*\)$",
        ),
        (
            "unfinished",
            lambda run: torch.save({"weights": torch.zeros(1)}, run / "last.pt"),
            True,
            {},
            ValueError,
            r"last\.pt to be an auxtransfer run checkpoint, but it is not \(no 'auxtransfer-run-v1' tag\)",
        ),
        (
            "unfinished",
            lambda run: _edit_checkpoint(
                run / "last.pt", lambda state: state["config"].update(lr=0.5)
            ),
            True,
            {},
            ValueError,
            r"last\.pt to belong to this run's settings, but it was written by another run",
        ),
        (
            "unfinished",
            lambda run: _edit_checkpoint(
                run / "last.pt", lambda state: state.update(rng=state["rng"] * 2)
            ),
            True,
            {},
            ValueError,
            r"last\.pt with the 2 processes that wrote it, but got 1",
        ),
    ],
    ids=[
        "finished",
        "finished-resume",
        "unfinished-no-resume",
        "changed-settings",
        "unreadable",
        "cut-short",
        "not-weights-only",
        "no-format-tag",
        "another-run",
        "other-process-count",
    ],
)
def test_refused_run_directory_is_left_as_it_was(
    tmp_path, runs, start, change, resume, settings, error, match
):
    run = tmp_path / "run"
    shutil.copytree(runs / start, run)
    if change is not None:
        change(run)
    before = _files(run)
    with pytest.raises(error, match=match):
        _run(_config(epochs=2, **settings), run, resume=resume)
    assert _files(run) == before  # config.json, metrics.csv and last.pt untouched


def test_a_run_from_before_a_setting_existed_resumes(tmp_path, runs):
    """config.json and last.pt written before ``num_groups`` and ``aux_labels`` existed
    lack them: resumed at their defaults, the run finishes as it would have."""
    run = tmp_path / "run"
    shutil.copytree(runs / "unfinished", run)
    config = json.loads((run / "config.json").read_text())
    for added in ("num_groups", "aux_labels"):
        del config[added]
    (run / "config.json").write_text(json.dumps(config))
    _edit_checkpoint(
        run / "last.pt", lambda state: _drop(state["config"], "num_groups", "aux_labels")
    )
    _run(_config(epochs=2), run, resume=True)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs / "finished"))
    # A setting left out is its default, not any value.
    shutil.rmtree(run)
    shutil.copytree(runs / "unfinished", run)
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"these differ: \['num_groups'\]"):
        _run(_config(epochs=2, num_groups=3), run, resume=True)


def test_a_coarse_run_learns_the_given_partition(tmp_path):
    given = torch.tensor([[2, 0, 1, 0]])
    config = _config(epochs=1, binary_weight=0.4, aux_labels="coarse", num_groups=3)
    _run(config, tmp_path / "run", partition=given)
    weights = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["model"]
    assert torch.equal(weights["partition"], given)
    assert weights["aux_head.weight"].shape[0] == 3  # one logit per group
    row = _metrics(tmp_path / "run")[0]
    assert 0 <= float(row["train_binary_error"]) <= 100


@pytest.mark.parametrize(
    ("settings", "partition", "match"),
    [
        ({"aux_labels": "coarse"}, None, r"`partition`, the coarse labels .* got None"),
        ({}, [0, 1, 0, 1], r"no `partition` for a run that draws its own \(aux_labels='random'"),
        ({"binary_weight": 0.0, "aux_labels": "coarse"}, [0, 1, 0, 1], r"no `partition`"),
        (
            {"aux_labels": "coarse", "num_partitions": 2},
            [0, 1, 0, 1],
            r"`num_partitions` to be 1 with aux_labels='coarse' .* got 2",
        ),
        ({"aux_labels": "superclasses"}, None, r"`aux_labels` to be one of \('random', 'coarse'\)"),
        ({"num_groups": 5}, None, r"`num_groups` to be from 2 to `num_classes` \(4\), but got 5"),
        ({"aux_labels": "coarse"}, [0, 1, 0], r"`partition` to have 4 columns"),
        ({"aux_labels": "coarse"}, [[0, 1, 0, 1]] * 2, r"`partition` to hold one row .* got 2"),
    ],
)
def test_bad_auxiliary_labels_are_refused_before_anything_is_written(
    tmp_path, settings, partition, match
):
    config = _config(**{"binary_weight": 0.4, **settings})
    given = None if partition is None else torch.tensor(partition)
    with pytest.raises(ValueError, match=match):
        _run(config, tmp_path / "run", partition=given)
    assert list(tmp_path.iterdir()) == []


def _tear(path, cut=60):
    """The end of a file cut off, as a process killed mid-write leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:-cut])


def test_a_torn_metrics_row_comes_back_whole_from_the_checkpoint(tmp_path, runs):
    run = tmp_path / "run"
    shutil.copytree(runs / "unfinished", run)
    _tear(run / "metrics.csv")  # epoch 1's row, which last.pt has finished, torn
    _run(_config(epochs=2), run, resume=True)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs / "finished"))
    # Gone altogether, the same.
    shutil.rmtree(run)
    shutil.copytree(runs / "unfinished", run)
    (run / "metrics.csv").unlink()
    _run(_config(epochs=2), run, resume=True)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs / "finished"))


def test_a_torn_row_an_older_checkpoint_cannot_restore_is_refused_untouched(tmp_path, runs):
    run = tmp_path / "run"
    shutil.copytree(runs / "unfinished", run)
    _edit_checkpoint(run / "last.pt", lambda state: state.pop("metrics"))  # as before
    _tear(run / "metrics.csv")
    before = _files(run)
    with pytest.raises(
        ValueError,
        match=r"metrics\.csv to hold a whole row for each of epochs 1 to 1, .* the row of epoch 1 has no number in",
    ):
        _run(_config(epochs=2), run, resume=True)
    assert _files(run) == before  # nothing rewritten
    # Whole, the older checkpoint resumes as before.
    shutil.copy(runs / "unfinished" / "metrics.csv", run / "metrics.csv")
    _run(_config(epochs=2), run, resume=True)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs / "finished"))


def test_resume_of_the_unfinished_run_finishes_it(tmp_path, runs):
    # The fixture's runs are sound: what the refusals above start from resumes and matches.
    run = tmp_path / "run"
    shutil.copytree(runs / "unfinished", run)
    _run(_config(epochs=2), run, resume=True)
    assert _without_timing(_metrics(run)) == _without_timing(_metrics(runs / "finished"))
    _assert_same(_checkpoint(run / "last.pt"), _checkpoint(runs / "finished" / "last.pt"))


def test_cuda_random_state_is_restored_into_the_runs_device(monkeypatch):
    # A process training on cuda:1 while cuda:0 is the current device must get its own
    # generator's state back: set_rng_state(state) alone would set cuda:0's.
    restored = []

    def set_rng_state(new_state, device="cuda"):
        restored.append((new_state, torch.device(device)))

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cpu = torch.Generator().manual_seed(7).get_state()
    cuda = torch.arange(16, dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]):
        restore_rng_state((cpu, cuda), torch.device("cuda", 1))
        assert torch.equal(torch.get_rng_state(), cpu)
    assert len(restored) == 1
    assert restored[0][0] is cuda
    assert restored[0][1] == torch.device("cuda", 1)
    # A run on the CPU leaves every CUDA generator alone, whatever the checkpoint holds.
    with torch.random.fork_rng(devices=[]):
        restore_rng_state((cpu, cuda), torch.device("cpu"))
    assert len(restored) == 1


def test_load_checkpoint_restores_the_cuda_state_into_the_runs_device(tmp_path, runs, monkeypatch):
    import timm

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "set_rng_state",
        lambda new_state, device="cuda": restored.append((new_state, torch.device(device))),
    )
    path = tmp_path / "last.pt"
    shutil.copy(runs / "unfinished" / "last.pt", path)
    cuda = torch.arange(16, dtype=torch.uint8)
    _edit_checkpoint(path, lambda state: state.update(rng=[(state["rng"][0][0], cuda)]))
    config = _config(epochs=2)
    model = timm.create_model(config.model, num_classes=config.num_classes, **config.model_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    with torch.random.fork_rng(devices=[]):
        epoch = load_checkpoint(
            path, config=config.to_json(), model=model, optimizer=optimizer,
            rank=0, world=1, device=torch.device("cuda", 1),
        ).epoch  # fmt: skip
    assert epoch == 1
    assert len(restored) == 1
    assert torch.equal(restored[0][0], cuda)
    assert restored[0][1] == torch.device("cuda", 1)


def test_gathered_random_state_restores_the_generator():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        (state,) = gather_rng_states(torch.device("cpu"), 1)
        expected = torch.rand(5)
        torch.manual_seed(12)
        restore_rng_state(state, torch.device("cpu"))
        assert torch.equal(torch.rand(5), expected)
    assert state[1] is None  # no CUDA state for a CPU run


def test_torchrun_two_ranks_end_with_identical_weights_and_resume_exactly(tmp_path, torchrun):
    torchrun("train_worker.py", tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [
        k for k in rank0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key
    straight, resumed = tmp_path / "run", tmp_path / "resumed"
    assert (straight / "results.json").exists()
    assert len(_metrics(straight)) == 2
    # Stopped after epoch 1 and resumed by both ranks: every rank's random state (its own
    # dropout masks) came back, so the run is the straight one, bit for bit.
    a, b = _checkpoint(straight / "last.pt"), _checkpoint(resumed / "last.pt")
    assert len(a["rng"]) == 2
    assert not torch.equal(a["rng"][0][0], a["rng"][1][0])  # the ranks draw differently
    _assert_same(a, b)
    assert _without_timing(_metrics(straight)) == _without_timing(_metrics(resumed))


def _parse_rates(text):
    """The lr_groups cell, read by hand: 'name=rate name=rate ...'."""
    return {name: float(rate) for name, rate in (item.rsplit("=", 1) for item in text.split())}


def _two_groups(order, addresses):
    """Parameter groups: the body at 0.04 and the classifier at 0.01, in ``order``."""

    def make(model):
        head = list(model.get_classifier().parameters())
        body = [p for p in model.parameters() if all(p is not h for h in head)]
        groups = {
            "body": {"params": body, "lr": 0.04, "addresses": ("stem", "3.1")},
            "head": {"params": head, "lr": 0.01, "addresses": ("4.0", "head")},
        }
        if not addresses:
            for group in groups.values():
                del group["addresses"]
        return [groups[name] for name in order]

    return make


@pytest.mark.parametrize(
    ("order", "addresses", "names", "head"),
    [
        (("body", "head"), True, ["stem..3.1", "4.0..head"], "4.0..head"),
        (("head", "body"), True, ["4.0..head", "stem..3.1"], "4.0..head"),  # head not last
        (("body", "head"), False, ["0", "1"], "1"),  # no addresses: by index, the last group
        (("head", "body"), False, ["0", "1"], "1"),
    ],
)
def test_every_group_learning_rate_is_logged(tmp_path, order, addresses, names, head):
    # Epochs 1-3, the rate x0.1 from epoch 2 on: each group from its own starting rate.
    config = _config(epochs=3, milestones=(2,), gamma=0.1)
    _run(config, tmp_path / "run", param_groups=_two_groups(order, addresses))
    start = {"body": 0.04, "head": 0.01}
    expected = [
        {name: start[group] * factor for name, group in zip(names, order, strict=True)}
        for factor in (1.0, 0.1, 0.1)
    ]
    rows = _metrics(tmp_path / "run")
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    for row, rates in zip(rows, expected, strict=True):
        logged = _parse_rates(row["lr_groups"])
        assert list(logged) == names  # the groups' order
        assert logged == pytest.approx(rates, rel=1e-12, abs=0)
        assert float(row["lr"]) == pytest.approx(rates[head], rel=1e-12, abs=0)
    assert [float(row["lr"]) for row in rows] != [float(rows[0]["lr"])] * 3  # the drop is seen
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx(
        [start[group] * 0.1 for group in order], rel=1e-12, abs=0
    )


def test_group_names_are_unique_and_rates_read_back():
    groups = [
        {"lr": 0.04, "addresses": ("stem", "3.1")},
        {"lr": 0.0, "addresses": ("stem", "3.1")},  # e.g. its biases, without weight decay
        {"lr": 0.01},
        {"lr": 0.1, "addresses": ("head", "head")},
        {"lr": 1e-5, "addresses": ("1.0", "1.0")},
    ]
    assert group_names(groups) == ["stem..3.1", "stem..3.1#1", "2", "head", "1.0"]
    text = format_learning_rates(learning_rates(groups))
    assert text == "stem..3.1=0.04 stem..3.1#1=0.0 2=0.01 head=0.1 1.0=1e-05"
    assert parse_learning_rates(text) == {
        "stem..3.1": 0.04, "stem..3.1#1": 0.0, "2": 0.01, "head": 0.1, "1.0": 1e-05,
    }  # fmt: skip
    assert _parse_rates(text) == parse_learning_rates(text)
    assert head_learning_rate(groups) == 0.1  # not the last group's
    assert head_learning_rate(groups[:3]) == 0.01  # no head: the last group's
    rate = 0.1 * 0.1 * 0.1  # 0.0010000000000000002: written so that it reads back exactly
    assert parse_learning_rates(format_learning_rates({"0": rate}))["0"] == rate
    with pytest.raises(ValueError, match=r"name=rate pairs .* but got '0\.1' in 'a=1 0\.1'"):
        parse_learning_rates("a=1 0.1")


def test_layerwise_learning_rates_follow_the_schedule(tmp_path):
    import timm

    from auxtransfer import layerwise_lr

    built, seen, starts = [], [], []

    def build(config):
        built.append(
            timm.create_model(config.model, num_classes=config.num_classes, **config.model_kwargs)
        )
        return built[-1]

    def groups(model):
        made = layerwise_lr(model, until="2", lr=0.01, new_lr=0.1)
        seen.append((model, made))
        starts.append([group["lr"] for group in made])
        return made

    config = _config(epochs=3, milestones=(2, 3))
    _run(config, tmp_path / "run", param_groups=groups, build_model=build)
    # Called once, with the model being trained, and every parameter in exactly one group.
    assert len(seen) == 1
    model, made = seen[0]
    assert model is built[0]
    grouped = [id(p) for group in made for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    rows = _metrics(tmp_path / "run")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01, 0.001])  # the head's group
    # Each group logged by its addresses, at its own rate scaled by the schedule.
    names = [
        first if first == last else f"{first}..{last}"
        for first, last in (group["addresses"] for group in made)
    ]
    assert names[0].startswith("stem") and names[-1].endswith("head")
    assert starts[0][0] == 0.01 and starts[0][-1] == 0.1
    for row, factor in zip(rows, (1.0, 0.1, 0.01), strict=True):
        logged = _parse_rates(row["lr_groups"])
        assert list(logged) == names
        assert logged == pytest.approx(
            {name: lr * factor for name, lr in zip(names, starts[0], strict=True)}
        )
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([0.0001, 0.001])
    assert [g["initial_lr"] for g in state["optimizer"]["param_groups"]] == [0.01, 0.1]


def test_compiled_run_matches_eager(tmp_path):
    eager = _run(_config(epochs=1), tmp_path / "eager")
    compiled = _run(
        _config(epochs=1, compile=True, compile_backend="aot_eager"), tmp_path / "compiled"
    )
    assert compiled["final_test_error"] == pytest.approx(eager["final_test_error"], abs=1e-6)
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_compile_happens_once_whatever_the_last_batch_and_evaluation(tmp_path):
    # 40 images in batches of 16 leave a short batch of 8; every epoch also evaluates.
    # Before, each of those was a compile of its own (a dynamic-shape one for the short
    # batch, another for evaluation), and a third when the head's first-forward check flipped.
    seen = []

    def counting(graph, example_inputs):
        seen.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph.forward

    name = f"auxtransfer_counting_{uuid.uuid4().hex}"
    torch._dynamo.register_backend(counting, name=name)
    torch._dynamo.reset()
    config = _config(epochs=3, binary_weight=0.3, compile=True, compile_backend=name)
    train_run(config, tmp_path / "run", _data(40, 0), _data(20, 1), mean=MEAN, std=STD)
    assert len(seen) == 1
    assert (16, 3, 32, 32) in seen[0]  # the full training batch, and no other shape
