"""A plan's runs as SLURM job arrays, through submitit (``--launcher submitit``).

The examples' ``--launcher submitit`` submits every selected run that has not finished as
one array task of its own, in dependency order: the runs that need no other run of the
plan (the pre-trainings) as a first array, the runs that transfer from them as a second
one that starts once the first has ended well (``afterok``), and so on. Each task runs
its one run as a plain call with ``--run ID`` would: a finished run is skipped, an
unfinished one resumed, so submitting again after a failure or a time limit carries on.
On a SLURM cluster the command returns once everything is submitted and prints the job
ids; with ``--submitit-cluster local`` (or ``debug``) the tasks run on this machine, each
array after the one before it, and the command waits for them.

Needs the optional extra ``auxtransfer[cluster]`` (submitit), imported only here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import plan as plans

__all__ = ["RunTask", "dependency_levels", "submit_plan"]

#: submitit's executors by ``--submitit-cluster``.
CLUSTERS = ("slurm", "local", "debug")


def dependency_levels(runs: Sequence[plans.PlannedRun]) -> list[list[plans.PlannedRun]]:
    """``runs`` in arrays: first those that need none of them, then those that need a run
    of the arrays before, and so on (plan order within each).

    Examples:
        >>> from auxtransfer.experiments import protocols
        >>> plan = protocols.build("paired", **protocols.smoke_parameters("paired"))
        >>> [[r.id.split("/", 1)[1] for r in level] for level in dependency_levels(list(plan))]
        [['baseline/pretrain', 'binary/pretrain'], ['baseline/finetune', 'binary/finetune']]
    """
    level_of: dict[str, int] = {}
    ids = {run.id for run in runs}
    for run in runs:  # a plan lists every run after the run it transfers from
        needed = run.requires
        level_of[run.id] = level_of[needed] + 1 if needed in ids and needed is not None else 0
    levels: list[list[plans.PlannedRun]] = [
        [] for _ in range(max(level_of.values(), default=-1) + 1)
    ]
    for run in runs:
        levels[level_of[run.id]].append(run)
    return levels


@dataclass
class RunTask:
    """One array task: the example's run ``id`` of ``plan``, with the flags it was given.

    Made where the plan is submitted, called on the node (pickled by submitit). The data
    source is made there from the flags, so a smoke run's generated data lives on the node.
    """

    example: Any  # cli.Example (not imported here: cli imports this module)
    args: argparse.Namespace
    plan: plans.Plan

    def __call__(self, run_id: str) -> dict[str, Any] | None:
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # One task per GPU (--gpus-per-run N): the run trains with DDP over them, as
            # under torchrun (rank 0 writes).
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        if self.args.smoke and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)  # as a plain --smoke call does
        device = self.args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Several tasks: the process group, each task on its GPU (as under torchrun).
        from .execute import distributed_device, execute

        device = distributed_device(device)
        try:
            with contextlib.ExitStack() as scratch:
                source = self.example.data.source(self.args, scratch)
                rank = dist.get_rank() if dist.is_initialized() else 0
                outcomes = execute(
                    self.plan, self.args.out, source, ids=[run_id], device=device,
                    stop_after=self.args.stop_after, cuda_graphs=not self.args.no_cuda_graphs,
                    report=print if rank == 0 else None,
                )  # fmt: skip
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        (outcome,) = outcomes
        if outcome.status in ("failed", "blocked", "stopped"):
            # The task fails, so that the arrays that need this run do not start (afterok).
            why = outcome.error or f"stopped after --stop-after {self.args.stop_after} epoch(s)"
            raise RuntimeError(f"run {run_id} {outcome.status}: {why}")
        return outcome.results


def submit_plan(
    task: RunTask,
    states: Sequence[tuple[plans.PlannedRun, str]],
    *,
    cluster: str,
    folder: str | os.PathLike[str],
    parameters: dict[str, Any],
    say: Callable[[str], None] = print,
) -> list[str]:
    """Submit every run of ``states`` that has not finished, in dependency arrays.

    Args:
        task: What each array task calls with its run id.
        states: ``(run, state)`` as ``plan.check_plan`` returns them.
        cluster: ``"slurm"`` (return once submitted), ``"local"`` or ``"debug"`` (run here,
            array after array, and wait).
        folder: submitit's folder for each task's logs and pickles (``%j`` is the job id).
        parameters: submitit's ``update_parameters`` (``timeout_min``, ``gpus_per_node``,
            ``slurm_partition``, ...); None values are left out.
        say: Called with a line per array.

    Returns:
        The ids of the runs that failed (always empty on SLURM, where nothing is waited for).
    """
    import submitit

    pending = [run for run, state in states if state != "finished"]
    if not pending:
        say("every selected run has finished: nothing to submit")
        return []
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
    failed: list[str] = []
    previous: str | None = None
    for level in dependency_levels(pending):
        if cluster == "slurm" and previous is not None:
            executor.update_parameters(
                slurm_additional_parameters={"dependency": f"afterok:{previous}"}
            )
        ids = [run.id for run in level]
        jobs = executor.map_array(task, ids)
        previous = str(jobs[0].job_id).split("_")[0]
        # Each task's job id names its folder (``%j``); locally every task is a job of its
        # own, with no array id.
        listed = ", ".join(f"{i} (job {job.job_id})" for i, job in zip(ids, jobs, strict=True))
        as_what = f"as job array {previous}" if cluster == "slurm" else "as local jobs"
        say(f"submitted {len(jobs)} run(s) {as_what}: {listed}")
        if cluster == "slurm":
            continue
        for run_id, job in zip(ids, jobs, strict=True):
            try:
                job.results()  # one result per task (several with --gpus-per-run)
            except Exception as error:  # the task's traceback is in its log
                failed.append(run_id)
                say(f"run {run_id} failed (log: {Path(job.paths.stderr)}): {_why(error)}")
        if failed:
            later = [run.id for levels in dependency_levels(pending) for run in levels]
            left = later[later.index(ids[-1]) + 1 :]
            if left:
                say(f"not submitted, they need a run that failed or its array: {', '.join(left)}")
            break
    _drop_template_folder(folder)
    if cluster == "slurm":
        say(f"submitted to SLURM; logs under {folder}. Once these jobs have ended (squeue), "
            f"call the same command again to carry on: finished runs are skipped, the others "
            f"submitted again (while they are queued or running, they would be submitted "
            f"twice)")  # fmt: skip
    return failed


def _drop_template_folder(folder: str | os.PathLike[str]) -> None:
    """submitit makes ``folder`` as written, ``%j`` and all, before it fills in each job's
    id: an empty folder of that literal name is removed."""
    template = Path(folder)
    if "%" in template.name and template.is_dir() and not any(template.iterdir()):
        template.rmdir()


def _why(error: Exception) -> str:
    """The line of a failed task's error that says why: the task's own RuntimeError where
    it raised one, else the last exception line of submitit's report."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("RuntimeError: run ")]
    raised = [line for line in lines if re.match(r"^\w+(Error|Exception|Interrupt)\b", line)]
    chosen = ours or raised or lines or [type(error).__name__]
    return chosen[-1].removeprefix("RuntimeError: ")
