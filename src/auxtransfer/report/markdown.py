"""``report.md``: the report's numbers, figures and tests as Markdown.

Everything here is read from the report's data (``write.build_report``), the same data
``report.json`` holds, so the text and the JSON agree. Errors are shown with two decimals
(``error``), differences with a sign (``difference``), p-values with three significant
digits (``pvalue``) and shares of variance in percent with one decimal (``share``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .groups import split_label
from .sections import SMOKE_LABEL
from .stats import MIN_WILCOXON_PAIRS

__all__ = ["difference", "error", "pvalue", "render", "share"]

_DASH = "—"


def error(value: float | None) -> str:
    """An error in %: ``"31.81"``."""
    return _DASH if value is None else f"{value:.2f}"


def difference(value: float | None) -> str:
    """A difference in percentage points: ``"+0.53"``."""
    return _DASH if value is None else f"{value:+.2f}"


def pvalue(value: float | None) -> str:
    """A p-value with three significant digits: ``"0.0312"``."""
    return _DASH if value is None else f"{value:.3g}"


def share(value: float | None) -> str:
    """A fraction as a percentage: ``"71.2 %"``."""
    return _DASH if value is None else f"{100 * value:.1f} %"


def render(report: Mapping[str, Any]) -> str:
    """The whole ``report.md``."""
    runs, skipped = report["runs"], report["skipped"]
    lines = ["# Transfer report", ""]
    lines.append(
        f"Run directories under `{report['root']}`: {len(runs)} finished run(s) reported, "
        f"{len(skipped)} skipped."
    )
    if not runs:
        lines += ["", "No finished runs were found: there is nothing to show or compare."]
    smoke = [r for r in runs if r["smoke"]]
    if smoke:
        lines += ["", f"> **{SMOKE_LABEL}**: {len(smoke)} of the {len(runs)} runs are smoke runs "
                  "(`smoke: true` in their config.json: a tiny model, synthetic data or a handful of images, a few epochs). "
                  "They show that every step runs; their numbers say nothing about the method. "
                  "Every section and figure that holds them says so."]  # fmt: skip
    lines += ["", "Errors are test errors in %; differences are `condition - baseline` in "
              "percentage points (the condition: an auxiliary head on A, binary or another kind), "
              "so a positive difference means the auxiliary head made B's error higher."]  # fmt: skip
    if skipped:
        lines += ["", "## Skipped run directories", ""]
        lines += [f"- `{item['id']}`: {item['reason']}" for item in skipped]
    for section in report["sections"]:
        lines += ["", *_section(section)]
    if runs:
        lines += ["", *_runs(runs)]
    return "\n".join(lines) + "\n"


def _section(section: Mapping[str, Any]) -> list[str]:
    smoke = f" ({SMOKE_LABEL})" if section["smoke"] else ""
    lines = [f"## {section['title']}{smoke}", ""]
    lines.append(f"{section['runs']} run(s) on B; conditions: {', '.join(section['conditions'])}.")
    if section["smoke"]:
        lines += ["", f"**{SMOKE_LABEL}.**"]
    lines += ["", "<details><summary>Settings shared by these runs</summary>", "", *_setting(section["setting"], section["kind"]),
              "", "</details>"]  # fmt: skip
    if section["kind"] in ("freeze", "reset"):
        lines += ["", *_points_table(section)]
    else:
        lines += ["", *_per_split_table(section)]
        if section["weight_sweep"]:
            lines += ["", *_sweep_table(section["weight_sweep"], "binary weight")]
        if section["heads"]:
            lines += ["", *_sweep_table(section["heads"], "condition")]
        if section["long_tail"]:
            lines += ["", *_long_tail(section)]
    for figure in section["figures"]:
        lines += ["", f"![{figure['title']}]({figure['file']})"]
    if section.get("scores"):
        lines += ["", *_scores(section["scores"])]
    if section.get("similarity"):
        lines += ["", *_similarity(section["similarity"])]
    lines += ["", "### Paired statistics: condition - baseline, B's final test error", ""]
    if not section["comparisons"]:
        lines.append("cannot test: no condition with an auxiliary head in this setting")
    for comparison in section["comparisons"]:
        lines += [*_comparison(section, comparison), ""]
    return lines


#: The settings of an auxiliary head (A's are in each condition's name).
_AUX_SETTINGS = ("aux_labels", "binary_weight", "num_groups", "num_partitions")


def _setting(setting: Mapping[str, Any], kind: str) -> list[str]:
    """The settings of the B runs and of the A runs they start from, side by side."""
    source = setting.get("pretrain") or {}
    names = sorted((set(setting) | set(source) | {kind} & {"freeze", "reset"}) - {"pretrain"})
    if not setting.get("binary_weight"):  # B's runs have no auxiliary head: no settings of one
        names = [n for n in names if n not in _AUX_SETTINGS or n in source]
    lines = _table_head(["setting", "fine-tuning on B", "pre-training on A"])
    for name in names:
        cells = [_compact(where[name]) if name in where else _DASH for where in (setting, source)]
        if name == kind:
            cells[0] = "each point below"
        lines.append(_row([name, *cells]))
    return lines


def _compact(value: Any) -> str:
    return "`" + json.dumps(value, separators=(", ", ": ")) + "`"


def _points_table(section: Mapping[str, Any]) -> list[str]:
    epochs, conditions = section["at_epochs"], section["conditions"]
    head = "frozen up to" if section["kind"] == "freeze" else "kept up to"
    lines = [f"B's test error (%) at epochs {', '.join(map(str, epochs))} of {section['epochs']}, "
             "mean over tests (n tests):", ""]  # fmt: skip
    columns = [f"{c}, epoch {e}" for c in conditions for e in epochs]
    lines += _table_head([head, *columns])
    cells = {(r["condition"], r["point"], r["epoch"]): r for r in section["errors_at_epochs"]}
    for point in section["points"]:
        row = [f"`{point}`"]
        for condition in conditions:
            for epoch in epochs:
                r = cells.get((condition, point, epoch))
                row.append(
                    _DASH if not r or r["mean"] is None else f"{error(r['mean'])} ({r['n']})"
                )
        lines.append(_row(row))
    return lines


def _per_split_table(section: Mapping[str, Any]) -> list[str]:
    lines = [
        "A's error (of the weights B starts from) and B's final error per split, mean over runs:",
        "",
    ]
    lines += _table_head(
        ["split", "condition", "runs", "A: test error (%)", "B: final test error (%)"]
    )
    for r in section["per_split"]:
        lines.append(_row([split_label(r["split"]), r["condition"], str(r["n"]),
                           error(r["a_mean"]), error(r["b_mean"])]))  # fmt: skip
    return lines


def _sweep_table(sweep: Mapping[str, Any], head: str) -> list[str]:
    rows, common = sweep["rows"], sweep["common_splits"]
    splits = list(dict.fromkeys(p["split"] for r in rows for p in r["per_split"]))
    mean_head = f"mean over the {len(common)} split(s) with every {head}" if common else "mean"
    lines = [f"B's final test error (%) by {head}, mean per split:", ""]
    lines += _table_head([head, *[split_label(s) for s in splits], mean_head])
    for r in rows:
        by_split = {p["split"]: p["mean"] for p in r["per_split"]}
        label = f"{r['weight']:g}" if head == "binary weight" else r["condition"]
        means = [error(by_split.get(s)) for s in splits]
        lines.append(_row([label, *means, error(r["mean_over_common_splits"])]))
    return lines


def _long_tail(section: Mapping[str, Any]) -> list[str]:
    per_class = section["setting"].get("per_class")
    # The paper's values only beside its own setting (DenseNet-BC-100, 60 images per class).
    paper = any(r["paper"] is not None for r in section["long_tail"])
    lines = [f"Table 1: B cut to {per_class} images per class, final test error on B (%) over "
             "replications" + (", with the paper's value beside its splits 1 and 2:" if paper else ":"),
             ""]  # fmt: skip
    lines += _table_head(["split", "condition", "replications", "mean", "sd", *(["paper"] if paper else [])])  # fmt: skip
    for r in section["long_tail"]:
        split = f"{split_label(r['split'])} (#{r['split_number']})"
        lines.append(_row([split, r["condition"], str(r["replications"]), error(r["mean"]),
                           error(r["sd"]), *([error(r["paper"])] if paper else [])]))  # fmt: skip
    if not paper:
        return lines
    lines += ["", "The paper's splits 1 and 2 are other random class splits than ours: compare "
              "the size of the numbers and of the gaps, not split by split. The paper reports "
              "Baseline 1 31.81, Binary 1 38.86, Baseline 2 35.57, Binary 2 37.12 (60 images "
              "per class, binary weight 0.4)."]  # fmt: skip
    return lines


def _comparison(section: Mapping[str, Any], comparison: Mapping[str, Any]) -> list[str]:
    test, variance = comparison["test"], comparison["variance"]
    point = comparison["point"]
    where = f"{section['kind']} `{point}`: " if point else ""
    pairs = comparison["pairs"]
    splits = list(dict.fromkeys(p["split"] for p in pairs))
    lines = [f"**{where}{comparison['condition']} - {comparison['baseline']}**", ""]
    lines.append(f"- pairs: {len(pairs)} on {len(splits)} split(s)"
                 + (f" ({', '.join(split_label(s) for s in splits)})" if splits else ""))  # fmt: skip
    per_split = max((sum(p["split"] == s for p in pairs) for s in splits), default=0)
    if per_split > 1 and test["t_note"] is None:
        lines.append(f"- up to {per_split} pairs share a split: the tests take the pairs as independent, "
                     "but pairs on one split share its luck (the split's share of the variance below says how much)")  # fmt: skip
    if comparison["unpaired"]:
        lines.append(
            f"- left out, no partner on their split: {', '.join(f'`{r}`' for r in comparison['unpaired'])}"
        )
    if test["mean_difference"] is not None:
        mean = f"- mean difference: {difference(test['mean_difference'])} points"
        if test["t_note"] is None:
            mean += (f", {100 * test['confidence']:g} % CI [{difference(test['ci_low'])}, "
                     f"{difference(test['ci_high'])}] (t distribution, {test['df']} df)")  # fmt: skip
        lines.append(mean)
    if test["t_note"] is not None:
        lines.append(f"- interval and paired t-test: {test['t_note']}")
    else:
        lines.append(
            f"- paired t-test (scipy.stats.ttest_rel): t = {test['t_statistic']:.3g}, p = {pvalue(test['t_pvalue'])}"
        )
    if test["wilcoxon_note"] is not None:
        lines.append(f"- Wilcoxon signed-rank test: {test['wilcoxon_note']}")
    else:
        lines.append(f"- Wilcoxon signed-rank test (scipy.stats.wilcoxon, at least {MIN_WILCOXON_PAIRS} "
                     f"non-zero differences): W = {test['wilcoxon_statistic']:.3g}, p = {pvalue(test['wilcoxon_pvalue'])}")  # fmt: skip
    if variance["note"] is not None:
        lines.append(f"- variance by split and condition: {variance['note']}")
    else:
        text = (f"- variance of B's final error: split {share(variance['split_fraction'])}, condition "
                f"{share(variance['condition_fraction'])}, residual {share(variance['residual_fraction'])} "
                "of the total sum of squares (two-way analysis of variance, additive)")  # fmt: skip
        if variance["f_split"] is not None:
            text += (f"; split F({variance['df_split']}, {variance['df_residual']}) = {variance['f_split']:.3g}, "
                     f"p = {pvalue(variance['p_split'])}; condition F(1, {variance['df_residual']}) = "
                     f"{variance['f_condition']:.3g}, p = {pvalue(variance['p_condition'])}")  # fmt: skip
        lines.append(text)
    return lines


def _runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    curves = any(run["figure"] for run in runs)  # none without them (--no-run-curves)
    intro = "Training and test curves of every run:" if curves else "Every run reported:"
    lines = ["## Runs", "", intro, ""]
    lines += _table_head(["run", "side", "condition", "epochs", "final test error (%)",
                          "best (epoch)", *(["curves"] if curves else [])])  # fmt: skip
    for run in runs:
        name = f"`{run['id']}`" + (f" ({SMOKE_LABEL})" if run["smoke"] else "")
        figure = [f"[curves]({run['figure']})" if run["figure"] else _DASH] if curves else []
        best = f"{error(run['best_test_error'])} ({run['best_epoch']})"
        lines.append(_row([name, str(run["side"]), run["condition"] or _DASH, str(run["epochs"]),
                           error(run["final_test_error"]), best, *figure]))  # fmt: skip
    return lines


def _table_head(columns: Sequence[str]) -> list[str]:
    return [_row(columns), _row(["---"] * len(columns))]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _scores(scores: Mapping[str, Any]) -> list[str]:
    """The transferability scores each transfer run measured before training on B, beside
    B's final error, and how well each orders the runs by that error."""
    names = ("logme", "hscore", "leep", "nce")
    lines = ["### Transferability scores, measured before training on B", "",
             "LogME and H-score of B's training features at the penultimate layer, LEEP and NCE "
             "of A's classifier on B's training images (higher: predicted to transfer better), "
             "mean per split and condition:", ""]  # fmt: skip
    lines += _table_head(["split", "condition", "runs", "B: final test error (%)", "LogME", "H-score", "LEEP", "NCE"])  # fmt: skip
    for r in scores["rows"]:
        cells = [_DASH if r[n] is None else f"{r[n]:.4g}" for n in names]
        lines.append(_row([split_label(r["split"]), r["condition"], str(r["n"]), error(r["b_mean"]), *cells]))  # fmt: skip
    if scores.get("profile"):
        lines += ["", "LogME of A's features on B's training images where each point ends, beside "
                  "B's final error there (mean over runs):", ""]  # fmt: skip
        lines += _table_head(["point", "condition", "runs", "LogME of A at the point", "B: final test error (%)"])  # fmt: skip
        for r in scores["profile"]:
            shown = _DASH if r["a_logme"] is None else f"{r['a_logme']:.4g}"
            lines.append(_row([r["point"], r["condition"], str(r["n"]), shown, error(r["b_mean"])]))  # fmt: skip
    lines += ["", "Rank correlation of each score with B's final error over the runs (a score "
              "that predicts well correlates negatively), 95 % bootstrap intervals:", ""]  # fmt: skip
    lines += _table_head(["score", "runs", "Kendall tau", "Spearman rho"])
    for name, label in zip(names, ("LogME", "H-score", "LEEP", "NCE"), strict=True):
        c = scores["correlations"][name]
        if c["note"]:
            lines.append(_row([label, str(c["n"]), c["note"], c["note"]]))
            continue
        cells = []
        for key in ("kendall", "spearman"):
            ci = c[f"{key}_ci"]
            shown = f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "no interval"
            cells.append(f"{c[key]:+.2f} {shown}")
        lines.append(_row([label, str(c["n"]), *cells]))
    return lines


def _similarity(similarity: Mapping[str, Any]) -> list[str]:
    """Linear CKA between each condition's A networks and the baseline's, per address."""
    conditions = list(dict.fromkeys(r["condition"] for r in similarity["summary"]))
    cells = {(r["address"], r["condition"]): r for r in similarity["summary"]}
    lines = ["### Where the auxiliary head changed A's features", "",
             "Debiased linear CKA between each A network with an auxiliary head and the "
             "baseline's A network of its split, on A's test images, at each address (1: the "
             "same features up to rotation and scale); mean over splits, lowest and highest "
             "in brackets:", ""]  # fmt: skip
    lines += _table_head(["address", *conditions])
    for address in dict.fromkeys(r["address"] for r in similarity["summary"]):
        shown = []
        for condition in conditions:
            r = cells.get((address, condition))
            shown.append(
                _DASH
                if r is None
                else f"{r['mean']:.3f} [{r['min']:.3f}, {r['max']:.3f}] ({r['n']})"
            )
        lines.append(_row([address, *shown]))
    return lines
