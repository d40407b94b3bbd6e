"""A run directory: the files one training run writes, and the checks before it writes them.

A run directory holds ``config.json`` (every setting), ``metrics.csv`` (one row per epoch),
``last.pt`` (the last checkpoint, see [`checkpoint`][auxtransfer.experiments.checkpoint]) and, once
the run has finished, ``results.json``. Every file that is rewritten goes through
``replace_atomically``, so a run stopped at any moment leaves either the old file or the
new one, never half of one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRIC_FIELDS",
    "RUN_FILES",
    "SCORES_FILE",
    "SIMILARITY_FILE",
    "RunDir",
    "as_json",
    "differing_keys",
    "format_learning_rates",
    "parse_learning_rates",
    "replace_atomically",
    "summarise_metrics",
]

#: The files of a run directory: settings, one row per epoch, the results that mark it
#: finished, the last checkpoint and the best epoch's weights. Any of them marks a folder as
#: a run directory (``auxtransfer.report`` reads these names from here).
RUN_FILES = ("config.json", "metrics.csv", "results.json", "last.pt", "best.pt")
CONFIG, METRICS, RESULTS, LAST, BEST = RUN_FILES
#: A transfer run's scores, measured before its first epoch on B (``experiments.scores``).
SCORES_FILE = "scores.json"
#: An A run's similarity to its baseline, at every address (``experiments.similarity``).
SIMILARITY_FILE = "similarity.json"

#: The columns of ``metrics.csv``, in order. ``lr`` is the head's rate; ``lr_groups`` holds
#: every parameter group's rate (see ``format_learning_rates``). ``train_loss`` is the loss
#: trained on (the combined loss with a binary head); ``train_main_loss`` its class term
#: alone, cross entropy as ``test_loss`` is; ``train_binary_loss`` its binary term.
METRIC_FIELDS = (
    "phase", "epoch", "lr", "train_loss", "train_error", "test_loss", "test_error",
    "train_binary_loss", "train_binary_error", "seconds", "lr_groups", "train_main_loss",
)  # fmt: skip


def differing_keys(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    missing_as: Mapping[str, Any] | None = None,
) -> list[str]:
    """The keys whose values differ between two settings (missing on one side counts), sorted.

    ``missing_as`` gives the value of a key that ``saved`` lacks: a setting added after the
    saved file was written, at its default, is the same as no setting at all.

    Examples:
        >>> differing_keys({"lr": 0.1, "epochs": 2}, {"lr": 0.1, "seed": 1})
        ['epochs', 'seed']
        >>> differing_keys({"lr": 0.1}, {"lr": 0.1, "seed": 0}, missing_as={"seed": 0})
        []
    """
    fill = {} if missing_as is None else missing_as
    absent = object()

    def old(key: str) -> Any:
        return saved[key] if key in saved else fill.get(key, absent)

    return sorted(k for k in set(saved) | set(current) if old(k) != current.get(k, absent))


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Write through ``write`` to a temporary file beside ``path``, then rename it over.

    ``os.replace`` within one folder is atomic: readers (and a resumed run) see the old file
    or the new one, never a partly written one.

    Args:
        path: The file to (re)place.
        write: Writes the content to the temporary path it is given.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON in ``path``, through ``replace_atomically``."""
    text = json.dumps(data, indent=2) + "\n"
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def as_json(data: Mapping[str, Any]) -> Any:
    """``data`` as it reads back from JSON (tuples become lists), to compare settings."""
    return json.loads(json.dumps(data))


def format_learning_rates(rates: Mapping[str, float]) -> str:
    """The ``lr_groups`` cell of ``metrics.csv``: ``name=rate`` pairs separated by spaces.

    Rates are written with ``repr``, which reads back to the same float.

    Examples:
        >>> format_learning_rates({"stem..3.1": 0.04, "4.0..head": 0.01})
        'stem..3.1=0.04 4.0..head=0.01'
    """
    return " ".join(f"{name}={float(rate)!r}" for name, rate in rates.items())


def parse_learning_rates(text: str) -> dict[str, float]:
    """Read back an ``lr_groups`` cell: each group's name and rate, in the groups' order.

    Examples:
        >>> parse_learning_rates("stem..3.1=0.04 4.0..head=0.01")
        {'stem..3.1': 0.04, '4.0..head': 0.01}
    """
    rates = {}
    for item in text.split():
        name, separator, rate = item.rpartition("=")
        if not separator or not name:
            raise ValueError(
                f"Expected `text` to hold name=rate pairs separated by spaces, but got {item!r} in {text!r}."
            )
        rates[name] = float(rate)
    return rates


def summarise_metrics(rows: Sequence[Mapping[str, str]], *, epochs: int) -> dict[str, Any]:
    """The content of ``results.json`` from the rows of ``metrics.csv``.

    Args:
        rows: The metrics rows (strings, as ``RunDir.read_metrics`` returns them); none
            on the ranks that do not write the run directory.
        epochs: The run's number of epochs.

    Returns:
        ``epochs``, ``final_test_error``, ``best_test_error`` (NaN without rows) and
        ``best_epoch`` (the first epoch with the lowest test error; None without rows).
    """
    best = min(rows, key=lambda r: float(r["test_error"])) if rows else None
    return {
        "epochs": epochs,
        "final_test_error": float(rows[-1]["test_error"]) if rows else math.nan,
        "best_test_error": float(best["test_error"]) if best else math.nan,
        "best_epoch": int(best["epoch"]) if best else None,
    }


class RunDir:
    """The files of one run in one folder, and the rules for writing them.

    A finished run (``results.json``) is never written over; an unfinished one (``last.pt``)
    is continued only when asked to, and only with the settings it was started with.
    Nothing here creates the folder before ``write_config``.

    Args:
        path: The run directory (need not exist yet).
        fields: The columns of ``metrics.csv``.

    Examples:
        >>> import tempfile
        >>> run = RunDir(tempfile.mkdtemp())
        >>> run.check_start({"lr": 0.1}, resume=False)
        >>> run.write_config({"lr": 0.1})
        >>> run.append_metrics({"epoch": 1, "lr": 0.1}, fresh=True)
        >>> [row["lr"] for row in run.read_metrics()]
        ['0.1']
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fields: Sequence[str] = METRIC_FIELDS
    ) -> None:
        self.path = Path(path)
        self.fields = tuple(fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / LAST

    @property
    def best_path(self) -> Path:
        """``best.pt``: the weights of the epoch with the lowest test error so far."""
        return self.path / BEST

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    def is_finished(self) -> bool:
        """Whether the run finished (its ``results.json`` exists)."""
        return self.results_path.exists()

    def is_unfinished(self) -> bool:
        """Whether a run started here and did not finish (a checkpoint, no results)."""
        return self.checkpoint_path.exists() and not self.is_finished()

    def check_start(
        self,
        config: Mapping[str, Any],
        *,
        resume: bool,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """Raise unless a run with ``config`` may start (or, with ``resume``, continue) here.

        Args:
            config: The run's settings, as saved in ``config.json``.
            resume: Whether an unfinished run may be continued.
            defaults: The value of a setting the saved ``config.json`` lacks (one added
                since it was written).

        Raises:
            FileExistsError: The folder holds a finished run, or an unfinished one and
                ``resume`` is False.
            ValueError: ``resume`` is True and the saved settings differ from ``config``.
        """
        if self.is_finished():
            raise FileExistsError(
                f"{self.path} holds a finished run (results.json); choose another run directory."
            )
        if self.checkpoint_path.exists() and not resume:
            raise FileExistsError(
                f"{self.path} holds an unfinished run (last.pt); pass resume=True to continue it."
            )
        if resume and self.config_path.exists():
            previous, current = self.read_config(), as_json(config)
            changed = differing_keys(previous, current, missing_as=defaults)
            if changed:
                raise ValueError(
                    f"Expected the settings of the run in {self.path} to resume it, but these differ: {changed}."
                )

    def read_config(self) -> Any:
        """The saved settings."""
        return json.loads(self.config_path.read_text())

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Create the folder and save ``config`` as ``config.json``."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, config)

    def append_metrics(self, row: Mapping[str, Any], *, fresh: bool) -> None:
        """Add one epoch's row to ``metrics.csv`` (``fresh``: start the file anew)."""
        new = fresh or not self.metrics_path.exists()
        with self.metrics_path.open("w" if new else "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.fields)
            if new:
                writer.writeheader()
            writer.writerow(row)

    def truncate_metrics(self, *, before: int) -> None:
        """Keep only the rows of epochs before ``before`` (the epochs a resume will not run
        again), rewriting the file with the current header."""
        if not self.metrics_path.exists():
            return
        self.check_metrics(through=before - 1)
        self.write_metrics([row for row in self.read_metrics() if int(row["epoch"]) < before])

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace ``metrics.csv`` (atomically) by ``rows``, with the current header."""

        def write(tmp: Path) -> None:
            with tmp.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.fields, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        replace_atomically(self.metrics_path, write)

    def check_metrics(self, *, through: int) -> None:
        """Raise unless ``metrics.csv`` holds one whole row for each epoch 1 .. ``through``
        (later rows may be torn: a resume drops them)."""
        problem = None
        try:
            rows = self.read_metrics() if self.metrics_path.exists() else []
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            rows, problem = [], f"it cannot be read ({error})"
        epochs = []
        for row in rows:
            try:
                epoch = int(row.get("epoch") or "")
            except ValueError:
                problem = problem or f"a row has no epoch number ({row.get('epoch')!r})"
                continue
            epochs.append(epoch)
            if epoch <= through:
                for name in ("train_loss", "train_error", "test_loss", "test_error"):
                    try:
                        float(row.get(name) or "")
                    except ValueError:
                        problem = problem or f"the row of epoch {epoch} has no number in {name}"
        wanted = list(range(1, through + 1))
        if problem is None and [e for e in epochs if e <= through] != wanted:
            problem = f"it holds the rows of epochs {sorted(set(epochs))}"
        if problem is not None:
            raise ValueError(
                f"Expected {self.metrics_path} to hold a whole row for each of epochs 1 to "
                f"{through}, which last.pt has finished, but {problem}: the file was damaged "
                f"(a write cut short?) and last.pt does not keep a copy of the rows; move the "
                f"run directory away to train the run again."
            )

    def read_metrics(self) -> list[dict[str, str]]:
        """The rows of ``metrics.csv``, as strings keyed by column."""
        with self.metrics_path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def write_results(self, results: Mapping[str, Any]) -> None:
        """Save ``results.json``, which marks the run finished."""
        write_json(self.results_path, results)

    def read_results(self) -> Any:
        """The content of ``results.json``."""
        return json.loads(self.results_path.read_text())
