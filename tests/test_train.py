import json

import pytest
import torch

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
    return train_run(config, run_dir, _data(48, 0), _data(16, 1), mean=MEAN, std=STD, **kwargs)


def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = _config(milestones=(3,))  # the learning rate drops after the resume point
    _run(config, straight)
    assert _run(config, resumed, stop_after=2) is None  # a job stopped after 2 of 4 epochs
    assert not (resumed / "results.json").exists()
    _run(config, resumed, resume=True)
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("optimizer", "scheduler"):
        assert str(a[key]) == str(b[key])

    def without_timing(path):
        return [row.rsplit(",", 1)[0] for row in path.read_text().splitlines()]

    assert len(without_timing(straight / "metrics.csv")) == 5
    assert without_timing(straight / "metrics.csv") == without_timing(resumed / "metrics.csv")
    assert json.loads((straight / "results.json").read_text()) == json.loads(
        (resumed / "results.json").read_text()
    )


def test_run_directory_contents(tmp_path):
    results = _run(_config(epochs=2, binary_weight=0.4, num_partitions=2), tmp_path / "run")
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["binary_weight"] == 0.4
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    assert header.split(",")[:4] == ["phase", "epoch", "lr", "train_loss"]
    assert len(rows) == 2
    assert rows[0].split(",")[7] != ""  # binary-head loss logged
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


def test_finished_and_unfinished_runs_are_not_overwritten(tmp_path):
    run = tmp_path / "run"
    _run(_config(epochs=1), run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(FileExistsError, match="holds a finished run"):
        _run(_config(epochs=1), run)
    (run / "results.json").unlink()
    with pytest.raises(FileExistsError, match="pass resume=True"):
        _run(_config(epochs=1), run)
    with pytest.raises(ValueError, match=r"these differ: \['lr'\]"):
        _run(_config(epochs=1, lr=0.5), run, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == {
        k: v for k, v in before.items() if k != "results.json"
    }


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
    epochs = [row.split(",")[1] for row in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2", "3"]


def test_tuple_model_kwargs_resume(tmp_path):
    config = _config(
        epochs=2, model_kwargs={"depth": 10, "widen_factor": 1, "drop_rate": 0.3, "in_chans": 3}
    )
    _run(config, tmp_path / "run", stop_after=1)
    _run(config, tmp_path / "run", resume=True)
    assert (tmp_path / "run" / "results.json").exists()


def test_corrupt_or_foreign_checkpoint(tmp_path):
    run = tmp_path / "run"
    _run(_config(epochs=1), run)
    (run / "results.json").unlink()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        _run(_config(epochs=1), run, resume=True)
    torch.save({"weights": torch.zeros(1)}, run / "last.pt")
    with pytest.raises(ValueError, match="not \\(no 'format' tag\\)"):
        _run(_config(epochs=1), run, resume=True)


def test_unknown_model_and_oversized_batch(tmp_path):
    with pytest.raises(
        ValueError, match=r"`model` to be a timm model name .* but got 'resnet_nope'"
    ):
        _run(_config(model="resnet_nope"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"`batch_size` to be at most the 48 training images"):
        _run(_config(batch_size=64), tmp_path / "b")
    with pytest.raises(
        ValueError, match=r"labels of `train_data` to be in \[0, 3\) .* span \[0, 3\]"
    ):
        _run(_config(num_classes=3), tmp_path / "c")
    with pytest.raises(ValueError, match=r"`milestones` to be increasing epochs in \[2, 4\]"):
        _run(_config(milestones=(5,)), tmp_path / "d")
    with pytest.raises(ValueError, match=r"`stop_after` to be at least 1"):
        _run(_config(), tmp_path / "e", stop_after=0)
    assert list(tmp_path.iterdir()) == []  # bad input writes nothing


def test_torchrun_two_ranks_end_with_identical_weights(tmp_path, torchrun):
    torchrun("train_worker.py", tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    params = [
        k for k in rank0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]
    for key in params:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "run" / "results.json").exists()
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 3


def test_per_group_learning_rates_follow_the_schedule(tmp_path):
    from auxtransfer import layerwise_lr

    seen = []

    def groups(model):
        made = layerwise_lr(model, until="2", lr=0.01, new_lr=0.1)
        seen.append(made)
        return made

    config = _config(epochs=3, milestones=(2, 3))
    _run(config, tmp_path / "run", param_groups=groups)
    rows = [
        row.split(",") for row in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert [float(r[2]) for r in rows] == pytest.approx([0.1, 0.01, 0.001])  # the head's group
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
