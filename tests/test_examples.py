"""The example command lines: help, --list, bad input, --smoke of every experiment of the
DenseNet, WRN and digits examples, torchrun, the SLURM script, and every command
docs/experiments.md shows (the ImageNet example's own data and smoke run: test_imagenet.py;
the digits example's data, network and report: test_digits.py)."""

import argparse
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
REPRODUCING = ROOT / "docs" / "reproducing.md"
# One thread per process: the runs are tiny, and the test machine is shared.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
NAMES = ["cifar100_densenet", "cifar100_wrn", "imagenet100_densenet121", "digits"]


def load_example(name):
    """The ``Example`` of ``examples/<name>.py``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLE


EXAMPLES = {name: load_example(name) for name in NAMES}
cli = EXAMPLES["cifar100_densenet"]
wrn = EXAMPLES["cifar100_wrn"]
# (example, experiment) for every experiment each example offers.
EVERY_EXPERIMENT = [(n, e) for n in NAMES for e in EXAMPLES[n].experiments]


def _main(capsys, *args, example=cli):
    """Run the example's ``main`` in this process; its standard output."""
    example.main([*args])
    return capsys.readouterr().out


def run_example(name, *args, timeout=300, **kwargs):
    """``python examples/<name>.py ARGS`` in a process of its own, from the repository."""
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), *args], capture_output=True,
        text=True, timeout=timeout, env=ENV, cwd=ROOT, **kwargs,
    )  # fmt: skip


def _run(*args, timeout=300, **kwargs):
    return run_example("cifar100_densenet", *args, timeout=timeout, **kwargs)


def help_entries(example, capsys, monkeypatch):
    """``--help``'s text, and each option's entry (its line and the help under it) by its
    first flag."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    parts = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])
    entries = {}
    for part in parts:
        entry = " ".join(part.split())
        entries[entry.split(" ", 1)[0].rstrip(",")] = entry
    return text, entries


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_every_default(name, capsys, monkeypatch):
    example = EXAMPLES[name]
    text, entries = help_entries(example, capsys, monkeypatch)
    options = [a for a in example.build_parser()._actions if a.option_strings]
    checked = 0
    for action in options:
        if action.default is None or action.default is False or action.dest == "help":
            continue  # on/off flags, --out (required), --run / --split-seeds (all / --splits)
        entry = entries[action.option_strings[0]]
        if action.default is argparse.SUPPRESS:  # the default depends on --smoke or more
            assert re.search(r"\(default: [^()]+(\([^()]*\)[^()]*)*\)$", entry), entry
        else:
            assert entry.endswith(f"(default: {action.default})"), entry
        checked += 1
    assert checked >= 15
    setup = example.setup
    assert entries["--batch-size"].endswith(f"(default: {setup.options.batch_size})")
    assert entries["--weight-decay"].endswith(f"(default: {setup.options.weight_decay})")
    if name == "cifar100_densenet":
        assert (
            "(default: 2 (paired, freeze, long-tail, aux-labels); 1 (reset, weight-sweep, heads))"
            in text
        )
        assert "(default: 126 151)" in text and "(default: 0.1 0.01 0.001)" in text
    if name == "cifar100_wrn":
        assert entries["--freeze-at"].endswith("(default: 0 1.1 1 2.1 2 3.0 3.1 3.2 3)")
        assert entries["--batch-size"].endswith("(default: 128)")
        assert "paired: baseline vs binary on each split (Fig. 6)" in text
    if name == "imagenet100_densenet121":
        assert entries["--pretrain-milestones"].endswith("(default: 31 61)")
        assert entries["--transfer-epochs"].endswith("(default: 50)")
        assert entries["--workers"].endswith("(default: 8)")
        assert entries["--crop-size"].endswith("(default: 224)")
        assert entries["--class-seed"].endswith("(default: 0)")
        assert "--freeze-at" not in entries and "--download" not in entries


@pytest.mark.parametrize(("name", "experiment"), EVERY_EXPERIMENT)
def test_list_prints_the_run_ids_only(name, experiment, tmp_path, capsys):
    example = EXAMPLES[name]
    setup = example.setup
    example.main(["--experiment", experiment, "--out", str(tmp_path / "out"), "--list"])
    assert capsys.readouterr().out.splitlines() == protocols.build(experiment, setup=setup).ids
    example.main(["--experiment", experiment, "--out", str(tmp_path / "out"), "--list", "--smoke"])
    smoke = protocols.build(
        experiment, setup=setup, **protocols.smoke_parameters(experiment, setup)
    )
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
    params = cli.parameters(args, cli.build_parser())
    plan = protocols.build("paired", **params)
    fine = plan["split0/binary/finetune"].config
    # Only the epochs changed: the milestones keep their fractions (51 -> 11, 76 -> 16).
    assert fine.lr_table == ((1, (0.02, 0.1)), (11, (0.02, 0.01)), (16, (0.002, 0.001)))
    assert (fine.batch_size, fine.bn, fine.transfer_weights, fine.seed) == (32, "update", "last", 5)
    assert plan["split0/binary/pretrain"].config.epochs == 175


def test_aux_labels_flags_reach_the_plan(tmp_path, capsys):
    out = str(tmp_path / "out")
    ids = _main(capsys, "--experiment", "aux-labels", "--out", out, "--list", "--splits", "1",
                "--aux", "coarse", "random", "--groups", "7").splitlines()  # fmt: skip
    assert ids == [
        "split0/baseline/pretrain", "split0/random7/pretrain", "split0/coarse/pretrain",
        "split0/baseline/finetune", "split0/random7/finetune", "split0/coarse/finetune",
    ]  # fmt: skip
    plan = protocols.build("aux-labels", splits=1, aux=["coarse", "random"], num_groups=7)
    assert plan.ids == ids and plan["split0/random7/pretrain"].config.num_groups == 7
    weight = _main(capsys, "--experiment", "aux-labels", "--out", out, "--list",
                   "--aux-weight", "0.2").splitlines()  # fmt: skip
    plan = protocols.build("aux-labels", aux_weight=0.2)
    assert weight == plan.ids and plan["split1/coarse/pretrain"].config.binary_weight == 0.2


def test_a_schedule_whose_phases_collapse_says_so(tmp_path, capsys):
    out = str(tmp_path / "out")
    cli.main(["--out", out, "--list", "--pretrain-epochs", "4"])
    err = capsys.readouterr().err
    assert "note: --pretrain-epochs 4 keeps 2 of the schedule's 3 rate phases" in err
    cli.main(["--out", out, "--list", "--pretrain-epochs", "100"])
    assert "note:" not in capsys.readouterr().err


def test_wrn_flags_reach_the_plan(tmp_path, capsys):
    out = str(tmp_path / "out")
    wrn.main(["--experiment", "freeze", "--out", out, "--list", "--splits", "1",
              "--freeze-at", "0", "2.3", "3"])  # fmt: skip
    assert capsys.readouterr().out.split() == [
        f"split0/{step}" for step in (
            "baseline/pretrain", "binary/pretrain", "baseline/freeze-0", "baseline/freeze-2.3",
            "baseline/freeze-3", "binary/freeze-0", "binary/freeze-2.3", "binary/freeze-3")
    ]  # fmt: skip
    args = wrn.build_parser().parse_args(["--out", out, "--weight-decay", "1e-3"])
    plan = protocols.build("paired", setup=wrn.setup, **wrn.parameters(args, wrn.build_parser()))
    pre, fine = plan["split1/binary/pretrain"].config, plan["split1/binary/finetune"].config
    assert (pre.model, pre.model_kwargs, pre.batch_size) == ("cifar_wrn_28_10", {}, 128)
    assert (pre.weight_decay, fine.weight_decay, pre.binary_weight) == (1e-3, 1e-3, 0.4)
    assert (pre.epochs, fine.epochs, fine.lr_table) == (175, 100, protocols.FINETUNE_100.lr_table)


BAD_INPUT = [
    ("cifar100_densenet", ["--experiment", "nope"], "--experiment"),
    ("cifar100_densenet", ["--experiment", "freeze", "--freeze-at", "0", "2.99"], "--freeze-at"),
    ("cifar100_densenet", ["--experiment", "reset", "--reset-at", "head"], "--reset-at"),
    ("cifar100_densenet", ["--run", "split0/binary/fine"], "--run"),
    ("cifar100_densenet", ["--run", "split0/binary/finetune"], "--run"),  # pre-training not run
    ("cifar100_densenet", ["--data-root", "{tmp}/nowhere"], "--data-root"),
    ("cifar100_densenet", ["--splits", "0"], "--splits"),
    ("cifar100_densenet", ["--split-seeds", "1", "1"], "--split-seeds"),
    ("cifar100_densenet", ["--binary-weight", "1.5"], "--binary-weight"),
    ("cifar100_densenet", ["--experiment", "weight-sweep", "--weights", "0", "1.5"], "--weights"),
    ("cifar100_densenet", ["--experiment", "heads", "--head-weight", "0.5"], "--head-weight"),
    ("cifar100_densenet", ["--experiment", "aux-labels", "--groups", "51"], "--groups"),
    ("cifar100_densenet", ["--weight-decay", "-1"], "--weight-decay"),
    ("cifar100_densenet", ["--momentum", "2"], "--momentum"),
    ("cifar100_densenet", ["--experiment", "paired", "--groups", "7"], "--groups"),
    ("cifar100_densenet", ["--experiment", "aux-labels", "--aux", "wordnet"], "--aux"),
    ("cifar100_densenet", ["--experiment", "aux-labels", "--aux-weight", "0"], "--aux-weight"),
    ("cifar100_densenet", ["--freeze-at", "2.9"], "--freeze-at"),  # not an option of paired
    ("cifar100_densenet", ["--smoke", "--transfer-milestones", "5"], "--transfer-milestones"),
    ("cifar100_densenet", ["--body-lr", "0.1"], "--body-lr"),
    ("cifar100_densenet", ["--batch-size", "0"], "--batch-size"),
    (
        "cifar100_densenet",
        ["--smoke", "--experiment", "long-tail", "--per-class", "61"],
        "--per-class",
    ),
    ("cifar100_densenet", ["--smoke", "--stop-after", "0"], "--stop-after"),
    ("cifar100_densenet", ["--smoke", "--device", "nonsense"], "--device"),
    ("cifar100_wrn", ["--experiment", "nope"], "--experiment"),
    ("cifar100_wrn", ["--experiment", "freeze", "--freeze-at", "0", "2.9"], "--freeze-at"),
    ("cifar100_wrn", ["--experiment", "reset", "--reset-at", "1.4"], "--reset-at"),
    ("cifar100_wrn", ["--smoke", "--experiment", "freeze", "--freeze-at", "2.3"], "--freeze-at"),
    ("cifar100_wrn", ["--run", "split0/binary/finetune"], "--run"),
    ("cifar100_wrn", ["--data-root", "{tmp}/nowhere"], "--data-root"),
    ("cifar100_wrn", ["--binary-weight", "-0.1"], "--binary-weight"),
    ("cifar100_wrn", ["--pretrain-lr", "0.1", "0.01"], "--pretrain-lr"),
    ("cifar100_wrn", ["--smoke", "--batch-size", "300"], "--batch-size"),
    ("imagenet100_densenet121", ["--experiment", "freeze"], "--experiment"),
    ("imagenet100_densenet121", ["--freeze-at", "2"], "--freeze-at"),
    ("imagenet100_densenet121", ["--data-root", "{tmp}/nowhere"], "--data-root"),
    ("imagenet100_densenet121", ["--crop-size", "0"], "--crop-size"),
    ("imagenet100_densenet121", ["--resize-size", "200"], "--resize-size"),
    ("imagenet100_densenet121", ["--smoke", "--resize-size", "31"], "--resize-size"),
    ("imagenet100_densenet121", ["--workers", "-1"], "--workers"),
    ("imagenet100_densenet121", ["--class-seed", "-1"], "--class-seed"),
    ("imagenet100_densenet121", ["--transfer-milestones", "60"], "--transfer-milestones"),
    ("imagenet100_densenet121", ["--smoke", "--batch-size", "151"], "--batch-size"),
]


@pytest.mark.parametrize(("name", "args", "flag"), BAD_INPUT)
def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(
    name, args, flag, tmp_path, capsys
):
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        EXAMPLES[name].main(["--out", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("usage: "), err
    assert "error: " in err[1] and flag in err[1], err[1]
    assert not out.exists()


def test_an_interrupted_call_is_one_line_saying_how_to_continue(tmp_path, capsys, monkeypatch):
    from auxtransfer.experiments import execute as executing

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(executing, "execute", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        EXAMPLES["cifar100_densenet"].main(["--smoke", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == (
        "cifar100_densenet.py: interrupted: run the same command again to continue (finished "
        "runs are skipped, an unfinished one resumes from its last finished epoch)\n"
    ).replace("cifar100_densenet.py", EXAMPLES["cifar100_densenet"].build_parser().prog)


def test_under_torchrun_rank_0_alone_says_what_is_wrong(tmp_path, capsys, monkeypatch):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from auxtransfer.experiments import torchrun

    waits = []  # (seconds, whether the error file was written by then)
    monkeypatch.setattr(torchrun.time, "sleep", lambda s: waits.append((s, error_file.exists())))
    args = ["--out", str(tmp_path / "out"), "--batch-size", "0", "--smoke"]
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        waits.clear()
        error_file = tmp_path / f"error-{rank}.json"
        monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
        with pytest.raises(SystemExit) as exit_info:
            EXAMPLES["cifar100_densenet"].main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert ("error: " in err) is said, (rank, err)
        # Every rank names the error in torchrun's report: the line rank 0 prints, in the
        # form torchrun itself reads (a plain string there makes it log warnings).
        message = json.loads(error_file.read_text())["message"]
        prog = EXAMPLES["cifar100_densenet"].build_parser().prog
        assert message["message"].startswith(f"{prog}: error: Expected --batch-size")
        assert "\n" not in message["message"]
        assert message["extraInfo"]["py_callstack"] == message["message"]
        failure = ProcessFailure(int(rank), 1234, 2, str(error_file))
        assert failure.message == message and failure.timestamp > 0
        if said:
            assert err.splitlines()[-1] == message["message"]
        # The other ranks end after rank 0 has said it, and write their error after waiting
        # (torchrun ends them first), so rank 0's is the first in torchrun's report.
        assert waits == ([] if said else [(torchrun.QUIET_RANK_WAIT_S, False)])
    # The help too, once.
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exit_info:
            EXAMPLES["cifar100_densenet"].main(["--help"])
        assert exit_info.value.code == 0
        assert ("usage:" in capsys.readouterr().out) is said


def test_under_torchrun_the_launchers_report_names_the_error(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node=2", str(ROOT / "examples" / "cifar100_densenet.py"),
               "--smoke", "--device", "cpu", "--out", str(tmp_path / "out"), "--weight-decay", "-1"]  # fmt: skip
    # Rank 0 the slower to start (by 3 s): it still says what is wrong before torchrun ends
    # the processes.
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import os, time\nif os.environ.get('RANK') == '0':\n    time.sleep(3)\n"
    )
    env = {
        **ENV,
        "PYTHONPATH": os.pathsep.join([str(slow), *filter(None, [ENV.get("PYTHONPATH")])]),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1  # torchrun's status when a process fails
    line = "cifar100_densenet.py: error: Expected --weight-decay to be a finite float >= 0"
    err = result.stderr
    assert err.count(f"\n{line}") == 1, err  # said once, by rank 0
    # torchrun's report quotes it instead of a page on tracebacks, with rank 0 as the root
    # cause; rank 1 was ended by torchrun while it waited for rank 0 to say it.
    others, root_cause = err.split("\nFailures:\n", 1)[1].split("Root Cause", 1)
    assert "rank      : 0 (local_rank: 0)" in root_cause and f"traceback : {line}" in root_cause
    assert "rank      : 1 (local_rank: 1)" in others and "(SIGTERM)" in others, err
    assert "To enable traceback see" not in err and "new message format" not in err
    assert not (tmp_path / "out").exists()


def test_a_failing_run_in_a_plain_call_lets_the_others_finish(tmp_path, capsys, one_thread):
    example, out, run = EXAMPLES["cifar100_densenet"], tmp_path / "out", "split0/baseline/pretrain"
    argv = ["--smoke", "--device", "cpu", "--out", str(out)]
    example.main([*argv, "--run", run, "--stop-after", "1"])
    capsys.readouterr()
    (out / run / "last.pt").write_bytes(b"damaged")
    with pytest.raises(SystemExit) as exit_info:
        example.main(argv)
    assert exit_info.value.code == 1
    stdout, stderr = capsys.readouterr()
    lines = stdout.splitlines()
    assert lines[:2] == [
        f"resuming {run} (2 epochs, 1 done)",
        f"failed {run}: ValueError: Expected {out / run / 'last.pt'} to be an auxtransfer "
        f"checkpoint, but it cannot be read: it is damaged or not a checkpoint (not the zip "
        f"archive that torch.save writes)",
    ]
    assert (
        f"not started split0/baseline/finetune: the run it transfers from, {run}, failed" in lines
    )
    table = {line.split()[0]: line.split()[2] for line in lines[-4:]}
    assert table[run] == "unfinished" and table["split0/baseline/finetune"] == "new"
    for finished in ("split0/binary/pretrain", "split0/binary/finetune"):
        assert (out / finished / "results.json").exists() and table[finished] != "unfinished"
    prog = example.build_parser().prog
    assert stderr.splitlines() == [
        f"{prog}: error: 1 run(s) failed: {run} (their errors are above); run the same command "
        f"again once fixed"
    ]
    assert (out / run / "last.pt").read_bytes() == b"damaged"


def test_under_torchrun_a_failing_run_is_one_line_and_its_traceback_in_the_report(
    tmp_path, capsys, one_thread
):
    out, run = tmp_path / "out", "split0/baseline/pretrain"
    EXAMPLES["cifar100_densenet"].main(["--smoke", "--device", "cpu", "--out", str(out),
                                        "--run", run, "--stop-after", "1"])  # fmt: skip
    capsys.readouterr()
    (out / run / "last.pt").write_bytes(b"damaged")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    command = [torchrun, "--nproc_per_node=2", str(ROOT / "examples" / "cifar100_densenet.py"),
               "--smoke", "--device", "cpu", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=ENV,
                            cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    error = (f"ValueError: Expected {out / run / 'last.pt'} to be an auxtransfer checkpoint, but "
             f"it cannot be read: it is damaged or not a checkpoint (not the zip archive that "
             f"torch.save writes)")  # fmt: skip
    said = result.stdout.splitlines()
    assert said == [f"resuming {run} (2 epochs, 1 done)",
                    f"failed {run}: {error} (under torchrun this ends the call)"]  # fmt: skip
    err = result.stderr
    assert err.count("error: a run failed, which under torchrun ends every process") == 1, err
    # torchrun's report: rank 0's traceback, ending in the error.
    root_cause = err.split("Root Cause (first observed failure):", 1)[1]
    assert "traceback : Traceback (most recent call last):" in root_cause, err
    assert f"  {error}" in root_cause and "To enable traceback see" not in err
    assert (out / run / "last.pt").read_bytes() == b"damaged"


def test_under_torchrun_an_error_outside_a_run_is_not_said_to_be_a_run_failing(
    tmp_path, capsys, monkeypatch
):
    """Only ``RunFailedError`` is a run that failed; anything else that ends a call under
    torchrun (loading the data, say) is said as itself, in one line."""
    from auxtransfer.experiments import cli
    from auxtransfer.experiments import plan as plans

    example, prog = EXAMPLES["cifar100_densenet"], EXAMPLES["cifar100_densenet"].build_parser().prog
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setattr(cli.dist, "is_initialized", lambda: True)

    def fails(*args, **kwargs):
        raise ValueError("cifar-100-python/train is damaged\nmore")

    monkeypatch.setattr(cli.Example, "_execute", fails)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{prog}: error: ValueError: cifar-100-python/train is damaged (under torchrun this "
        f"ends every process; its traceback is in torchrun's report)"
    ]
    recorded = json.loads(error_file.read_text())["message"]
    assert recorded["message"] == "ValueError: cifar-100-python/train is damaged"
    assert recorded["extraInfo"]["py_callstack"].startswith("Traceback (most recent call last)")

    def run_fails(*args, **kwargs):
        try:
            raise ValueError("bad\nmore")
        except ValueError as error:
            raise plans.RunFailedError("split0/baseline/pretrain", "ValueError: bad") from error

    error_file.unlink()
    monkeypatch.setattr(cli.Example, "_execute", run_fails)
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "error: a run failed, which under torchrun ends" in capsys.readouterr().err
    recorded = json.loads(error_file.read_text())["message"]
    assert recorded["message"] == "ValueError: bad"
    # The traceback is the run's own error's, not the wrapper's.
    assert recorded["extraInfo"]["py_callstack"].rstrip().endswith("ValueError: bad\nmore")
    assert "RunFailedError" not in recorded["extraInfo"]["py_callstack"]


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("kept")
    with pytest.raises(SystemExit) as exit_info:
        EXAMPLES["cifar100_densenet"].main(["--smoke", "--out", str(tmp_path / "file")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "argument --out: expected a folder" in err[1]
    assert (tmp_path / "file").read_text() == "kept"


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_in_a_process_has_no_traceback(name, tmp_path):
    result = run_example(
        name, "--out", str(tmp_path / "out"), "--binary-weight", "1.5", timeout=120
    )
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


@pytest.mark.parametrize(
    ("name", "experiment"),
    # The paired smoke runs of the WRN and ImageNet examples run as CI runs them, below and
    # in test_imagenet.py.
    [
        (n, e)
        for n, e in EVERY_EXPERIMENT
        if n != "imagenet100_densenet121" and (n, e) != ("cifar100_wrn", "paired")
    ],
)
def test_smoke_runs_every_step(name, experiment, tmp_path, capsys, one_thread, check_smoke):
    example = EXAMPLES[name]
    out = tmp_path / "out"
    args = ["--experiment", experiment, "--smoke", "--device", "cpu", "--out", str(out)]
    started = time.perf_counter()
    stdout = _main(capsys, *args, example=example)
    assert time.perf_counter() - started < 120
    table = check_smoke(experiment, out, stdout, example.setup)
    # Calling again skips every finished run.
    again = _main(capsys, *args, example=example)
    assert "training" not in again and again.splitlines()[-len(table) :] == table
    said = f"skipped {len(table) - 1} finished run(s) (their files untouched); 0 trained"
    assert any(line.startswith(said) for line in again.splitlines())


def test_wrn_smoke_as_ci_runs_it(tmp_path, check_smoke):
    """``python examples/cifar100_wrn.py --smoke`` end to end in a process of its own, well
    under two minutes; its runs are tiny WRNs."""
    out = tmp_path / "out"
    started = time.perf_counter()
    result = run_example("cifar100_wrn", "--smoke", "--device", "cpu", "--out", str(out))
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 60, seconds
    check_smoke("paired", out, result.stdout, protocols.WRN_CIFAR)
    config = json.loads((out / "split0/binary/finetune/config.json").read_text())
    assert (config["model"], config["model_kwargs"]) == (
        "cifar_wrn_28_10",
        {"depth": 10, "widen_factor": 1},
    )


def test_stop_after_says_how_to_continue(tmp_path, capsys, one_thread, check_smoke):
    args = ["--smoke", "--device", "cpu", "--out", str(tmp_path / "out")]
    stdout = _main(capsys, *args, "--stop-after", "3")
    assert "stopped in split0/binary/pretrain after --stop-after 3 epoch(s)" in stdout
    assert "run the same command again to continue" in stdout
    again = _main(capsys, *args)
    assert "resuming split0/binary/pretrain" in again
    assert "training split0/baseline/pretrain" not in again
    check_smoke("paired", tmp_path / "out", again)


def _doc_commands():
    """The commands of docs/experiments.md's example section, joined across backslashes
    (the SLURM lines with shell substitutions are left to test_slurm_array_script)."""
    section = DOCS.read_text().split("## Plans of runs", 1)[1]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = []
    for block in blocks:
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #", 1)[0].strip()
            if re.search(r"examples/\w+\.py", command) and "$" not in command:
                commands.append(command)
    return commands


def test_torchrun_smoke_as_the_docs_show(tmp_path, check_smoke):
    (command,) = [c for c in _doc_commands() if c.startswith("torchrun") and "--smoke" in c]
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
    check_smoke("paired", tmp_path / words[-1], result.stdout)


def test_the_docs_show_every_example():
    shown = {re.search(r"examples/(\w+)\.py", c).group(1) for c in _doc_commands()}
    assert shown == set(NAMES)


@pytest.mark.parametrize("command", [c for c in _doc_commands() if c.startswith("python ")])
def test_doc_commands_work_as_written(
    command, tmp_path, capsys, monkeypatch, one_thread, check_smoke
):
    """The commands on synthetic data run exactly as written, from an empty folder (here,
    in this process); those that need CIFAR-100 or ImageNet are planned, with --list added."""
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    assert words[0] == "python" and re.fullmatch(r"examples/\w+\.py", words[1]), words
    example = EXAMPLES[Path(words[1]).stem]
    needs_data = "--smoke" not in words and "--list" not in words
    stdout = _main(capsys, *words[2:], *(["--list"] if needs_data else []), example=example)
    if "--smoke" in words and "--run" not in words:
        experiment = (
            words[words.index("--experiment") + 1]
            if "--experiment" in words
            else example.experiments[0]
        )
        out = tmp_path / words[words.index("--out") + 1]
        check_smoke(experiment, out, stdout, example.setup)
    else:
        assert stdout.splitlines()


def _reproducing_commands():
    """docs/reproducing.md's commands, each with the plan size the page gives for it."""
    found = re.findall(
        r"```bash\n(python examples/\S+\.py [^\n$]*)\n```\n\nPlan: (\d+) runs \([^)]*\),\s+([\d,]+) epochs",
        REPRODUCING.read_text(),
    )
    return [(command, int(runs), int(epochs.replace(",", ""))) for command, runs, epochs in found]


def test_reproducing_covers_every_figure():
    """The cost table has a row for each of Figs. 2-10, 14, 15 and Table 1, and each
    figure's section a command whose plan size is checked below."""
    figures, table = set(), False
    for cell in re.findall(r"^\| ([^|]+?) \|", REPRODUCING.read_text(), re.M):
        table = table or "Table 1" in cell
        for first, last in re.findall(r"(\d+)(?:-(\d+))?", cell.replace("Table 1", "")):
            figures.update(range(int(first), int(last or first) + 1))
    assert table and {2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15} <= figures, figures
    assert len(_reproducing_commands()) == 9


@pytest.mark.parametrize("entry", _reproducing_commands(), ids=lambda entry: entry[0][:60])
def test_reproducing_commands_plan_what_the_page_says(entry, tmp_path, capsys, monkeypatch):
    """Each figure's command is valid as written, and its plan has the runs and epochs the
    page states."""
    command, runs, epochs = entry
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    example = EXAMPLES[Path(words[1]).stem]
    ids = _main(capsys, *words[2:], "--list", example=example).splitlines()
    experiment = (
        words[words.index("--experiment") + 1]
        if "--experiment" in words
        else example.experiments[0]
    )
    plan = protocols.build(experiment, setup=example.setup)
    assert ids == plan.ids and len(ids) == runs
    assert sum(run.config.epochs for run in plan) == epochs
    assert not any(tmp_path.iterdir())


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


def test_slurm_array_script_under_torchrun(tmp_path):
    """LAUNCH="torchrun ...": the run id reaches the example (torchrun would take ``--run``
    for its ``--run-path``), which trains it with DDP."""
    script, out = ROOT / "examples" / "slurm_array.sh", tmp_path / "out"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**ENV, "SLURM_ARRAY_TASK_ID": "0", "PYTHON": sys.executable,
           "LAUNCH": f"{torchrun} --nproc_per_node=2"}  # fmt: skip
    command = ["bash", str(script), "pretrain", "--smoke", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "array task 0: split0/baseline/pretrain" in done.stdout
    assert [p.parent.relative_to(out).as_posix() for p in out.rglob("results.json")] == [
        "split0/baseline/pretrain"
    ]
    assert done.stdout.count("final error") == 1  # rank 0's summary


@pytest.mark.parametrize("example", ["cifar100_wrn", "imagenet100_densenet121"])
def test_slurm_array_script_drives_the_other_examples(tmp_path, example):
    script = ROOT / "examples" / "slurm_array.sh"
    out = tmp_path / "out"
    env = {**ENV, "SLURM_ARRAY_TASK_ID": "0", "PYTHON": sys.executable,
           "EXAMPLE": f"examples/{example}.py"}  # fmt: skip
    command = ["bash", str(script), "pretrain", "--smoke", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "array task 0: split0/baseline/pretrain" in done.stdout
    config = json.loads((out / "split0/baseline/pretrain/config.json").read_text())
    assert config["model"] == {"cifar100_wrn": "cifar_wrn_28_10"}.get(example, "densenet121")


@pytest.mark.parametrize("damage", ["garbage", "download"])
def test_unloadable_data_is_one_line_naming_the_flag_and_writes_nothing(
    damage, tmp_path, capsys, monkeypatch
):
    # A damaged CIFAR-100 file, or a download that fails (no network): one line, exit 2,
    # before the first run writes anything.
    import torchvision

    root, out = tmp_path / "data", tmp_path / "out"
    args = ["--out", str(out), "--data-root", str(root), "--run", "split0/baseline/pretrain"]
    if damage == "garbage":
        (root / "cifar-100-python").mkdir(parents=True)
        for split in ("train", "test"):
            (root / "cifar-100-python" / split).write_bytes(b"not a pickle")
        expected = "to be a CIFAR-100 batch with 'data' and 'fine_labels'"
    else:

        def offline(*args, **kwargs):
            raise OSError("[Errno -3] Temporary failure in name resolution")

        monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
        args.append("--download")
        expected = "downloading it failed (OSError: [Errno -3]"
    with pytest.raises(SystemExit) as exit_info:
        EXAMPLES["cifar100_densenet"].main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: argument --data-root: " in err[-1]
    assert expected in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


@pytest.mark.parametrize("name", NAMES)
def test_help_shows_the_docstrings_commands_as_written(name):
    """A backslash at a line's end inside a docstring joins the lines: --help would show a
    command other than the one the source shows."""
    source = (ROOT / "examples" / f"{name}.py").read_text()
    docstring = source.split('"""', 2)[1]
    assert "\\\n" not in docstring


def test_list_needs_no_out_and_the_rest_still_does(capsys):
    assert _main(capsys, "--list").splitlines() == protocols.build("paired").ids
    with pytest.raises(SystemExit) as stop:
        cli.main(["--smoke"])
    assert stop.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_a_call_on_a_finished_plan_says_it_skipped_its_runs(tmp_path, capsys, one_thread):
    out = str(tmp_path / "out")
    first = _main(capsys, "--smoke", "--device", "cpu", "--out", out)
    assert "skipped" not in first
    again = _main(capsys, "--smoke", "--device", "cpu", "--out", out)
    assert again.splitlines()[0] == (
        "skipped 4 finished run(s) (their files untouched); 0 trained or resumed in this call"
    )


def test_smoke_rates_are_the_smoke_schedules_or_the_full_ones(capsys):
    """Two rates are the smoke schedule's two phases, three the paper's scaled to it (as
    before); a smoke address that the tiny model lacks says that the tiny model is why."""
    parser = cli.build_parser()

    def pretrain(*rates):
        args = parser.parse_args(["--smoke", "--list", "--pretrain-lr", *rates])
        return cli.parameters(args, parser)["pretrain"]

    smoke = protocols.smoke_parameters("paired")["pretrain"]
    assert smoke.epochs == 2 and len(smoke.milestones) == 1  # what --smoke trains
    two = pretrain("0.2", "0.02")
    assert (two.epochs, two.milestones, two.rates) == (2, smoke.milestones, ((0.2, 0.02),))
    paper = protocols.defaults("pretrain")["paired"]
    three = pretrain("0.2", "0.02", "0.002")
    assert three == paper.adjusted(rates=[(0.2, 0.02, 0.002)]).scaled(protocols.SMOKE_EPOCHS)
    with pytest.raises(SystemExit):
        pretrain("0.2")
    assert "Expected one rate per phase (2 with milestones [2])" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--experiment", "freeze", "--freeze-at", "2.9", "--smoke", "--list"])
    err = capsys.readouterr().err
    assert "closest first: 2.1" in err and "the smoke runs' tiny model (depth=10" in err
