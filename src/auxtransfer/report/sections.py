"""The numbers of each part of the report, as plain JSON-able data.

One section per family of settings (``groups.families``): a freeze or reset sweep holds
B's error at the reported epochs and its mean curves per point (Figs. 2/3, 7-9); a
fine-tuning holds A's and B's errors per split (Fig. 5), the weight sweep (Fig. 4), the
heads (Fig. 10) and, with fewer images per class, the long-tail table (Table 1). Every
section holds its paired comparisons. The figures and the text are drawn from these
numbers, and ``--format json`` writes them as they are.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from .gather import Run, natural_key
from .groups import Condition, Family, Transfer, pair, split_label, split_order
from .stats import paired_test, rank_correlation, variance_decomposition

__all__ = [
    "PAPER_EPOCHS",
    "PAPER_LONG_TAIL",
    "SMOKE_LABEL",
    "reported_epochs",
    "run_entry",
    "section",
    "section_id",
    "section_name",
]

#: The label of every figure and text that holds smoke runs.
SMOKE_LABEL = "smoke run — not a result"

#: The paper's run length and reported epochs of the freeze (Fig. 2) and reset (Fig. 3)
#: experiments.
PAPER_EPOCHS = {"freeze": (40, (1, 21, 40)), "reset": (100, (1, 51, 100))}

#: Table 1 of the paper: final test error on B (%) by split (1, 2) and condition, with 60
#: images per class of B and binary weight 0.4.
PAPER_LONG_TAIL = {
    (1, "baseline"): 31.81,
    (1, "binary"): 38.86,
    (2, "baseline"): 35.57,
    (2, "binary"): 37.12,
}
PAPER_LONG_TAIL_PER_CLASS = 60
PAPER_BINARY = Condition(0.4, 1)


def reported_epochs(kind: str, epochs: int) -> list[int]:
    """The epochs at which B's error is reported: the paper's for a run of the paper's
    length, else the run's first, middle and last.

    Examples:
        >>> reported_epochs("freeze", 40), reported_epochs("reset", 100), reported_epochs("freeze", 10)
        ([1, 21, 40], [1, 51, 100], [1, 6, 10])
    """
    total, paper = PAPER_EPOCHS[kind]
    if epochs == total:
        return list(paper)
    return sorted({1, epochs // 2 + 1, epochs})


def section_name(family: Family) -> str:
    """``"freeze"``, ``"reset"``, ``"longtail"`` (fewer images per class) or ``"finetune"``."""
    if family.kind == "finetune" and family.setting.get("per_class") is not None:
        return "longtail"
    return family.kind


def section_id(family: Family) -> str:
    """``<section_name>-<model>-<key>``: the key is the first 8 hex digits of the SHA-256 of
    the family's setting (canonical JSON), so the same setting has the same id (and figure
    names) in every report, whatever else the folder holds.

    Examples:
        >>> from auxtransfer.report.groups import Family
        >>> section_id(Family("freeze", {"model": "cifar_wrn_28_10", "epochs": 40}, ()))
        'freeze-cifar_wrn_28_10-4e217448'
    """
    canonical = json.dumps(family.setting, sort_keys=True, separators=(",", ":"))
    key = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(family.setting.get("model", "model")))
    return f"{section_name(family)}-{model}-{key}"


def section(family: Family) -> dict[str, Any]:
    """Everything the report shows about one family of settings (its id: ``section_id``)."""
    kind = family.kind
    per_class = family.setting.get("per_class")
    heading = {"freeze": "Freeze sweep", "reset": "Reset sweep"}.get(
        kind, "Long tail" if per_class is not None else "Fine-tuning all layers"
    )
    data: dict[str, Any] = {
        "id": section_id(family),
        "kind": kind,
        "title": f"{heading}: {_describe(family)}",
        "smoke": family.smoke,
        "setting": family.setting,
        "epochs": family.epochs,
        "lr_steps": _lr_steps(family.setting),
        "conditions": [c.name for c in family.conditions],
        "runs": len(family.transfers),
        "figures": [],
    }
    if kind in PAPER_EPOCHS:
        data["points"] = family.points
        data["at_epochs"] = reported_epochs(kind, family.epochs)
        data["errors_at_epochs"] = _errors_at_epochs(family, data["at_epochs"])
        data["curves"] = _mean_curves(family)
    else:
        data["per_split"] = _per_split(family)
        data["weight_sweep"] = _weight_sweep(family) if per_class is None else None
        data["heads"] = _heads(family) if per_class is None else None
        data["long_tail"] = _long_tail(family) if per_class is not None else None
    data["comparisons"] = _comparisons(family)
    data["scores"] = _scores(family)
    data["similarity"] = _similarity(family)
    return data


#: The transferability scores a transfer run records (``scores.json``).
SCORE_NAMES = ("logme", "hscore", "leep", "nce")


def _scores(family: Family) -> dict[str, Any] | None:
    """Per split and condition the mean of each score beside B's final error, and each
    score's rank correlation with B's error over the runs that have it (None: no run has
    scores)."""
    scored = [t for t in family.transfers if t.run.scores]
    if not scored:
        return None

    def values(runs: Sequence[Transfer], name: str) -> list[tuple[float, float]]:
        """(score, B's final error) of each run that has the score."""
        found = []
        for t in runs:
            value = (t.run.scores or {}).get(name)
            if value is not None:
                found.append((value, t.run.final_error))
        return found

    rows = []
    for _, split, condition, runs in _split_cells(family):
        have = [t for t in runs if t.run.scores]
        if have:
            means = {name: _mean([v for v, _ in values(have, name)]) for name in SCORE_NAMES}
            rows.append({"split": split, "condition": condition.name, "n": len(have),
                         "b_mean": _mean([t.run.final_error for t in have]), **means})  # fmt: skip
    correlations = {}
    for name in SCORE_NAMES:
        pairs = values(scored, name)
        result = rank_correlation([p[0] for p in pairs], [p[1] for p in pairs])
        correlations[name] = asdict(result)
    profile = []
    if family.kind in ("freeze", "reset"):
        for condition in family.conditions:
            for point in family.points:
                runs = family.at(point, condition)
                at = [
                    v
                    for t in runs
                    if (v := _at_point((t.run.scores or {}).get("layers"), point)) is not None
                ]
                profile.append({
                    "condition": condition.name, "point": point, "n": len(runs),
                    "a_logme": _mean(at), "b_mean": _mean([t.run.final_error for t in runs]),
                })  # fmt: skip
    return {"rows": rows, "correlations": correlations, "profile": profile}


def _similarity(family: Family) -> dict[str, Any] | None:
    """Linear CKA between each A network with an auxiliary head and its split's baseline
    A network at every address (the A run's ``similarity.json``): a row per A run, and per
    condition and address the mean, lowest and highest over them (None: no A run of the
    family has one)."""
    rows: list[dict[str, Any]] = []
    sources = {t.source.id: t for t in family.transfers if t.source.similarity}
    for run_id, t in sorted(sources.items(), key=lambda item: natural_key(item[0])):
        similarity = t.source.similarity or {}
        baseline = posixpath.normpath(posixpath.join(run_id, similarity["baseline"]))
        rows.append({"split": t.split, "condition": t.condition.name, "run": run_id,
                     "baseline": baseline, "layers": dict(similarity["layers"])})  # fmt: skip
    if not rows:
        return None
    summary = []
    for condition in family.conditions:
        mine = [r["layers"] for r in rows if r["condition"] == condition.name]
        for address in dict.fromkeys(a for layers in mine for a in layers):
            values = [layers[address] for layers in mine if address in layers]
            summary.append({"condition": condition.name, "address": address, "n": len(values),
                            "mean": _mean(values), "min": min(values), "max": max(values)})  # fmt: skip
    return {"rows": rows, "summary": summary}


def _at_point(layers: Mapping[str, float] | None, point: str) -> float | None:
    """LogME of A's features where ``point`` ends: the address itself, or the last one
    within it (a block); None for ``"0"`` (nothing kept) or where it was not measured."""
    if not layers:
        return None
    if point in layers:
        return layers[point]
    inside = [a for a in layers if a.startswith(point + ".")]
    return layers[inside[-1]] if inside else None


def run_entry(run: Run, condition: Condition | None = None) -> dict[str, Any]:
    """A run's summary and its per-epoch numbers (the curves of its figure).

    ``condition`` is a B run's condition (its A run's binary head); an A run's is its own.
    """
    config = run.config
    if condition is None and config.get("side") != "B":
        condition = Condition.of(config)
    return {
        "id": run.id,
        "side": config.get("side", "all"),
        "phase": config.get("phase"),
        "condition": None if condition is None else condition.name,
        "smoke": run.smoke,
        "epochs": config["epochs"],
        "final_test_error": run.final_error,
        "best_test_error": run.best_error,
        "best_epoch": run.results.get("best_epoch"),
        "lr_steps": _lr_steps(config),
        "curves": {"epoch": list(run.epochs), **{k: list(v) for k, v in run.metrics.items()}},
        "figure": None,
    }


def _describe(family: Family) -> str:
    setting = family.setting
    kwargs = setting.get("model_kwargs") or {}
    model = str(setting.get("model", "?"))
    if kwargs:
        model += " (" + ", ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) + ")"
    text = f"{model}, {family.epochs} epochs on B"
    if setting.get("per_class") is not None:
        text += f", {setting['per_class']} images per class"
    return text


def _lr_steps(config: Any) -> list[int]:
    """The epochs from which on the learning rate changes (``lr_table`` or ``milestones``)."""
    table = config.get("lr_table") or []
    starts = [int(entry[0]) for entry in table if int(entry[0]) > 1]
    return starts or [int(m) for m in config.get("milestones") or []]


def _value(t: Transfer, error: float | None) -> dict[str, Any]:
    return {"run": t.run.id, "split": t.split, "seed": t.seed, "error": error}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _errors_at_epochs(family: Family, epochs: list[int]) -> list[dict[str, Any]]:
    rows = []
    for condition in family.conditions:
        for point in family.points:
            runs = family.at(point, condition)
            for epoch in epochs:
                values = [_value(t, t.run.test_error_at(epoch)) for t in runs]
                found = [v["error"] for v in values if v["error"] is not None]
                rows.append({
                    "condition": condition.name, "point": point, "epoch": epoch,
                    "mean": _mean(found), "n": len(found), "values": values,
                })  # fmt: skip
    return rows


def _mean_curves(family: Family) -> list[dict[str, Any]]:
    curves = []
    for condition in family.conditions:
        for point in family.points:
            runs = family.at(point, condition)
            if not runs:
                continue
            common = sorted(set.intersection(*(set(t.run.epochs) for t in runs)))
            means = [_mean([t.run.test_error_at(e) or 0.0 for t in runs]) for e in common]
            curves.append({
                "condition": condition.name, "point": point, "n": len(runs),
                "epoch": common, "mean_test_error": means,
            })  # fmt: skip
    return curves


def _split_cells(family: Family) -> Iterator[tuple[int, int | None, Condition, list[Transfer]]]:
    """Per split (numbered from 1) and condition, its runs, where it has any."""
    splits = sorted({t.split for t in family.transfers}, key=split_order)
    for number, split in enumerate(splits, 1):
        for condition in family.conditions:
            runs = [t for t in family.at(None, condition) if t.split == split]
            if runs:
                yield number, split, condition, runs


def _per_split(family: Family) -> list[dict[str, Any]]:
    rows = []
    for _, split, condition, runs in _split_cells(family):
        a = [t.source_error for t in runs]
        b = [t.run.final_error for t in runs]
        rows.append({
            "split": split, "condition": condition.name, "n": len(runs),
            "runs": [t.run.id for t in runs], "a_errors": a, "b_errors": b,
            "a_mean": _mean(a), "b_mean": _mean(b),
        })  # fmt: skip
    return rows


def _by_split(runs: Sequence[Transfer]) -> dict[int | None, list[float]]:
    groups: dict[int | None, list[float]] = {}
    for t in runs:
        groups.setdefault(t.split, []).append(t.run.final_error)
    return groups


def _sweep(family: Family, conditions: Sequence[Condition]) -> dict[str, Any]:
    """B's final error per condition and split, and the mean over the splits that have
    every condition (a mean over other splits per condition would mix in the splits'
    own differences)."""
    errors = {c: _by_split(family.at(None, c)) for c in conditions}
    common = set.intersection(*(set(e) for e in errors.values()))
    common_splits = sorted(common, key=split_order)
    rows = []
    for condition in conditions:
        by_split = sorted(errors[condition].items(), key=lambda item: split_order(item[0]))
        means = {s: sum(v) / len(v) for s, v in by_split}
        rows.append({
            "condition": condition.name, "weight": condition.weight, "heads": condition.heads,
            "per_split": [{"split": s, "mean": means[s], "n": len(v)} for s, v in by_split],
            "mean_over_common_splits": _mean([means[s] for s in common_splits]),
        })  # fmt: skip
    return {"common_splits": common_splits, "rows": rows}


def _weight_sweep(family: Family) -> dict[str, Any] | None:
    """Fig. 4: the single-head binary conditions, when there are at least three weights
    (the baseline's 0 among them); two are the paired comparison the section already shows."""
    single = [c for c in family.conditions if c.heads == 1 and c.is_binary]
    if len(single) < 3:
        return None
    return _sweep(family, single)


def _heads(family: Family) -> dict[str, Any] | None:
    """Fig. 10: the baseline and every ``b x n`` whose per-head weight ``b`` also comes
    with several heads."""
    binary = [c for c in family.conditions if c.is_binary]
    per_head = {round(c.weight / c.heads, 9) for c in binary if c.heads > 1}
    if not per_head:
        return None
    chosen = [c for c in binary if c.is_baseline or round(c.weight / c.heads, 9) in per_head]
    return _sweep(family, chosen)


def _long_tail(family: Family) -> list[dict[str, Any]]:
    """Table 1: per split and condition, B's mean final error over replications, with the
    paper's value beside the first two splits (its splits are other random ones)."""
    rows = []
    comparable = (
        family.setting.get("per_class") == PAPER_LONG_TAIL_PER_CLASS
        and family.setting.get("model") == "cifar_densenet_bc_100"
    )
    for number, split, condition, runs in _split_cells(family):
        errors = [t.run.final_error for t in runs]
        paper_name = (
            "baseline" if condition.is_baseline else "binary" if condition == PAPER_BINARY else None
        )
        rows.append({
            "split": split, "split_number": number, "condition": condition.name,
            "replications": len(errors), "mean": _mean(errors),
            "sd": statistics.stdev(errors) if len(errors) > 1 else None,
            "paper": PAPER_LONG_TAIL.get((number, paper_name or "")) if comparable else None,
        })  # fmt: skip
    return rows


def _comparisons(family: Family) -> list[dict[str, Any]]:
    rows = []
    baseline = Condition(0.0)
    others = [c for c in family.conditions if not c.is_baseline]
    for point in family.points:
        for condition in others:
            base, bin_ = family.at(point, baseline), family.at(point, condition)
            pairs, unpaired = pair(base, bin_)
            splits = [b.split for b, _ in pairs]
            a = [b.run.final_error for b, _ in pairs]
            b = [t.run.final_error for _, t in pairs]
            test = asdict(paired_test(a, b, splits=splits))
            variance = asdict(variance_decomposition(a, b, splits))
            if not base:
                note = "cannot test: no baseline runs in this setting"
                test.update(t_note=note, wilcoxon_note=note)
                variance["note"] = note
            elif not pairs:
                note = (
                    f"cannot test: unpaired runs (baseline on {_splits_text(base)}, "
                    f"{condition.name} on {_splits_text(bin_)})"
                )
                test.update(t_note=note, wilcoxon_note=note)
                variance["note"] = note
            rows.append({
                "point": point or None, "baseline": baseline.name, "condition": condition.name,
                "pairs": [
                    {"split": x.split, "seed": x.seed, "baseline_run": x.run.id,
                     "condition_run": y.run.id, "baseline": x.run.final_error,
                     "condition": y.run.final_error,
                     "difference": y.run.final_error - x.run.final_error}
                    for x, y in pairs
                ],
                "unpaired": [t.run.id for t in unpaired],
                "test": test, "variance": variance,
            })  # fmt: skip
    return rows


def _splits_text(runs: Sequence[Transfer]) -> str:
    splits = sorted({t.split for t in runs}, key=split_order)
    return ", ".join(split_label(s) for s in splits)
