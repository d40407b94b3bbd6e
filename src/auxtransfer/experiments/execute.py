"""Executing a plan: finished runs skipped, unfinished ones resumed, the rest started.

``execute`` runs a [`Plan`][auxtransfer.experiments.plan.Plan], or the runs of it whose
ids it is given: a finished run (``results.json``) is skipped without touching its files,
an unfinished one (``last.pt``) resumed, the others started. So the same call, repeated
after a stop, completes a sweep, and any scheduler can spread a plan over machines one id
at a time. Under ``torchrun`` every run trains with DDP and rank 0 writes. With ``jobs=N``
up to N runs train at once, each in a process of its own (``processes``), a transfer once the
run it needs has finished.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._checks import check_int
from . import processes, similarity
from .checkpoint import epochs_done
from .plan import FINISHED_STATUSES, Plan, PlannedRun, RunFailedError, check_data, check_plan
from .rundir import RunDir
from .sources import DataSource, run_data_for, run_partition_for
from .train import train_run

__all__ = ["RunOutcome", "distributed_device", "execute"]


def distributed_device(device: str | torch.device) -> torch.device:
    """This process's device; under ``torchrun`` also starts the process group.

    Outside ``torchrun`` (no ``WORLD_SIZE > 1`` in the environment) this returns
    ``torch.device(device)``. Under it, it initialises the default process group (NCCL for
    CUDA, gloo otherwise) and gives each process its own GPU, ``cuda:LOCAL_RANK``. Call
    ``dist.destroy_process_group()`` at the end.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


#: The statuses of a run that has finished: its results are there.
@dataclass(frozen=True)
class RunOutcome:
    """What ``execute`` did with one run.

    Attributes:
        id: The run's id.
        status: ``"skipped"`` (already finished), ``"trained"`` (started and finished),
            ``"resumed"`` (continued and finished), ``"stopped"`` (``stop_after`` ended
            it; the next call resumes it), ``"failed"`` (it raised, or with ``jobs > 1``
            its process died; the others went on) and ``"blocked"`` (not started: the
            run it transfers from failed, or with ``jobs > 1`` stopped, or was blocked).
        results: The content of its ``results.json`` (None unless it finished).
        error: Why it failed (the exception and its log) or was blocked; None otherwise.
    """

    id: str
    status: str
    results: dict[str, Any] | None
    error: str | None = None


def execute(
    plan: Plan,
    out: str | os.PathLike[str],
    source: DataSource,
    *,
    ids: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    stop_after: int | None = None,
    jobs: int = 1,
    cuda_graphs: bool = True,
    train: Callable[..., dict[str, Any] | None] = train_run,
    report: Callable[[str], None] | None = None,
) -> list[RunOutcome]:
    """Run the plan (or the runs ``ids``) into ``out``, skipping finished runs.

    Every selected run is checked first (``check_plan``, ``check_data``): nothing is
    written when one is wrong. Then, in plan order, a finished run is skipped without
    touching its files, an unfinished one resumed, a new one started. A run that raises
    is reported (``"failed"``, with its error) and the runs that do not need it go on;
    those that transfer from it are not started (``"blocked"``). Under ``torchrun`` call
    it on every rank: each run trains with DDP and rank 0 writes (an error there ends
    every rank: ``RunFailedError``).

    With ``jobs > 1`` up to ``jobs`` runs train at once, each in a process of its own
    that appends its output to ``<run dir>/train.log``: a run starts once the run it
    transfers from has finished, the first ready runs in plan order as processes end. A
    run that fails is reported with the end of its log and the others go on; the runs
    that need it are not started (``"failed"``, ``"blocked"``).

    A call that reaches every run it was given then writes ``similarity.json`` for each
    A run with an auxiliary head whose baseline has finished too and that has none
    ([`similarity.write_pending`][auxtransfer.experiments.similarity.write_pending]).

    Args:
        plan: The plan.
        out: The output folder; run ``id`` lives in ``out/id``.
        source: The data (``check_data`` first; with a download, rank 0 loads first).
        ids: The runs to execute, in any order (None: all).
        device: This process's device; with ``jobs > 1``, ``"cuda"`` without an index
            spreads the runs over the visible GPUs (``processes.job_devices``).
        progress: A progress bar per run (rank 0); with ``jobs > 1``, each epoch of
            each run as a line through ``report`` (``ID [job k] epoch 3/175: ...``).
        stop_after: Each of the ``jobs`` processes (this one when ``jobs`` is 1) trains
            at most this many epochs in this call, over as many runs as they take, then
            stops, leaving the run in progress unfinished (a job with a time limit); the
            next call resumes it. The runs that need a stopped run wait for the next call.
        jobs: Runs at once, each in a process of its own (1: one after the other, here;
            not under ``torchrun``). The processes are started with ``"spawn"``, so
            ``train`` and ``source`` must pickle, and a script that calls this needs the
            ``if __name__ == "__main__":`` guard. On the CPU each process takes its share
            of the cores this process may use (at most as many threads as this process)
            unless ``OMP_NUM_THREADS`` is set.
        cuda_graphs: Passed on to ``train`` (``train_run``'s CUDA graphs).
        train: The function that trains one run (``train_run``'s signature; a run with
            ``aux_labels="coarse"`` also gets ``partition=``, its table).
        report: Called with a line before each run (rank 0), e.g. ``print``; with
            ``jobs > 1`` also when a run ends, fails (with its log) or is not started.

    Returns:
        A ``RunOutcome`` per selected run that was reached, in plan order.

    Raises:
        ValueError: A check failed, ``jobs`` is below 1 or above 1 under ``torchrun``.
        RunFailedError: Under ``torchrun``, a run raised.
        TypeError: ``jobs`` is not an int; with ``jobs > 1``, ``train`` or ``source``
            does not pickle.
    """
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"Expected `stop_after` to be at least 1 epoch, but got {stop_after}.")
    jobs = check_int("jobs", jobs, minimum=1)
    distributed = dist.is_available() and dist.is_initialized()
    if jobs > 1 and (distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise ValueError(
            f"Expected `jobs` to be 1 under torchrun, where every run trains on all the "
            f"processes with DDP, but got {jobs}."
        )
    states = check_plan(plan, out, ids)
    check_data(plan, source, ids)
    if jobs > 1:
        _partitions(states, source)  # a coarse run that cannot have its table: now, not later
        outcomes = _execute_jobs(
            states, Path(out), source, jobs=jobs, device=device, stop_after=stop_after,
            cuda_graphs=cuda_graphs, train=train, report=report, progress=progress,
        )  # fmt: skip
        _similarities(plan, out, source, states, outcomes, device, report)
        return outcomes
    # Epochs an unfinished run has logged, for the budget of stop_after.
    done = {
        run.id: epochs_done(Path(out) / run.id) for run, state in states if state == "unfinished"
    }
    rank = dist.get_rank() if distributed else 0
    if distributed:
        # Every rank has read the run directories before rank 0 writes anything.
        dist.barrier()
    if any(state != "finished" for _, state in states):
        if distributed and rank != 0:
            dist.barrier()  # rank 0 loads (and downloads, if asked) first
        source.load()
        if distributed and rank == 0:
            dist.barrier()
    partitions = _partitions(states, source)
    budget = math.inf if stop_after is None else stop_after
    outcomes = []
    ended: dict[str, RunOutcome] = {}  # the runs that failed or were blocked, by id
    for run, state in states:
        run_dir = Path(out) / run.id
        if state == "finished":
            outcomes.append(RunOutcome(run.id, "skipped", RunDir(run_dir).read_results()))
            continue
        needed = run.requires
        if needed in ended:
            blocked = _blocked(run.id, ended[needed])
            outcomes.append(blocked)
            ended[run.id] = blocked
            if report is not None and rank == 0:
                report(f"not started {run.id}: {blocked.error}")
            continue
        if report is not None and rank == 0:
            report(_starting(run, state, Path(out)))
        try:
            train_data, test_data = run_data_for(run.config, source)
            results = train(
                run.config,
                run_dir,
                train_data,
                test_data,
                mean=source.mean,
                std=source.std,
                device=device,
                resume=state == "unfinished",
                progress=progress,
                stop_after=None if budget == math.inf else int(budget),
                cuda_graphs=cuda_graphs,
                **({"partition": partitions[run.id]} if run.id in partitions else {}),
            )
        except Exception as error:
            first = str(error).strip().split("\n", 1)[0]
            why = f"{type(error).__name__}: {first}"
            failed = RunOutcome(run.id, "failed", None, why)
            if distributed:
                if report is not None and rank == 0:
                    report(f"failed {run.id}: {why} (under torchrun this ends the call)")
                # The other ranks may wait in a collective: end them all.
                raise RunFailedError(run.id, why) from error
            # As under jobs > 1: this run is reported, the runs that do not need it go on.
            outcomes.append(failed)
            ended[run.id] = failed
            if report is not None:
                report(f"failed {run.id}: {failed.error}")
            continue
        if distributed:
            dist.barrier()  # rank 0 has written results.json before any rank goes on
        if results is None:
            outcomes.append(RunOutcome(run.id, "stopped", None))
            break
        budget -= max(run.config.epochs - done.get(run.id, 0), 0)
        status = "resumed" if state == "unfinished" else "trained"
        outcomes.append(RunOutcome(run.id, status, results))
        if budget <= 0:
            break
    if rank == 0:
        _similarities(plan, out, source, states, outcomes, device, report)
    return outcomes


def _similarities(
    plan: Plan,
    out: str | os.PathLike[str],
    source: DataSource,
    states: list[tuple[PlannedRun, str]],
    outcomes: list[RunOutcome],
    device: str | torch.device,
    report: Callable[[str], None] | None,
) -> None:
    """Each finished pair's ``similarity.json``, once the call has reached every run it
    was given: not when ``stop_after`` ended it (its time is up)."""
    if len(outcomes) == len(states) and not any(o.status == "stopped" for o in outcomes):
        similarity.write_pending(plan, out, source, device=device, report=report)


def _partitions(states: list[tuple[PlannedRun, str]], source: DataSource) -> dict[str, Any]:
    """The partition table of every unfinished run that learns the data's coarse labels
    (``run_partition_for``), made before any run trains: one that cannot be made is an
    error before anything is written."""
    found = {}
    for run, state in states:
        if state != "finished":
            table = run_partition_for(run.config, source)
            if table is not None:
                found[run.id] = table
    return found


def _execute_jobs(
    states: list[tuple[PlannedRun, str]],
    out: Path,
    source: DataSource,
    *,
    jobs: int,
    device: str | torch.device,
    stop_after: int | None,
    cuda_graphs: bool,
    train: Callable[..., dict[str, Any] | None],
    report: Callable[[str], None] | None,
    progress: bool,
) -> list[RunOutcome]:
    """``execute``'s runs, up to ``jobs`` at once, each in a process of its own."""
    payload = processes.pickled(train, source)
    # The epochs each job may still train (stop_after), and those each unfinished run has.
    budgets = [math.inf if stop_after is None else stop_after] * jobs
    done = {run.id: epochs_done(out / run.id) for run, state in states if state == "unfinished"}
    devices = processes.job_devices(device, jobs)
    threads = processes.job_threads(devices[0], jobs)
    say = report or (lambda line: None)
    outcomes = {
        run.id: RunOutcome(run.id, "skipped", RunDir(out / run.id).read_results())
        for run, state in states
        if state == "finished"
    }
    waiting = [(run, state) for run, state in states if state != "finished"]
    if waiting:
        source.load()  # a download happens once, here; each process then loads its own copy
    unsettled = {run.id for run, _ in waiting}  # waiting or running
    running: dict[int, tuple[PlannedRun, str, processes.RunProcess]] = {}  # by job slot
    try:
        while waiting or running:
            for run, state in list(waiting):  # plan order: a run comes after the one it needs
                needed = run.requires
                if needed is not None and needed in unsettled:
                    continue
                before = outcomes.get(needed) if needed is not None else None
                free = [s for s in range(jobs) if s not in running and budgets[s] > 0]
                if before is None or before.status in FINISHED_STATUSES:
                    if not free:
                        continue
                    slot = free[0]
                    job = processes.RunJob(
                        run.id, run.config, out / run.id, str(devices[slot]),
                        state == "unfinished", None if budgets[slot] == math.inf else
                        int(budgets[slot]), cuda_graphs, threads,
                    )  # fmt: skip
                    process = processes.RunProcess(job, payload)
                    running[slot] = (run, state, process)  # where `finally` stops it
                    process.start()
                    say(f"{_starting(run, state, out)} [job {slot + 1} on {job.device}]")
                else:
                    outcomes[run.id] = _blocked(run.id, before)
                    unsettled.discard(run.id)
                    say(f"not started {run.id}: {outcomes[run.id].error}")
                waiting.remove((run, state))
            if not running:
                break  # the runs left, if any, were not started
            ready = processes.wait([process for _, _, process in running.values()])
            for slot, (run, state, process) in list(running.items()):
                if process not in ready:
                    continue
                for line in process.read():
                    if progress:
                        say(f"{run.id} [job {slot + 1}] {line}")
                if process.ended:
                    del running[slot]
                    unsettled.discard(run.id)
                    outcomes[run.id] = _ended(run, state, process, f"[job {slot + 1}]", say)
                    if outcomes[run.id].status in FINISHED_STATUSES:
                        budgets[slot] -= run.config.epochs - done.get(run.id, 0)
                    elif outcomes[run.id].status == "stopped":
                        budgets[slot] = 0
    finally:
        for _, _, process in running.values():  # interrupted: no process is left behind
            process.stop()
    return [outcomes[run.id] for run, _ in states if run.id in outcomes]


def _blocked(run_id: str, needed: RunOutcome) -> RunOutcome:
    """The outcome of a run not started: the run it transfers from ended as ``needed``
    (failed, stopped, or not started itself)."""
    why = "was not started" if needed.status == "blocked" else needed.status
    return RunOutcome(run_id, "blocked", None, f"the run it transfers from, {needed.id}, {why}")


def _ended(
    run: PlannedRun,
    state: str,
    process: processes.RunProcess,
    where: str,
    say: Callable[[str], None],
) -> RunOutcome:
    """The outcome of a run whose process has ended, reported in a line (the end of its
    log, when it failed)."""
    status, results, error = process.outcome()
    if status == "finished":
        say(f"finished {run.id} {where}")
        return RunOutcome(run.id, "resumed" if state == "unfinished" else "trained", results)
    if status == "stopped":
        epochs = process.job.stop_after
        say(f"stopped {run.id} after {epochs} epoch(s) {where}: the next call resumes it")
        return RunOutcome(run.id, "stopped", None)
    log = process.job.log
    tail = processes.log_tail(log)
    shown = f"  log: {log}, its last {len(tail)} lines:" if tail else (
        f"  no log at {log}: the error came before the process wrote one (see above)")  # fmt: skip
    say("\n".join([f"failed {run.id} {where}: {error}", shown, *(f"    {t}" for t in tail)]))
    return RunOutcome(run.id, "failed", None, f"{error} (log: {log})")


def _starting(run: PlannedRun, state: str, out: Path) -> str:
    """``"training ID (N epochs)"``, or ``"resuming ID (N epochs, K done)"``."""
    if state != "unfinished":
        return f"training {run.id} ({run.config.epochs} epochs)"
    done = epochs_done(out / run.id)
    return f"resuming {run.id} ({run.config.epochs} epochs, {done} done)"
