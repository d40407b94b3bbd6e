"""Find and read every run directory under a folder, keeping the ones that can be reported.

A run directory is any folder holding one of a run's files (``config.json``,
``metrics.csv``, ``results.json``, ``last.pt``, ``best.pt``), at any depth, so runs made
on several machines and copied into one folder are read together. A run is reported when
its ``config.json``, ``metrics.csv`` and ``results.json`` all read back; any other run
directory is listed as skipped, with the reason, and the rest go on.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..experiments.rundir import METRIC_FIELDS, RUN_FILES, SCORES_FILE, SIMILARITY_FILE

__all__ = ["RUN_FILES", "Gathered", "Run", "Skipped", "gather", "natural_key"]


#: Columns of ``metrics.csv`` the report reads as numbers (empty cells read as None).
_NUMBERS = tuple(f for f in METRIC_FIELDS if f not in ("phase", "epoch", "seconds", "lr_groups"))


@dataclass(frozen=True)
class Run:
    """A finished run, as its files hold it.

    Attributes:
        id: The run directory relative to the gathered folder (``"split0/binary/pretrain"``).
        path: The run directory.
        config: ``config.json``.
        epochs: Each row's epoch, from ``metrics.csv``.
        metrics: Each numeric column of ``metrics.csv``, one value per row (None where empty).
        results: ``results.json``.
        scores: A transfer run's ``scores.json`` (its scores, and ``layers``: LogME at
            each address of A's network), where it has one that reads; None otherwise.
        similarity: An A run's ``similarity.json`` (``baseline``: the baseline run's
            directory relative to this one; ``layers``: linear CKA to it at each address),
            where it has one that reads; None otherwise.
    """

    id: str
    path: Path
    config: Mapping[str, Any]
    epochs: tuple[int, ...]
    metrics: Mapping[str, tuple[float | None, ...]]
    results: Mapping[str, Any]
    scores: Mapping[str, Any] | None = None
    similarity: Mapping[str, Any] | None = None

    @property
    def smoke(self) -> bool:
        """Whether the run is marked as a smoke run (not a result)."""
        return bool(self.config.get("smoke", False))

    @property
    def final_error(self) -> float:
        """``final_test_error`` of ``results.json`` (in %)."""
        return float(self.results["final_test_error"])

    @property
    def best_error(self) -> float:
        """``best_test_error`` of ``results.json`` (in %)."""
        return float(self.results["best_test_error"])

    def test_error_at(self, epoch: int) -> float | None:
        """The test error logged for ``epoch`` (None when that epoch has no row)."""
        for number, error in zip(self.epochs, self.metrics["test_error"], strict=True):
            if number == epoch:
                return error
        return None


@dataclass(frozen=True)
class Skipped:
    """A run directory left out of the report, and why."""

    id: str
    reason: str


@dataclass(frozen=True)
class Gathered:
    """The finished runs under ``root`` (sorted by id) and the run directories skipped."""

    root: Path
    runs: tuple[Run, ...]
    skipped: tuple[Skipped, ...]


def gather(root: str | os.PathLike[str]) -> Gathered:
    """Read every run directory under ``root`` (``root`` itself included).

    Args:
        root: The folder to search.

    Returns:
        The runs that finished and read back, and the run directories skipped with their
        reasons: no or an unreadable ``config.json``, unfinished (no ``results.json``), an
        unreadable ``metrics.csv`` or ``results.json``.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(
            f"Expected `root` to be a folder of run directories, but got {str(root)!r}."
        )
    runs: list[Run] = []
    skipped: list[Skipped] = []
    for folder, names, files in os.walk(root):
        names.sort()
        if not any(name in files for name in RUN_FILES):
            continue
        path = Path(folder)
        run_id = path.relative_to(root).as_posix()
        read = _read_run(run_id, path)
        if isinstance(read, Run):
            runs.append(read)
        else:
            skipped.append(read)
    runs.sort(key=lambda run: natural_key(run.id))
    skipped.sort(key=lambda item: natural_key(item.id))
    return Gathered(root, tuple(runs), tuple(skipped))


def natural_key(text: str) -> list[tuple[int, int | str]]:
    """Sort key reading digit runs as numbers: ``split2`` before ``split10``.

    Examples:
        >>> sorted(["split10/a", "split2/a", "split2/rep1"], key=natural_key)
        ['split2/a', 'split2/rep1', 'split10/a']
    """
    return [
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    ]


def _read_run(run_id: str, path: Path) -> Run | Skipped:
    present = [name for name in RUN_FILES if (path / name).exists()]
    if "config.json" not in present:
        return Skipped(run_id, f"no config.json (holds {', '.join(present)})")
    config = _read_json(path / "config.json")
    if isinstance(config, str):
        return Skipped(run_id, config)
    problem = _check_config(config)
    if problem:
        return Skipped(run_id, problem)
    rows: list[dict[str, str]] = []
    if "metrics.csv" in present:
        try:
            with (path / "metrics.csv").open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            return Skipped(run_id, f"metrics.csv does not read: {error}")
    if "results.json" not in present:
        logged = (
            f"metrics.csv has {len(rows)} of {config['epochs']} epochs"
            if rows
            else "no metrics.csv"
        )
        return Skipped(run_id, f"unfinished: no results.json ({logged})")
    results = _read_json(path / "results.json")
    if isinstance(results, str):
        return Skipped(run_id, results)
    if not _is_number(results.get("final_test_error")) or not _is_number(
        results.get("best_test_error")
    ):
        return Skipped(run_id, "results.json lacks a finite final_test_error and best_test_error")
    if not rows:
        return Skipped(run_id, "finished (results.json) but metrics.csv is missing or empty")
    parsed = _parse_metrics(rows)
    if isinstance(parsed, str):
        return Skipped(run_id, parsed)
    epochs, metrics = parsed
    return Run(
        run_id, path, config, epochs, metrics, results, _read_scores(path), _read_similarity(path)
    )


def _read_scores(path: Path) -> dict[str, Any] | None:
    """The scores of ``scores.json`` (finite numbers, or None), if it reads."""
    if not (path / SCORES_FILE).exists():
        return None
    data = _read_json(path / SCORES_FILE)
    if isinstance(data, str):
        return None
    found: dict[str, Any] = {
        k: float(v) if _is_number(v) else None
        for k, v in data.items()
        if k not in ("samples", "layers")
    }
    layers = data.get("layers")
    if isinstance(layers, dict):
        found["layers"] = {a: float(v) for a, v in layers.items() if _is_number(v)}
    return found


def _read_similarity(path: Path) -> dict[str, Any] | None:
    """``similarity.json``'s baseline and CKA per address (finite numbers), if it reads."""
    if not (path / SIMILARITY_FILE).exists():
        return None
    data = _read_json(path / SIMILARITY_FILE)
    if isinstance(data, str) or not isinstance(data.get("layers"), dict):
        return None
    return {
        "baseline": str(data.get("baseline")),
        "layers": {a: float(v) for a, v in data["layers"].items() if _is_number(v)},
    }


def _read_json(path: Path) -> dict[str, Any] | str:
    """The JSON object in ``path``, or why it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path.name} does not parse: {error}"
    if not isinstance(data, dict):
        return f"{path.name} does not parse: expected a JSON object, but got {type(data).__name__}"
    return data


def _check_config(config: Mapping[str, Any]) -> str | None:
    epochs = config.get("epochs")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return f"config.json is not a run's settings: expected `epochs` to be an int >= 1, but got {epochs!r}"
    if config.get("side", "all") not in ("A", "B", "all"):
        return f"config.json is not a run's settings: expected `side` to be 'A', 'B' or 'all', but got {config.get('side')!r}"
    for name in ("binary_weight",):
        if name in config and not _is_number(config[name]):
            return f"config.json is not a run's settings: expected `{name}` to be a number, but got {config[name]!r}"
    return None


def _parse_metrics(
    rows: list[dict[str, str]],
) -> tuple[tuple[int, ...], dict[str, tuple[float | None, ...]]] | str:
    epochs = []
    columns: dict[str, list[float | None]] = {name: [] for name in _NUMBERS}
    for number, row in enumerate(rows, 2):  # line 1 is the header
        try:
            epochs.append(int(row["epoch"]))
            for name in _NUMBERS:
                cell = row.get(name) or ""
                columns[name].append(float(cell) if cell.strip() else None)
        except (KeyError, TypeError, ValueError) as error:
            return f"metrics.csv line {number} does not parse: {error!r}"
    if any(error is None for error in columns["test_error"]):
        return "metrics.csv has rows without test_error"
    return tuple(epochs), {name: tuple(values) for name, values in columns.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
