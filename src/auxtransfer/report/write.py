"""Build the report of a folder of runs and write its files.

``build_report`` reads the runs and computes every number (no file is written);
``write_report`` draws the figures and writes ``report.md`` (and ``report.json``) beside
them, and ``.report-files``, the list of what it wrote: a later report into the same
folder removes the figures of the earlier one that it does not draw again, so no stale
figure stays beside a new ``report.md``. Nothing else is written or removed, and nothing at
all inside a run directory's files.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .figures import FIGURES, run_figure, save
from .gather import gather, natural_key
from .groups import families, transfers
from .markdown import render
from .sections import run_entry, section

__all__ = ["FORMATS", "build_report", "write_report"]

#: The output formats: ``report.md`` alone, or with ``report.json``.
FORMATS = ("markdown", "json")

_FIGURE_TITLES = {
    "points": "B's test error against the {kind} point at the reported epochs",
    "curves": "B's test error per epoch for every {kind} point",
    "splits": "A's and B's error per split and condition",
    "weights": "B's final error against the binary weight",
    "heads": "B's final error with several binary heads",
}


def build_report(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The report's data: runs, skipped run directories and sections, with figure names.

    Args:
        root: The folder holding run directories at any depth.

    Returns:
        ``root``, ``runs`` (one entry per finished run, with its curves), ``skipped``
        (``id`` and ``reason`` of each run directory left out) and ``sections`` (one per
        family of settings, see ``sections.section``), as written to ``report.json``.
    """
    gathered = gather(root)
    placed, left_out = transfers(gathered)
    sections = []
    for family in families(placed):
        data = section(family)
        kinds = ["points", "curves"] if family.kind in ("freeze", "reset") else ["splits"]
        if data.get("weight_sweep"):
            kinds.append("weights")
        if data.get("heads"):
            kinds.append("heads")
        data["figures"] = [
            {"kind": k, "file": f"fig-{data['id']}-{k}.png",
             "title": _FIGURE_TITLES[k].format(kind=family.kind)}
            for k in kinds
        ]  # fmt: skip
        sections.append(data)
    conditions = {t.run.id: t.condition for t in placed}
    # A B run left out (no A run among the finished ones, or a duplicate) is counted and
    # listed among the skipped only, not among the runs reported.
    out = {s.id for s in left_out}
    runs = [run_entry(run, conditions.get(run.id)) for run in gathered.runs if run.id not in out]
    used: set[str] = set()
    for run in runs:
        run["figure"] = _unique(f"run-{_slug(run['id'])}", used) + ".png"
    skipped = sorted(
        (asdict(s) for s in (*gathered.skipped, *left_out)), key=lambda s: natural_key(s["id"])
    )
    return {"root": str(root), "runs": runs, "skipped": skipped, "sections": sections}


def write_report(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    format: str = "markdown",
    run_curves: bool = True,
) -> dict[str, Any]:
    """Write ``report.md`` and its PNG figures (and ``report.json``) to ``out``.

    Args:
        root: The folder holding run directories at any depth.
        out: Where to write (default: ``root``); created when missing.
        format: ``"markdown"``, or ``"json"`` to also write ``report.json`` with the
            numbers behind every figure, table and test.
        run_curves: Draw every run's training and test curves (one PNG per run); without
            them the runs' table has no links.

    Returns:
        The report's data (``build_report``).
    """
    if format not in FORMATS:
        raise ValueError(f"Expected `format` to be one of {FORMATS}, but got {format!r}.")
    report = build_report(root)
    if not run_curves:
        for run in report["runs"]:
            run["figure"] = None
    folder = Path(root if out is None else out)
    folder.mkdir(parents=True, exist_ok=True)
    written = ["report.md", *(["report.json"] if format == "json" else [])]
    written += [figure["file"] for data in report["sections"] for figure in data["figures"]]
    written += [run["figure"] for run in report["runs"] if run["figure"] is not None]
    _remove_stale(folder, set(written))
    for data in report["sections"]:
        for figure in data["figures"]:
            save(FIGURES[figure["kind"]](data), folder / figure["file"])
    for run in report["runs"]:
        if run["figure"] is not None:
            save(run_figure(run), folder / run["figure"])
    (folder / "report.md").write_text(render(report))
    if format == "json":
        text = json.dumps(_json_safe(report), indent=1, allow_nan=False)
        (folder / "report.json").write_text(text + "\n")
    (folder / MANIFEST).write_text("\n".join(written) + "\n")
    return report


#: The list of files the last report wrote into its folder, one name per line.
MANIFEST = ".report-files"


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Remove what an earlier report wrote into ``folder`` and this one does not: the files
    of its manifest, or, for a report written before the manifest existed, its figures
    (``fig-*.png``, ``run-*.png`` beside a ``report.md``). Nothing else is touched."""
    listed = folder / MANIFEST
    if listed.is_file():
        earlier = set(listed.read_text().split())
    elif (folder / "report.md").is_file():
        earlier = {p.name for pattern in ("fig-*.png", "run-*.png") for p in folder.glob(pattern)}
    else:
        earlier = set()
    for name in sorted(earlier - keep):
        path = folder / name
        if "/" not in name and "\\" not in name and path.is_file():
            path.unlink()


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so that strict JSON parsers read it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _slug(run_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id.replace("/", "_")).strip("._")
    return slug or "root"


def _unique(name: str, used: set[str]) -> str:
    candidate, number = name, 1
    while candidate in used:
        number += 1
        candidate = f"{name}-{number}"
    used.add(candidate)
    return candidate
