"""An experiment as a plan of runs: stable ids, dependencies, and a sweep that can stop.

Every run of a plan has an id that names what it is (``split3/binary/pretrain``,
``split3/binary/freeze-2.9``) and a run directory, ``<out>/<id>``. A transfer run starts
from the weights of a pre-training run of the same plan (its ``config.transfer_from``, a
path relative to its own directory such as ``"../pretrain"``); the pre-training is done
once and shared by every transfer that needs it. Runs are listed in dependency order.

Before anything is written (``check_plan``, ``check_data``) every selected run is
checked: its id is in the plan, the run it transfers from is finished or selected too, and
a run directory that already holds a run holds one with the same settings.
[`execute`][auxtransfer.experiments.execute.execute] runs a plan. Building and checking a
plan loads no training code.
"""

from __future__ import annotations

import difflib
import functools
import os
import posixpath
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .rundir import RunDir, as_json, differing_keys
from .settings import RunConfig
from .sources import DataSource
from .splits import side_classes

__all__ = [
    "FINISHED_STATUSES",
    "Plan",
    "PlannedRun",
    "RunDirConflictError",
    "RunFailedError",
    "check_data",
    "check_plan",
    "format_summary",
    "run_state",
    "summarise",
]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a plan.

    Attributes:
        id: The run's id, a relative path such as ``"split0/binary/finetune"``.
        config: Its settings.
    """

    id: str
    config: RunConfig

    @property
    def requires(self) -> str | None:
        """The id of the run this one transfers from, when that run is in the same output
        folder (``config.transfer_from`` relative); None otherwise."""
        source = self.config.transfer_from
        if source is None or posixpath.isabs(source) or os.path.isabs(source):
            return None
        return posixpath.normpath(posixpath.join(self.id, source))


class Plan:
    """The runs of an experiment, in dependency order.

    Args:
        runs: The runs; every run that transfers from another run of the plan must come
            after it.

    Raises:
        ValueError: An id is not a relative path of plain names, appears twice, or a run
            comes before the run it transfers from.

    Examples:
        >>> from auxtransfer.experiments.train import RunConfig
        >>> pre = RunConfig(model="cifar_densenet_bc_100", num_classes=50, epochs=2)
        >>> plan = Plan([PlannedRun("split0/baseline/pretrain", pre)])
        >>> plan.ids
        ['split0/baseline/pretrain']
    """

    def __init__(self, runs: Iterable[PlannedRun]) -> None:
        self.runs: tuple[PlannedRun, ...] = tuple(runs)
        seen: set[str] = set()
        for run in self.runs:
            if not isinstance(run.id, str) or not _ID.fullmatch(run.id):
                raise ValueError(
                    f"Expected run ids to be relative paths of names made of letters, digits, "
                    f"'.', '_' and '-', but got {run.id!r}."
                )
            if run.id in seen:
                raise ValueError(f"Expected run ids to be unique, but {run.id!r} appears twice.")
            needed = run.requires
            if needed is not None and needed in self.ids_set and needed not in seen:
                raise ValueError(
                    f"Expected every run to come after the run it transfers from, but {run.id!r} "
                    f"comes before {needed!r}."
                )
            seen.add(run.id)

    @property
    def ids(self) -> list[str]:
        """The run ids, in dependency order."""
        return [run.id for run in self.runs]

    @functools.cached_property
    def ids_set(self) -> frozenset[str]:
        """The run ids, as a set (made once: the runs do not change)."""
        return frozenset(run.id for run in self.runs)

    def __iter__(self) -> Iterator[PlannedRun]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, run_id: str) -> PlannedRun:
        for run in self.runs:
            if run.id == run_id:
                return run
        raise KeyError(run_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.runs)} runs)"

    def select(self, ids: Sequence[str] | None = None) -> list[PlannedRun]:
        """The runs with these ids, in plan order (all runs when ``ids`` is None).

        Raises:
            ValueError: An id is not in the plan; the message lists the closest valid ones.
        """
        if ids is None:
            return list(self.runs)
        known = self.ids_set
        for run_id in ids:
            if run_id not in known:
                raise ValueError(
                    f"run id {run_id!r} is not in the plan; valid ids: {_closest(run_id, self.ids)}"
                )
        wanted = set(ids)
        return [run for run in self.runs if run.id in wanted]


class RunDirConflictError(ValueError):
    """A run directory holds a run of the same id with other settings, or a damaged one."""


class RunFailedError(RuntimeError):
    """Under ``torchrun``, a run that raised, which ends ``execute`` on every rank (the
    others may wait for it in a collective); the exception it raised is ``__cause__``.

    Attributes:
        run_id: The run's id.
        error: The exception and the first line of its message.
    """

    def __init__(self, run_id: str, error: str) -> None:
        super().__init__(f"run {run_id} failed: {error}")
        self.run_id = run_id
        self.error = error


#: The outcomes of a run that has finished: skipped (finished before), trained, resumed.
FINISHED_STATUSES = ("skipped", "trained", "resumed")


def run_state(run_dir: str | os.PathLike[str]) -> str:
    """``"finished"`` (``results.json``), ``"unfinished"`` (``last.pt``) or ``"new"``."""
    run = RunDir(run_dir)
    if run.is_finished():
        return "finished"
    return "unfinished" if run.is_unfinished() else "new"


def check_plan(
    plan: Plan, out: str | os.PathLike[str], ids: Sequence[str] | None = None
) -> list[tuple[PlannedRun, str]]:
    """What ``execute`` checks about the runs before it writes; their states.

    Args:
        plan: The plan.
        out: Its output folder.
        ids: The runs to execute (None: all).

    Returns:
        ``(run, state)`` for every selected run, in plan order (see ``run_state``).

    Raises:
        ValueError: An id is not in the plan (``Plan.select``), or a selected run transfers
            from a run that is neither finished nor selected.
        RunDirConflictError: A run directory holds a run with other settings, a finished
            run whose results.json does not parse, a started run without a config.json
            that reads, an unfinished run whose last.pt is damaged, or a finished run
            without the weights a selected transfer starts from. The message names the
            file and what to do; nothing is written.
    """
    selected = plan.select(ids)
    out = Path(out)
    chosen = {run.id for run in selected}
    states = []
    for run in selected:
        state = run_state(out / run.id)
        if state == "finished":
            _check_results(RunDir(out / run.id))
        metrics = RunDir(out / run.id).metrics_path
        if state == "new" and metrics.exists() and metrics.stat().st_size > 0:
            raise RunDirConflictError(
                f"{metrics} holds the metrics of a run whose last.pt is gone: starting "
                f"{run.id!r} again would overwrite them. Move the run directory away (or "
                f"delete its metrics.csv) to train the run again."
            )
        if state == "unfinished" and _cut_short(RunDir(out / run.id).checkpoint_path):
            raise RunDirConflictError(
                f"Expected {RunDir(out / run.id).checkpoint_path} to be the checkpoint of the "
                f"unfinished run {run.id!r}, but it is damaged (empty, or a zip archive cut "
                f"short): move the run directory away (or delete its last.pt and metrics.csv) "
                f"to train the run again from its start."
            )
        if state != "new":
            saved = _saved_config(RunDir(out / run.id), run.id, state)
            differ = differing_keys(
                saved, as_json(run.config.to_json()), missing_as=RunConfig.defaults()
            )
            if differ:
                raise RunDirConflictError(
                    f"{out / run.id} holds a{'' if state == 'unfinished' else ' finished'} run of "
                    f"{run.id!r} with other settings ({', '.join(differ)} differ): use another "
                    f"output folder, or the settings it was started with."
                )
        needed = run.requires
        if (
            needed is not None
            and needed in plan.ids_set
            and needed not in chosen
            and run_state(out / needed) != "finished"
        ):
            raise ValueError(
                f"run {run.id!r} transfers from {needed!r}, which has not finished under {out}: "
                f"run {needed!r} first, or select it too."
            )
        if needed is not None and state != "finished" and run_state(out / needed) == "finished":
            weights = out / needed / f"{run.config.transfer_weights}.pt"
            if not weights.exists() or _cut_short(weights):
                why = "is damaged" if weights.exists() else "is missing"
                raise RunDirConflictError(
                    f"{out / needed} has finished (results.json), but {weights}, which "
                    f"{run.id!r} transfers from, {why}: restore it, or move the run directory "
                    f"away to train {needed!r} again."
                )
        states.append((run, state))
    return states


def _cut_short(path: Path) -> bool:
    """Whether the file ``torch.save`` wrote is empty or a zip archive cut short (its
    directory, at the end, is gone); a file in another format is left to its reader."""
    with open(path, "rb") as file:
        start = file.read(4)
    return not start or (start == b"PK\x03\x04" and not zipfile.is_zipfile(path))


def _saved_config(run: RunDir, run_id: str, state: str) -> Any:
    """The settings a started run saved, or a ``RunDirConflictError`` that names the file."""
    started = "results.json" if state == "finished" else "last.pt"
    again = "restore it, or move the run directory away to train the run again."
    try:
        return run.read_config()
    except FileNotFoundError:
        raise RunDirConflictError(
            f"{run.path} holds a{' finished' if state == 'finished' else 'n unfinished'} run of "
            f"{run_id!r} ({started}) but no {run.config_path} to check it against: {again}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunDirConflictError(
            f"Expected {run.config_path} to hold the settings of the run of {run_id!r}, but it "
            f"does not parse ({error}): {again}"
        ) from None


def _check_results(run: RunDir) -> None:
    """A finished run's results.json reads as the results of a run."""
    try:
        results = run.read_results()
        problem = None if isinstance(results, dict) else "not a JSON object"
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problem = str(error)
    if problem is not None:
        again = (
            "the run then resumes at its last epoch and writes it again"
            if run.checkpoint_path.exists()
            else "the run then trains again"
        )
        raise RunDirConflictError(
            f"Expected {run.results_path} to hold a finished run's results, but it does not "
            f"parse ({problem}): delete it; {again}."
        )


def check_data(plan: Plan, source: DataSource, ids: Sequence[str] | None = None) -> None:
    """Raise unless ``source`` can give every selected run its data.

    Raises:
        FileNotFoundError: The data is missing and will not be downloaded.
        ValueError: A run classifies another number of classes than its side of the data
            has, keeps more images per class than the data has, or learns coarse labels the
            data does not have.
    """
    source.check()
    for run in plan.select(ids):
        config = run.config
        classes = len(side_classes(source.num_classes, config.side, config.split_seed))
        if config.num_classes != classes:
            raise ValueError(
                f"Expected `num_classes` of run {run.id!r} to be the {classes} classes of "
                f"side {config.side} of {source!r} ({source.num_classes} in all), but got "
                f"{config.num_classes}."
            )
        coarse = run.config.binary_weight > 0 and run.config.aux_labels == "coarse"
        if coarse and getattr(source, "coarse_labels", None) is None:
            raise ValueError(
                f"Expected a data source with coarse labels (such as CIFAR-100's superclasses) "
                f"for run {run.id!r} (aux_labels='coarse'), but {source!r} has none."
            )
        per_class = run.config.per_class
        if per_class is not None and per_class > source.train_per_class:
            raise ValueError(
                f"Expected `per_class` to be at most the {source.train_per_class} training images "
                f"of each class of {source!r}, but run {run.id!r} keeps {per_class}."
            )


def _closest(run_id: str, ids: list[str], limit: int = 8) -> str:
    close = difflib.get_close_matches(run_id, ids, n=limit, cutoff=0.0)
    more = len(ids) - len(close)
    return ", ".join(close) + (f" ... and {more} more" if more > 0 else "")


def summarise(
    plan: Plan, out: str | os.PathLike[str], ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per run: ``id``, ``side``, ``state``, and from ``results.json`` (None while
    unfinished) ``final_test_error``, ``best_test_error``, ``best_epoch``."""
    rows = []
    for run in plan.select(ids):
        run_dir = Path(out) / run.id
        state = run_state(run_dir)
        results = RunDir(run_dir).read_results() if state == "finished" else {}
        rows.append(
            {
                "id": run.id,
                "side": run.config.side,
                "state": state,
                "final_test_error": results.get("final_test_error"),
                "best_test_error": results.get("best_test_error"),
                "best_epoch": results.get("best_epoch"),
            }
        )
    return rows


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """``summarise``'s rows as a text table: run, data, final and best test error (%).

    Examples:
        >>> print(format_summary([{"id": "split0/baseline/finetune", "side": "B",
        ...     "state": "finished", "final_test_error": 31.5, "best_test_error": 30.25,
        ...     "best_epoch": 90}, {"id": "split0/binary/finetune", "side": "B",
        ...     "state": "finished", "final_test_error": 31.0, "best_test_error": 29.5,
        ...     "best_epoch": 7}]))
        run                       data  final error  best error (epoch)
        split0/baseline/finetune  B           31.50          30.25 (90)
        split0/binary/finetune    B           31.00          29.50 (7)
    """
    header = ("run", "data", "final error", "best error (epoch)")
    digits = max((len(str(r["best_epoch"])) for r in rows if r["state"] == "finished"), default=1)
    lines = []
    for row in rows:
        if row["state"] == "finished":
            final = f"{row['final_test_error']:.2f}"
            # The epochs padded after their parenthesis: the errors stay in one column.
            epoch = str(row["best_epoch"])
            best = f"{row['best_test_error']:.2f} ({epoch})" + " " * (digits - len(epoch))
        else:
            final, best = row["state"], ""
        lines.append((row["id"], row["side"], final, best))
    width = [max(len(line[i]) for line in [header, *lines]) for i in range(4)]
    text = [
        f"{a:<{width[0]}}  {b:<{width[1]}}  {c:>{width[2]}}  {d:>{width[3]}}".rstrip()
        for a, b, c, d in [header, *lines]
    ]
    return "\n".join(text)
