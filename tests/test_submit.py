"""--launcher submitit: a smoke plan through submitit's local executor ends where a plain
call does, a second submission skips it, SLURM arrays are chained by dependency, and
bad flags are one line naming them."""

import json
import re
import sys
from typing import ClassVar

import pytest

pytest.importorskip("submitit")

from auxtransfer.experiments import protocols
from auxtransfer.experiments.cli import CifarData, Example
from auxtransfer.experiments.plan import check_plan
from auxtransfer.experiments.submit import RunTask, dependency_levels, submit_plan

EXAMPLE = Example(protocols.DENSENET_CIFAR, CifarData(), "the DenseNet example", smoke="tiny")


def _results(out):
    return {
        p.parent.relative_to(out).as_posix(): json.loads(p.read_text())
        for p in sorted(out.rglob("results.json"))
    }


def test_a_smoke_plan_through_the_local_executor_ends_as_a_plain_call(tmp_path, capsys, one_thread):
    flags = ["--experiment", "paired", "--smoke", "--device", "cpu"]
    EXAMPLE.main([*flags, "--out", str(tmp_path / "plain")])
    submitted = tmp_path / "submitted"
    EXAMPLE.main([*flags, "--out", str(submitted), "--launcher", "submitit",
                  "--submitit-cluster", "local"])  # fmt: skip
    out = capsys.readouterr().out
    said = [
        line for line in out.splitlines() if line.startswith("submitted 2 run(s) as local jobs: ")
    ]
    assert len(said) == 2  # the pre-trainings, then the transfers
    # Each job id said is the folder of that run's logs; no folder named "%j" is left.
    jobs = [re.findall(r"(\S+) \(job (\w+)\)", line) for line in said]
    assert [run for level in jobs for run, _ in level] == [
        "split0/baseline/pretrain", "split0/binary/pretrain",
        "split0/baseline/finetune", "split0/binary/finetune",
    ]  # fmt: skip
    folders = {p.name for p in (submitted / "submitit").iterdir()}
    assert folders == {job for level in jobs for _, job in level}
    plain, through = _results(tmp_path / "plain"), _results(submitted)
    assert len(plain) == 4 and through == plain
    summary = out.splitlines()[-6:]  # as a plain call's: smoke runs are said to be
    assert summary[0] == "smoke runs: tiny, every step once; not results"  # (EXAMPLE's smoke)
    assert summary[1].split()[:2] == ["run", "data"]
    assert summary[-1].startswith("split0/binary/finetune")
    logs = sorted(p.name for p in (submitted / "submitit").rglob("*.out"))
    assert len(logs) == 4
    # Submitted again: every run has finished, nothing is submitted or written.
    before = {p: p.stat().st_mtime_ns for p in submitted.rglob("*") if p.is_file()}
    EXAMPLE.main([*flags, "--out", str(submitted), "--launcher", "submitit",
                  "--submitit-cluster", "local"])  # fmt: skip
    assert "every selected run has finished: nothing to submit" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in submitted.rglob("*") if p.is_file()} == before


class _Job:
    def __init__(self, job_id):
        self.job_id = job_id


class _Executor:
    """Stands in for submitit.AutoExecutor on SLURM: records what is asked of it."""

    calls: ClassVar[list] = []

    def __init__(self, folder, cluster):
        self.calls.append(("executor", str(folder), cluster))

    def update_parameters(self, **kwargs):
        self.calls.append(("parameters", kwargs))

    def map_array(self, task, ids):
        number = 100 + sum(call[0] == "array" for call in self.calls)
        self.calls.append(("array", list(ids)))
        return [_Job(f"{number}_{i}") for i in range(len(ids))]


def test_slurm_arrays_wait_for_the_runs_they_transfer_from(tmp_path, monkeypatch, capsys):
    import submitit

    monkeypatch.setattr(submitit, "AutoExecutor", _Executor)
    monkeypatch.setattr(_Executor, "calls", [])
    EXAMPLE.main(["--experiment", "freeze", "--smoke", "--out", str(tmp_path), "--launcher",
                  "submitit", "--slurm-partition", "gpu", "--time-min", "600",
                  "--array-parallelism", "4"])  # fmt: skip
    calls = _Executor.calls
    assert calls[0] == ("executor", str(tmp_path / "submitit" / "%j"), "slurm")
    assert calls[1] == ("parameters", {
        "name": "auxtransfer-freeze", "timeout_min": 600, "gpus_per_node": 1,
        "tasks_per_node": 1, "slurm_partition": "gpu", "slurm_array_parallelism": 4,
    })  # fmt: skip
    plan = protocols.build("freeze", **protocols.smoke_parameters("freeze"))
    pretrainings = [r.id for r in plan if r.config.side == "A"]
    assert calls[2] == ("array", pretrainings)
    assert calls[3] == (
        "parameters",
        {"slurm_additional_parameters": {"dependency": "afterok:100"}},
    )
    assert calls[4] == ("array", [r.id for r in plan if r.config.side == "B"])
    out = capsys.readouterr().out
    assert "submitted 2 run(s) as job array 100" in out and "as job array 101" in out
    assert not any(tmp_path.glob("split*"))  # nothing trained here


def test_dependency_levels_of_a_selection():
    plan = protocols.build("paired", **protocols.smoke_parameters("paired"))
    # A transfer whose pre-training is not pending (finished) needs no earlier array.
    levels = dependency_levels([plan["split0/binary/finetune"], plan["split0/baseline/pretrain"]])
    assert [[r.id for r in level] for level in levels] == [
        ["split0/binary/finetune", "split0/baseline/pretrain"]
    ]


def test_a_failed_local_array_stops_the_arrays_after_it(tmp_path, capsys):
    plan = protocols.build("paired", **protocols.smoke_parameters("paired"))
    args = EXAMPLE.build_parser().parse_args(["--smoke", "--out", str(tmp_path)])
    args.device, args.device_given = "nope", True  # every task fails on its device
    task = RunTask(EXAMPLE, args, plan)
    lines = []
    failed = submit_plan(task, check_plan(plan, tmp_path), cluster="local",
                         folder=tmp_path / "logs" / "%j", parameters={}, say=lines.append)  # fmt: skip
    assert failed == ["split0/baseline/pretrain", "split0/binary/pretrain"]
    assert lines[-1] == (
        "not submitted, they need a run that failed or its array: "
        "split0/baseline/finetune, split0/binary/finetune"
    )


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--slurm-partition", "gpu"], "--slurm-partition"),
        (["--submitit-cluster", "local"], "--submitit-cluster"),
        (["--launcher", "submitit", "--jobs", "2"], "--jobs"),
        (["--launcher", "submitit", "--time-min", "0"], "--time-min"),
        (["--launcher", "submitit", "--mem-gb", "-1"], "--mem-gb"),
        # submitit's local executor starts every task at once: the flag would do nothing.
        (
            ["--launcher", "submitit", "--submitit-cluster", "local", "--array-parallelism", "2"],
            "--array-parallelism",
        ),
    ],
)
def test_bad_cluster_flags_are_one_line_naming_the_flag(tmp_path, capsys, args, flag):
    with pytest.raises(SystemExit) as stop:
        EXAMPLE.main(["--smoke", "--out", str(tmp_path / "out"), *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and f"error: argument {flag}" in err[1], err
    assert not (tmp_path / "out").exists()


def test_the_launcher_without_submitit_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    with pytest.raises(SystemExit):
        EXAMPLE.main(["--smoke", "--out", str(tmp_path), "--launcher", "submitit"])
    err = capsys.readouterr().err
    assert (
        "argument --launcher: submitit is not installed: pip install 'auxtransfer[cluster]'" in err
    )


def test_a_run_on_two_tasks_trains_as_under_torchrun(tmp_path, capsys):
    """--gpus-per-run 2: one task per GPU (here CPU processes, gloo), the run under DDP:
    the same results.json as torchrun with two processes."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    flags = ["--smoke", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(root / "examples" / "cifar100_densenet.py"), *flags, "--out", str(tmp_path / "torchrun")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    EXAMPLE.main([*flags, "--out", str(tmp_path / "tasks"), "--launcher", "submitit",
                  "--submitit-cluster", "local", "--gpus-per-run", "2"])  # fmt: skip
    assert _results(tmp_path / "tasks") == _results(tmp_path / "torchrun")
    assert len(_results(tmp_path / "tasks")) == 4
    logs = "".join(p.read_text() for p in (tmp_path / "tasks" / "submitit").rglob("*_log.out"))
    assert logs.count("training split0/binary/pretrain") == 1  # rank 0 reports, not both


def test_a_run_that_fails_in_its_task_fails_the_task(tmp_path):
    """A run that raises inside its task (here a damaged last.pt) fails the task, so that
    the arrays after it, which need it, are not submitted (on SLURM their afterok fails)."""
    from auxtransfer.experiments.rundir import RunDir

    plan = protocols.build("paired", **protocols.smoke_parameters("paired"))
    for run in plan:
        if run.config.side == "A":
            RunDir(tmp_path / run.id).write_config(run.config.to_json())
            (tmp_path / run.id / "last.pt").write_bytes(b"not a checkpoint")
    args = EXAMPLE.build_parser().parse_args(["--smoke", "--out", str(tmp_path)])
    args.device, args.device_given = "cpu", True
    lines = []
    failed = submit_plan(RunTask(EXAMPLE, args, plan), check_plan(plan, tmp_path), cluster="local",
                         folder=tmp_path / "logs" / "%j", parameters={}, say=lines.append)  # fmt: skip
    assert failed == ["split0/baseline/pretrain", "split0/binary/pretrain"]
    assert lines[1].startswith("run split0/baseline/pretrain failed (log: ")
    why = lines[1].split("): ", 1)[1]
    assert why.startswith("run split0/baseline/pretrain failed: ValueError: Expected ")
    assert "pretrain/last.pt to be an auxtransfer checkpoint, but it cannot be read" in why
    assert lines[-1].startswith("not submitted, they need a run that failed or its array")
    assert not (tmp_path / "split0/baseline/finetune").exists()


def test_submitting_records_the_data_as_a_plain_call_does(tmp_path, monkeypatch):
    import submitit

    from auxtransfer.experiments.cli import ImageNetData

    monkeypatch.setattr(submitit, "AutoExecutor", _Executor)
    monkeypatch.setattr(_Executor, "calls", [])
    example = Example(protocols.DENSENET121_IMAGENET, ImageNetData(), "ImageNet", smoke="tiny")
    example.main(["--smoke", "--out", str(tmp_path), "--launcher", "submitit"])
    record = json.loads((tmp_path / "data.json").read_text())
    assert record["class_seed"] == 0 and len(record["classes"]) == 100
    with pytest.raises(SystemExit):  # other classes into the same folder: refused, as always
        example.main(["--smoke", "--out", str(tmp_path), "--launcher", "submitit",
                      "--class-seed", "1"])  # fmt: skip
