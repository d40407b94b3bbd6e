"""Runs of a plan at once, each in a process of its own (``execute(..., jobs=N)``,
``--jobs N``): the numbers of one run after the other, skip and resume, ``stop_after``,
dependency order, a failing run, and bad input. Every process starts a fresh interpreter
(seconds on a busy CPU), so the plans are the smoke plan or a part of it."""

import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from auxtransfer.experiments import execute as executing
from auxtransfer.experiments import protocols
from auxtransfer.experiments.execute import execute
from auxtransfer.experiments.processes import LOG_NAME
from auxtransfer.experiments.rundir import RunDir
from auxtransfer.experiments.sources import SyntheticCifar100

ROOT = Path(__file__).resolve().parents[1]
BASELINE, BINARY = "split0/baseline/pretrain", "split0/binary/pretrain"
BASELINE_FT, BINARY_FT = "split0/baseline/finetune", "split0/binary/finetune"


def _smoke():
    return protocols.build("paired", **protocols.smoke_parameters("paired"))


def _example():
    """The ``Example`` of examples/cifar100_densenet.py."""
    path = ROOT / "examples" / "cifar100_densenet.py"
    spec = importlib.util.spec_from_file_location("cifar100_densenet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLE


@pytest.fixture
def child_threads(monkeypatch):
    """One torch thread in every run's process too (they inherit OMP_NUM_THREADS): the
    numbers of one thread here, and a shared test machine."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _numbers(run_dir):
    """What a run computed: its results, every metrics row but its time, its last weights."""
    run = RunDir(run_dir)
    rows = [{k: v for k, v in row.items() if k != "seconds"} for row in run.read_metrics()]
    weights = torch.load(run.checkpoint_path, weights_only=True)["model"]
    return run.read_results(), rows, weights


def _snapshot(folder):
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_jobs_give_the_numbers_of_one_in_dependency_order(tmp_path, one_thread, child_threads):
    plan, source, ids = _smoke(), SyntheticCifar100(), [BASELINE, BINARY, BINARY_FT]
    one = execute(plan, tmp_path / "one", source, ids=ids)
    said = []
    two = execute(plan, tmp_path / "two", source, ids=ids, jobs=2, report=said.append,
                  progress=True)  # fmt: skip
    assert [(o.id, o.status) for o in two] == [(i, "trained") for i in ids]
    # With progress, each epoch of each run as a line (train.log's, named) between the
    # lines saying that it started and that it finished.
    epoch_line = re.compile(r"(\S+) \[job (\d)\] (epoch .*)")
    lines = [line for line in said if not epoch_line.fullmatch(line)]
    for run_id in ids:
        shown = [
            (i, m) for i, m in enumerate(map(epoch_line.fullmatch, said)) if m and m[1] == run_id
        ]
        logged = (tmp_path / "two" / run_id / LOG_NAME).read_text().splitlines()[1:]
        assert [m[3] for _, m in shown] == logged and len(logged) == 2, said
        (job,) = {m[2] for _, m in shown}
        start = said.index(f"training {run_id} (2 epochs) [job {job} on cpu]")
        assert start < shown[0][0] and shown[-1][0] < said.index(f"finished {run_id} [job {job}]")
    # Both pre-trainings start at once, one per job slot; the transfer in a free slot once
    # its own pre-training has finished, whichever ends first.
    assert lines[:2] == [
        f"training {BASELINE} (2 epochs) [job 1 on cpu]",
        f"training {BINARY} (2 epochs) [job 2 on cpu]",
    ]
    slots = [re.sub(r"\[job \d", "[job k", line) for line in lines[2:]]
    assert sorted(slots) == sorted([
        f"finished {BASELINE} [job k]", f"finished {BINARY} [job k]",
        f"training {BINARY_FT} (2 epochs) [job k on cpu]", f"finished {BINARY_FT} [job k]",
    ])  # fmt: skip
    assert slots.index(f"finished {BINARY} [job k]") < slots.index(
        f"training {BINARY_FT} (2 epochs) [job k on cpu]"
    )
    started = RunDir(tmp_path / "two" / BINARY_FT).config_path.stat().st_mtime_ns
    assert started >= RunDir(tmp_path / "two" / BINARY).results_path.stat().st_mtime_ns
    for a, b in zip(one, two, strict=True):
        assert a.results == b.results
        results, rows, weights = _numbers(tmp_path / "one" / a.id)
        results_2, rows_2, weights_2 = _numbers(tmp_path / "two" / b.id)
        assert results == results_2 and rows == rows_2, a.id
        assert weights.keys() == weights_2.keys()
        assert all(torch.equal(weights[k], weights_2[k]) for k in weights), a.id
        # Trained in a process of its own, which wrote its log; none in this process.
        (header, *epochs) = (tmp_path / "two" / b.id / LOG_NAME).read_text().splitlines()
        pid = re.fullmatch(rf"--- [\d: -]+ training {b.id} on cpu \(process (\d+)\)", header)
        assert pid and int(pid.group(1)) != os.getpid(), header
        # One line per epoch, with the numbers metrics.csv holds.
        assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], epochs
        assert f"error {float(rows_2[-1]['test_error']):.2f} % (lr" in epochs[-1]
        assert not (tmp_path / "one" / a.id / LOG_NAME).exists()


def test_one_call_skips_resumes_stops_and_goes_on_after_a_failure(
    tmp_path, capsys, one_thread, child_threads
):
    """``--experiment heads``: three pre-trainings, a transfer from each. One finished, the
    transfer from it stopped after an epoch, one pre-training with a broken checkpoint,
    one new: three runs at once, each stopped after at most one epoch (``--stop-after``)."""
    example, out = _example(), tmp_path / "out"
    base = ["--experiment", "heads", "--smoke", "--device", "cpu", "--out", str(out)]
    finished, resumed = "split0/baseline/pretrain", "split0/baseline/finetune"
    broken, blocked = "split0/b0.1x1/pretrain", "split0/b0.1x1/finetune"
    stopped, waits = "split0/b0.1x2/pretrain", "split0/b0.1x2/finetune"
    example.main([*base, "--run", finished])
    example.main([*base, "--run", resumed, "--stop-after", "1"])
    parser = example.build_parser()
    args = parser.parse_args(base)
    plan = protocols.build("heads", setup=example.setup, **example.parameters(args, parser))
    # An unfinished run whose checkpoint cannot be read: resuming it fails.
    RunDir(out / broken).write_config(plan[broken].config.to_json())
    RunDir(out / broken).checkpoint_path.write_bytes(b"not a checkpoint")
    untouched, first_row = _snapshot(out / finished), RunDir(out / resumed).read_metrics()[0]
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        example.main([*base, "--jobs", "3", "--stop-after", "1"])
    assert exit_info.value.code == 1
    stdout, stderr = capsys.readouterr()
    lines = stdout.splitlines()
    assert not [line for line in lines if "] epoch " in line]  # not a terminal: no progress
    assert lines[:3] == [
        f"resuming {broken} (2 epochs, 0 done) [job 1 on cpu]",
        f"training {stopped} (2 epochs) [job 2 on cpu]",
        f"resuming {resumed} (2 epochs, 1 done) [job 3 on cpu]",
    ]
    # The failure: its first line, the end of its log; the transfer from it not started.
    log = out / broken / LOG_NAME
    tail = log.read_text().splitlines()[-20:]
    error = next(line for line in tail if line.startswith("ValueError: "))
    assert error.startswith(f"ValueError: Expected {out / broken / 'last.pt'} to be an auxtransfer")
    report = [
        f"failed {broken} [job 1]: {error}",
        f"  log: {log}, its last {len(tail)} lines:",
        *(f"    {line}" for line in tail),
    ]
    failed = lines.index(report[0])
    assert lines[failed : failed + len(report)] == report
    assert f"not started {blocked}: the run it transfers from, {broken}, failed" in lines[failed:]
    # The others: skipped untouched, resumed to the end (one epoch was left), stopped after
    # one epoch and the transfer from it not started.
    assert _snapshot(out / finished) == untouched  # the same bytes and times, no log
    rows = RunDir(out / resumed).read_metrics()
    assert rows[0] == first_row and [r["epoch"] for r in rows] == ["1", "2"]
    assert RunDir(out / resumed).is_finished() and f"finished {resumed} [job 3]" in lines
    assert [r["epoch"] for r in RunDir(out / stopped).read_metrics()] == ["1"]
    assert f"stopped {stopped} after 1 epoch(s) [job 2]: the next call resumes it" in lines
    assert f"not started {waits}: the run it transfers from, {stopped}, stopped" in lines
    assert not (out / blocked).exists() and not (out / waits).exists()
    headers = [line.split()[3] for line in (out / resumed / LOG_NAME).read_text().splitlines()
               if line.startswith("--- ")]  # fmt: skip
    assert headers == ["resuming"]
    # The summary table and how to go on, then the one-line error.
    table = lines[-8:-1]
    assert [line.split()[:3] for line in table] == [
        ["run", "data", "final"],
        [finished, "A", f"{RunDir(out / finished).read_results()['final_test_error']:.2f}"],
        [broken, "A", "unfinished"],
        [stopped, "A", "unfinished"],
        [resumed, "B", f"{RunDir(out / resumed).read_results()['final_test_error']:.2f}"],
        [blocked, "B", "new"],
        [waits, "B", "new"],
    ]
    assert lines[-1] == (
        "stopped 1 run(s) after --stop-after 1 epoch(s) per job, 4 run(s) left: run the same "
        "command again to continue"
    )
    assert stderr.splitlines() == [
        f"{parser.prog}: error: 1 run(s) failed: {broken} (see their logs above); "
        f"run the same command again once fixed"
    ]
    assert (out / broken / "last.pt").read_bytes() == b"not a checkpoint"


def test_the_command_line_passes_jobs_and_cuda_graphs_on(tmp_path, monkeypatch, one_thread):
    calls = []

    def record(plan, out, source, **kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(executing, "execute", record)
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path / "out")]
    _example().main([*argv, "--jobs", "3", "--no-cuda-graphs"])
    _example().main(argv)
    assert [(c["jobs"], c["cuda_graphs"]) for c in calls] == [(3, False), (1, True)]
    # Progress where it shows: with --jobs, lines on stdout; else a bar on stderr.
    for terminal in ("stdout", "stderr"):
        for stream in ("stdout", "stderr"):  # whatever pytest was run on
            shown = stream == terminal
            monkeypatch.setattr(getattr(sys, stream), "isatty", lambda s=shown: s, raising=False)
        calls.clear()
        _example().main([*argv, "--jobs", "2"])
        _example().main(argv)
        assert [c["progress"] for c in calls] == [terminal == "stdout", terminal == "stderr"]
        monkeypatch.undo()
        monkeypatch.setattr(executing, "execute", record)


def test_cuda_graphs_reach_train_one_run_at_a_time(tmp_path):
    seen = []

    def train(config, run_dir, train_data, test_data, **kwargs):
        seen.append(kwargs["cuda_graphs"])
        return None  # stopped: the call ends here

    execute(_smoke(), tmp_path, SyntheticCifar100(), train=train, cuda_graphs=False)
    execute(_smoke(), tmp_path, SyntheticCifar100(), train=train)
    assert seen == [False, True]


@pytest.mark.parametrize(
    ("jobs", "error", "message"),
    [
        (0, ValueError, "Expected `jobs` to be an int >= 1, but got 0."),
        (2.0, TypeError, "Expected `jobs` to be an int >= 1, but got 2.0 (float)."),
        ("2", TypeError, "Expected `jobs` to be an int >= 1, but got '2' (str)."),
        (True, TypeError, "Expected `jobs` to be an int >= 1, but got True (bool)."),
    ],
)
def test_bad_jobs_are_refused_before_anything_is_written(tmp_path, jobs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        execute(_smoke(), tmp_path / "out", SyntheticCifar100(), jobs=jobs)
    assert not (tmp_path / "out").exists()


def test_jobs_under_torchrun_and_unpicklable_training_are_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with pytest.raises(TypeError, match=r"Expected `train` to pickle, since with `jobs` > 1"):
        execute(_smoke(), out, SyntheticCifar100(), jobs=2, train=lambda *a, **k: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"Expected `jobs` to be 1 under torchrun, .* but got 2\."):
        execute(_smoke(), out, SyntheticCifar100(), jobs=2)
    argv = ["--smoke", "--device", "cpu", "--out", str(out)]
    for jobs, message in [
        ("2", "argument --jobs: expected 1 under torchrun, where every run trains on all 2 "
              "processes with DDP, got 2"),
        ("0", "argument --jobs: expected at least 1 run at a time, got 0"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            _example().main([*argv, "--jobs", jobs])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and err[1].endswith(f"error: {message}"), err
    assert not out.exists()


def test_job_devices_spread_over_the_visible_gpus(monkeypatch):
    from auxtransfer.experiments.processes import job_devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert [d.index for d in job_devices("cuda", 6)] == [0, 1, 2, 3, 0, 1]
    assert job_devices("cuda:1", 3) == [torch.device("cuda", 1)] * 3
    assert job_devices("cpu", 2) == [torch.device("cpu")] * 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="device_count\\(\\) is 0"):
        job_devices("cuda", 2)


def test_job_threads_share_the_cores_this_process_may_use(monkeypatch):
    from auxtransfer.experiments import processes as jobs

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's: not what counts
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert jobs.job_threads("cpu", 2) == 4
    assert jobs.job_threads("cpu", 16) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert jobs.job_threads("cpu", 2) == 2  # no more than one process alone would take
    assert jobs.job_threads("cuda:0", 2) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert jobs.job_threads("cpu", 2) is None


def test_sources_pickle_without_their_data():
    import pickle

    source = SyntheticCifar100(train_per_class=20, test_per_class=2, seed=5)
    train, _ = source.load()
    blob = pickle.dumps(source)
    assert len(blob) < 10_000 < train[0].numel()  # the images stay behind
    copy = pickle.loads(blob)
    assert copy._data is None and source._data is not None
    assert torch.equal(copy.load()[0][0], train[0]) and torch.equal(copy.load()[0][1], train[1])


def test_ctrl_c_while_the_processes_start_is_one_line(tmp_path):
    """Ctrl-C signals the terminal's whole process group: the runs' processes ignore it
    (even while still starting, before their logs are open) and are ended by the call,
    which prints its one line."""
    script = ROOT / "examples" / "cifar100_densenet.py"
    command = [sys.executable, str(script), "--smoke", "--device", "cpu", "--jobs", "2",
               "--out", str(tmp_path / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    call = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # fmt: skip
    try:
        # Said once each process has started (a Ctrl-C during a start: the next test).
        started = [call.stdout.readline() for _ in range(2)]
        assert all(line.startswith("training ") for line in started), started
        deadline = time.monotonic() + 60
        while len(_spawned_by(call.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _spawned_by(call.pid)
        assert len(children) == 2
        # Both started and still importing what they need (seconds), their logs not yet
        # open: SIGINT cannot reach them from their start, blocked until they ignore it
        # (the kernel's view of the process).
        for child in children:
            status = Path(f"/proc/{child}/status").read_text()
            masks = re.findall(r"^Sig(?:Blk|Ign):\s+([0-9a-f]+)$", status, re.M)
            assert any(int(mask, 16) >> (signal.SIGINT - 1) & 1 for mask in masks), child
        os.killpg(call.pid, signal.SIGINT)
        _, stderr = call.communicate(timeout=120)
    finally:
        if call.poll() is None:
            os.killpg(call.pid, signal.SIGKILL)
    assert call.returncode == 130, stderr
    assert stderr.splitlines() == [
        "cifar100_densenet.py: interrupted: run the same command again to continue (finished "
        "runs are skipped, an unfinished one resumes from its last finished epoch)"
    ]
    # No process of the call is left (multiprocessing's resource tracker ends on its own,
    # once it sees the call's end).
    deadline = time.monotonic() + 30
    while _group_alive(call.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(call.pid)


def _interrupted_at_a_start(tmp_path, monkeypatch, *, before=None, after=False):
    """A call of two runs at once with a Ctrl-C at its first process's start: ``before()``
    sends one before the start, ``after`` raises one just after it. The call must raise
    it, the process ended (none trains on), SIGINT as it was here."""
    import multiprocessing.context

    started = []
    start = multiprocessing.context.SpawnProcess.start

    def interrupted_start(process):
        if before is not None:
            before()
        start(process)
        started.append(process)
        if after:
            raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", interrupted_start)
    try:
        with pytest.raises(KeyboardInterrupt):
            execute(_smoke(), tmp_path, SyntheticCifar100(), ids=[BASELINE, BINARY], jobs=2)
        (process,) = started  # the first start was interrupted, the second never made
        assert process.exitcode == -signal.SIGTERM  # ended by the call, before it returned
    finally:
        for process in started:
            process.kill()
            process.join()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


@pytest.mark.parametrize("taken_by", ["the process", "another thread"])
def test_ctrl_c_while_a_process_starts_is_raised_once_it_has_started(
    tmp_path, monkeypatch, child_threads, taken_by
):
    """A Ctrl-C in the milliseconds of a process's start is held back, not lost: raised
    once the process has started. The signal goes to a thread that does not block it: the
    main thread once its mask is restored, or another thread of the caller's (torch's,
    say) at once."""
    import threading

    other = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
    other.start()
    targets = {"the process": lambda: os.kill(os.getpid(), signal.SIGINT),
               "another thread": lambda: signal.pthread_kill(other.ident, signal.SIGINT)}  # fmt: skip
    _interrupted_at_a_start(tmp_path, monkeypatch, before=targets[taken_by])


def _interrupt_state(config, run_dir, *args, **kwargs):
    """A run's ``train`` that says how its process sees SIGINT."""
    handler = signal.getsignal(signal.SIGINT)
    return {"ignored": handler is signal.SIG_IGN,
            "blocked": signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])}  # fmt: skip


def test_a_runs_process_ignores_ctrl_c_and_does_not_block_it(tmp_path):
    """Once it runs, a run's process ignores SIGINT, not held blocked for good (then a
    signal that came while it started is dropped, not kept pending)."""
    outcomes = execute(_smoke(), tmp_path, SyntheticCifar100(), ids=[BASELINE, BINARY], jobs=2,
                       train=_interrupt_state)  # fmt: skip
    assert [o.results for o in outcomes] == [{"ignored": True, "blocked": False}] * 2


def test_ctrl_c_just_after_a_process_started_ends_it(tmp_path, monkeypatch, child_threads):
    """A Ctrl-C just after a run's process has started, before the call has it among its
    running processes, still ends it: none is left training (which the interpreter's exit
    would then wait for, the call hanging until the run finished)."""
    _interrupted_at_a_start(tmp_path, monkeypatch, after=True)


def _spawned_by(pid):
    """The processes ``multiprocessing`` has spawned from process ``pid`` (Linux)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
    return found


def _group_alive(group):
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_after_is_a_budget_of_each_job_as_of_the_one_process(
    tmp_path, capsys, one_thread, child_threads
):
    """``--stop-after 3`` with two jobs: each job trains three epochs in all, as one process
    would: a pre-training (two epochs), then one epoch of the transfer from it."""
    example, out = _example(), tmp_path / "out"
    example.main(["--smoke", "--device", "cpu", "--out", str(out), "--jobs", "2",
                  "--stop-after", "3"])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    for pretrain, transfer in ((BASELINE, BASELINE_FT), (BINARY, BINARY_FT)):
        assert RunDir(out / pretrain).is_finished()
        assert [r["epoch"] for r in RunDir(out / transfer).read_metrics()] == ["1"]
        assert not RunDir(out / transfer).is_finished()
    assert lines[-1].startswith("stopped 2 run(s) after --stop-after 3 epoch(s) per job")
