"""The example command lines: help, --list, bad input, --smoke of every experiment, torchrun,
the SLURM script, and every command docs/experiments.md shows."""

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auxtransfer.experiments import protocols

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar100_densenet.py"
DOCS = ROOT / "docs" / "experiments.md"
# One thread per process: the runs are tiny, and the test machine is shared.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _module():
    spec = importlib.util.spec_from_file_location("cifar100_densenet", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _module()


@pytest.fixture
def one_thread():
    """Tiny runs in this process, one thread: the test machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _main(capsys, *args):
    """Run the example's ``main`` in this process; its standard output."""
    cli.main([*args])
    return capsys.readouterr().out


def _check_smoke(experiment, out, stdout):
    """Every run of the smoke plan finished, says it is a smoke run, and is in the table."""
    plan = protocols.build(experiment, **protocols.smoke_parameters(experiment))
    table = stdout.splitlines()[-len(plan) - 1 :]
    assert table[0].split()[:2] == ["run", "data"]
    for line, run in zip(table[1:], plan, strict=True):
        assert line.split()[:2] == [run.id, run.config.side]
        assert re.fullmatch(r"\d+\.\d\d", line.split()[2]), line
        config = json.loads((out / run.id / "config.json").read_text())
        assert config["smoke"] is True and (out / run.id / "results.json").exists()
        assert len((out / run.id / "metrics.csv").read_text().splitlines()) == 3
    return table


def _run(*args, timeout=300, **kwargs):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=timeout,
        env=ENV, cwd=ROOT, **kwargs,
    )  # fmt: skip


def test_help_shows_every_default(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    # Each option's entry: its line and the help under it, up to the next option.
    parts = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])
    entries = {" ".join(part.split()): " ".join(part.split()) for part in parts}
    options = [a for a in cli.build_parser()._actions if a.option_strings]
    for action in options:
        if action.default in (None, False) or action.dest == "help":
            continue  # on/off flags, --out (required), --run / --split-seeds (all / --splits)
        flag = action.option_strings[0]
        entry = entries[next(e for e in entries if e.startswith(flag + " ") or e == flag)]
        assert entry.endswith(f"(default: {action.default})"), entry
    assert "(default: 2 (paired, freeze, long-tail); 1 (reset, weight-sweep, heads))" in text
    assert "(default: 126 151)" in text and "(default: 0.1 0.01 0.001)" in text


@pytest.mark.parametrize("experiment", list(protocols.EXPERIMENTS))
def test_list_prints_the_run_ids_only(experiment, tmp_path, capsys):
    cli.main(["--experiment", experiment, "--out", str(tmp_path / "out"), "--list"])
    assert capsys.readouterr().out.splitlines() == protocols.build(experiment).ids
    cli.main(["--experiment", experiment, "--out", str(tmp_path / "out"), "--list", "--smoke"])
    smoke = protocols.build(experiment, **protocols.smoke_parameters(experiment))
    assert capsys.readouterr().out.splitlines() == smoke.ids
    assert not (tmp_path / "out").exists()


def test_flags_reach_the_plan(tmp_path, capsys):
    out = str(tmp_path / "out")
    cli.main(["--experiment", "freeze", "--out", out, "--list", "--split-seeds", "4", "7",
              "--freeze-at", "0", "2.9", "--transfer-epochs", "20"])  # fmt: skip
    assert capsys.readouterr().out.split() == [
        f"split{s}/{step}" for s in (4, 7) for step in (
            "baseline/pretrain", "binary/pretrain", "baseline/freeze-0", "baseline/freeze-2.9",
            "binary/freeze-0", "binary/freeze-2.9")
    ]  # fmt: skip
    args = cli.build_parser().parse_args(
        ["--out", out, "--transfer-epochs", "20", "--body-lr", "0.02", "0.02", "0.002",
         "--batch-size", "32", "--bn", "update", "--transfer-from", "last", "--seed", "5"]
    )  # fmt: skip
    params = cli.experiment_parameters(args, cli.build_parser())
    plan = protocols.build("paired", **params)
    fine = plan["split0/binary/finetune"].config
    # Only the epochs changed: the milestones keep their fractions (51 -> 11, 76 -> 16).
    assert fine.lr_table == ((1, (0.02, 0.1)), (11, (0.02, 0.01)), (16, (0.002, 0.001)))
    assert (fine.batch_size, fine.bn, fine.transfer_weights, fine.seed) == (32, "update", "last", 5)
    assert plan["split0/binary/pretrain"].config.epochs == 175


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--experiment", "nope"], "--experiment"),
        (["--experiment", "freeze", "--freeze-at", "0", "2.99"], "--freeze-at"),
        (["--experiment", "reset", "--reset-at", "head"], "--reset-at"),
        (["--run", "split0/binary/fine"], "--run"),
        (["--run", "split0/binary/finetune"], "--run"),  # its pre-training has not run
        (["--data-root", "{tmp}/nowhere"], "--data-root"),
        (["--splits", "0"], "--splits"),
        (["--split-seeds", "1", "1"], "--split-seeds"),
        (["--binary-weight", "1.5"], "--binary-weight"),
        (["--experiment", "weight-sweep", "--weights", "0", "1.5"], "--weights"),
        (["--experiment", "heads", "--head-weight", "0.5"], "--head-weight"),
        (["--freeze-at", "2.9"], "--freeze-at"),  # not an option of paired
        (["--smoke", "--transfer-milestones", "5"], "--transfer-milestones"),
        (["--body-lr", "0.1"], "--body-lr"),
        (["--batch-size", "0"], "--batch-size"),
        (["--smoke", "--experiment", "long-tail", "--per-class", "61"], "--per-class"),
        (["--smoke", "--stop-after", "0"], "--stop-after"),
        (["--smoke", "--device", "nonsense"], "--device"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(args, flag, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--out", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("usage: "), err
    assert "error: " in err[1] and flag in err[1], err[1]
    assert not out.exists()


def test_bad_input_in_a_process_has_no_traceback(tmp_path):
    result = _run("--out", str(tmp_path / "out"), "--binary-weight", "1.5", timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        "error: Expected --binary-weight to be a float in [0, 1], but got 1.5."
    )
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_finished_run_with_other_settings_is_refused(tmp_path, capsys, one_thread):
    out = str(tmp_path / "out")
    cli.main(["--smoke", "--device", "cpu", "--out", out, "--run", "split0/baseline/pretrain"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["--smoke", "--device", "cpu", "--out", out, "--pretrain-epochs", "3"])
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "argument --out:" in err[1] and "split0/baseline/pretrain" in err[1]
    assert "epochs" in err[1]


@pytest.mark.parametrize("experiment", list(protocols.EXPERIMENTS))
def test_smoke_runs_every_step(experiment, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    args = ["--experiment", experiment, "--smoke", "--device", "cpu", "--out", str(out)]
    started = time.perf_counter()
    stdout = _main(capsys, *args)
    assert time.perf_counter() - started < 120
    table = _check_smoke(experiment, out, stdout)
    # Calling again skips every finished run.
    again = _main(capsys, *args)
    assert "training" not in again and again.splitlines()[-len(table) :] == table


def test_stop_after_says_how_to_continue(tmp_path, capsys, one_thread):
    args = ["--smoke", "--device", "cpu", "--out", str(tmp_path / "out")]
    stdout = _main(capsys, *args, "--stop-after", "3")
    assert "stopped in split0/binary/pretrain after --stop-after 3 epochs" in stdout
    assert "run the same command again to continue" in stdout
    again = _main(capsys, *args)
    assert "resuming split0/binary/pretrain" in again
    assert "training split0/baseline/pretrain" not in again
    _check_smoke("paired", tmp_path / "out", again)


def _doc_commands():
    """The commands of docs/experiments.md's example section, joined across backslashes
    (the SLURM lines with shell substitutions are left to test_slurm_array_script)."""
    section = DOCS.read_text().split("## Plans of runs", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #", 1)[0].strip()
            if "examples/cifar100_densenet.py" in command and "$" not in command:
                commands.append(command)
    return commands


def test_torchrun_smoke_as_the_docs_show(tmp_path):
    (command,) = [c for c in _doc_commands() if c.startswith("torchrun")]
    assert command.startswith(
        "torchrun --nproc_per_node=2 examples/cifar100_densenet.py --smoke --device cpu --out "
    )
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    words = shlex.split(command)
    words[0] = str(Path(sys.executable).with_name("torchrun"))
    result = subprocess.run(words, capture_output=True, text=True, timeout=300, env=ENV,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("final error") == 1  # one summary table: rank 0 prints
    _check_smoke("paired", tmp_path / words[-1], result.stdout)


@pytest.mark.parametrize("command", [c for c in _doc_commands() if c.startswith("python ")])
def test_doc_commands_work_as_written(command, tmp_path, capsys, monkeypatch, one_thread):
    """The commands on synthetic data run exactly as written, from an empty folder (here,
    in this process); those that need CIFAR-100 are planned, with --list added."""
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    assert words[:2] == ["python", "examples/cifar100_densenet.py"]
    needs_data = "--smoke" not in words and "--list" not in words
    stdout = _main(capsys, *words[2:], *(["--list"] if needs_data else []))
    if "--smoke" in words and "--run" not in words:
        _check_smoke("paired", tmp_path / words[words.index("--out") + 1], stdout)
    else:
        assert stdout.splitlines()


def test_slurm_array_script(tmp_path):
    script = ROOT / "examples" / "slurm_array.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = tmp_path / "out"

    def task(step, index):
        env = {**ENV, "SLURM_ARRAY_TASK_ID": str(index), "PYTHON": sys.executable}
        command = ["bash", str(script), step, "--smoke", "--device", "cpu", "--out", str(out)]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
        )

    assert task("pretrain", 1).returncode == 0  # the second pre-training of --list
    # A transfer whose pre-training has not run stops with the plan's error, writing nothing.
    early = task("transfer", 0)
    assert early.returncode == 2
    assert "'split0/baseline/finetune' transfers from 'split0/baseline/pretrain'" in early.stderr
    done = task("transfer", 1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "array task 1: split0/binary/finetune" in done.stdout
    assert sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("results.json")) == [
        "split0/binary/finetune",
        "split0/binary/pretrain",
    ]
    assert not (out / "split0" / "baseline").exists()
