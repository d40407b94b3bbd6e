"""The report: paired statistics against scipy and by hand, figures, report.md and report.json
over run directories written here, and the directories it must skip."""

import itertools
import json
import math
import re
import statistics
from pathlib import Path

import pytest

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

from scipy import stats

from auxtransfer.experiments.rundir import RunDir, summarise_metrics
from auxtransfer.experiments.train import RunConfig
from auxtransfer.report import (
    build_report,
    gather,
    paired_test,
    variance_decomposition,
    write_report,
)
from auxtransfer.report.__main__ import main
from auxtransfer.report.figures import FIGURES, run_figure
from auxtransfer.report.markdown import difference, error, pvalue, share
from auxtransfer.report.sections import SMOKE_LABEL, reported_epochs

PNG = b"\x89PNG\r\n\x1a\n"
BASELINE = [31.2, 35.0, 29.8, 33.1, 36.4, 30.5, 32.2]
BINARY = [32.0, 34.1, 31.0, 33.9, 37.9, 30.2, 33.5]


# --- paired statistics ------------------------------------------------------------------


def _exact_wilcoxon_p(differences):
    """Two-sided exact p of the signed-rank test by enumerating every sign assignment."""
    ranks = {abs(d): r for r, d in enumerate(sorted(differences, key=abs), 1)}
    observed = sum(ranks[abs(d)] for d in differences if d > 0)
    total = len(differences) * (len(differences) + 1) / 2
    w = min(observed, total - observed)
    sums = [
        sum(r for r, s in zip(ranks.values(), signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(differences))
    ]
    return min(1.0, 2 * sum(s <= w for s in sums) / len(sums))


def test_paired_test_matches_scipy_and_a_hand_computation():
    result = paired_test(BASELINE, BINARY, splits=range(7))
    d = [b - a for a, b in zip(BASELINE, BINARY, strict=True)]
    n, mean, sd = len(d), sum(d) / len(d), statistics.stdev(d)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n))
    assert result.pairs == 7 and result.splits == 7 and result.df == 6
    assert result.mean_difference == pytest.approx(mean, abs=1e-12)
    assert result.ci_low == pytest.approx(mean - half, rel=1e-12)
    assert result.ci_high == pytest.approx(mean + half, rel=1e-12)
    assert result.t_statistic == pytest.approx(t, rel=1e-12)
    assert result.t_pvalue == pytest.approx(2 * stats.t.sf(abs(t), n - 1), rel=1e-10)
    assert result.t_pvalue == stats.ttest_rel(BINARY, BASELINE).pvalue
    reference = stats.wilcoxon(BINARY, BASELINE)
    assert result.wilcoxon_pvalue == reference.pvalue
    assert result.wilcoxon_statistic == reference.statistic
    assert result.wilcoxon_pvalue == pytest.approx(_exact_wilcoxon_p(d), rel=1e-12)
    assert result.t_note is None and result.wilcoxon_note is None
    assert paired_test(BASELINE, BINARY, confidence=0.9).ci_high == pytest.approx(
        mean + stats.t.ppf(0.95, n - 1) * sd / math.sqrt(n)
    )


@pytest.mark.parametrize(
    ("baseline", "binary", "splits", "t_reason", "w_reason"),
    [
        ([], [], [], "no pairs", "no pairs"),
        ([30.0], [31.0], [0], "1 pair; the interval and the t-test need at least 2", "at least 6"),
        ([30.0, 31, 32], [31.0, 33, 32.5], [4, 4, 4], "all 3 pair(s) are on split 4", "split 4"),
        (BASELINE[:5], BINARY[:5], range(5), None, "5 non-zero difference(s); the Wilcoxon"),
        ([30.0, 31, 32], [31.0, 32, 33], range(3), "no spread", "3 non-zero"),
        # 33.1 - 32.1 and 32.1 - 31.1 differ by float rounding only: still no spread.
        ([31.1, 32.1, 30.0], [32.1, 33.1, 31.0], range(3), "are +1 (no spread", "3 non-zero"),
    ],
)
def test_paired_test_says_when_it_cannot_test(baseline, binary, splits, t_reason, w_reason):
    result = paired_test(baseline, binary, splits=list(splits))
    if t_reason is None:
        assert result.t_note is None and result.t_pvalue is not None
    else:
        assert result.t_note.startswith("cannot test: ") and t_reason in result.t_note
        assert result.t_pvalue is None and result.ci_low is None and result.ci_high is None
    assert result.wilcoxon_note.startswith("cannot test: ") and w_reason in result.wilcoxon_note
    assert result.wilcoxon_pvalue is None


def test_paired_test_rejects_mismatched_input():
    with pytest.raises(ValueError, match="one error per pair"):
        paired_test([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one split per pair"):
        paired_test([1.0, 2.0], [1.0, 3.0], splits=[0])
    with pytest.raises(ValueError, match="finite"):
        paired_test([1.0, math.nan], [1.0, 3.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_test([1.0, 2.0], [1.0, 3.0], confidence=1.5)


def test_variance_decomposition_by_hand():
    # Grand mean 32.5; split means 30.5, 35, 32; condition means 32, 33.
    v = variance_decomposition([30.0, 34.0, 32.0], [31.0, 36.0, 32.0], splits=["a", "b", "c"])
    total = 2.5**2 + 1.5**2 + 0.5**2 + 1.5**2 + 3.5**2 + 0.5**2  # 23.5
    split = 2 * (2.0**2 + 2.5**2 + 0.5**2)  # 21
    condition = 3 * (0.5**2 + 0.5**2)  # 1.5
    assert (v.total, v.split, v.condition) == pytest.approx((total, split, condition))
    assert v.residual == pytest.approx(1.0)  # 23.5 - 21 - 1.5
    assert v.split_fraction == pytest.approx(21 / 23.5)
    assert v.condition_fraction == pytest.approx(1.5 / 23.5)
    assert v.residual_fraction == pytest.approx(1 / 23.5)
    assert (v.df_split, v.df_condition, v.df_residual) == (2, 1, 2)
    assert v.f_split == pytest.approx((21 / 2) / (1 / 2))
    assert v.p_split == pytest.approx(stats.f.sf(21, 2, 2))
    # One pair per split: the condition's F is the paired t squared, with the same p-value.
    t = stats.ttest_rel([31.0, 36.0, 32.0], [30.0, 34.0, 32.0])
    assert v.f_condition == pytest.approx(t.statistic**2)
    assert v.p_condition == pytest.approx(t.pvalue)


def test_variance_decomposition_with_replications_by_hand():
    # Two pairs on split 0, one on split 1: grand mean 12.
    v = variance_decomposition([10.0, 12.0, 14.0], [11.0, 11.0, 14.0], splits=[0, 0, 1])
    values = [10, 12, 14, 11, 11, 14]
    total = sum((x - 12) ** 2 for x in values)
    split = 4 * (11 - 12) ** 2 + 2 * (14 - 12) ** 2
    condition = 3 * ((12 - 12) ** 2 + (12 - 12) ** 2)
    assert (v.total, v.split, v.condition) == pytest.approx((total, split, condition))
    # Residual by hand: the fit is 11 on split 0 and 14 on split 1 (no condition effect),
    # leaving -1, 1, 0, 0 on split 0 and 0, 0 on split 1.
    assert v.residual == pytest.approx(2.0)
    assert v.df_residual == 3  # 6 values - 1 - 1 (2 splits) - 1 (2 conditions)
    assert v.residual_fraction == pytest.approx(2 / 14)


@pytest.mark.parametrize(
    ("baseline", "binary", "splits", "reason"),
    [
        ([], [], [], "no pairs"),
        ([30.0, 31.0], [31.0, 33.0], [2, 2], "on one split"),
        ([30.0, 30.0], [30.0, 30.0], [0, 1], "no variance"),
    ],
)
def test_variance_decomposition_says_when_it_cannot_test(baseline, binary, splits, reason):
    v = variance_decomposition(baseline, binary, splits)
    assert v.note.startswith("cannot test: ") and reason in v.note
    assert v.split_fraction is None and v.f_condition is None


# --- run directories --------------------------------------------------------------------

LR_TABLE = ((1, (0.01, 0.1)), (3, (0.001, 0.001)))


def _write_run(root, run_id, config, errors, *, finish=True):
    """A run directory as train_run leaves it: config.json, metrics.csv, results.json."""
    run = RunDir(root / run_id)
    run.write_config(config.to_json())
    binary = config.binary_weight > 0
    for epoch, test_error in enumerate(errors, 1):
        row = {
            "phase": config.phase, "epoch": epoch, "lr": 0.1, "train_loss": 2.0 / epoch,
            "train_error": test_error - 5, "test_loss": 2.5 / epoch, "test_error": test_error,
            "train_binary_loss": 0.5 if binary else "", "train_binary_error": 20.0 if binary else "",
            "seconds": 1.0, "lr_groups": "body=0.01 head=0.1",
            "train_main_loss": 1.7 / epoch if binary else 2.0 / epoch,
        }  # fmt: skip
        run.append_metrics(row, fresh=epoch == 1)
    if finish:
        run.write_results(summarise_metrics(run.read_metrics(), epochs=config.epochs))


def _curve(final, epochs):
    return [final + 4.0 * (epochs - e) for e in range(1, epochs + 1)]


def _pretrain(root, prefix, weight, split, seed=0, heads=1, smoke=False, **kwargs):
    config = RunConfig(
        model="cifar_densenet_bc_100", num_classes=50, epochs=2, binary_weight=weight,
        num_partitions=heads, partition_seed=seed, seed=seed, split_seed=split, side="A",
        phase="pretrain", lr_table=((1, (0.1,)), (2, (0.01,))), smoke=smoke, **kwargs,
    )  # fmt: skip
    _write_run(root, f"{prefix}/pretrain", config, _curve(25.0 + weight, 2))


def _transfer(root, prefix, step, final, split, seed=0, epochs=4, smoke=False, **kwargs):
    config = RunConfig(
        model="cifar_densenet_bc_100", num_classes=50, epochs=epochs, lr=0.01, lr_table=LR_TABLE,
        seed=seed, split_seed=split, side="B", phase=step.partition("-")[0],
        transfer_from="../pretrain", smoke=smoke, **kwargs,
    )  # fmt: skip
    _write_run(root, f"{prefix}/{step}", config, _curve(final, epochs))


SPLIT_EFFECT = {0: 0.0, 1: 4.0, 2: -2.0}
FREEZE_POINTS = {"0": 0.0, "2.1": 1.5, "3": 9.0}
BINARY_GAP = {0: 0.5, 1: 1.5, 2: -0.3}  # binary - baseline, per split
WEIGHTS = (0.0, 0.2, 0.4)


def _b_error(split, weight, extra=0.0):
    return 30.0 + SPLIT_EFFECT[split] + (BINARY_GAP[split] if weight else 0.0) + weight + extra


def _write_experiments(root):
    """A paired freeze sweep (3 splits), a weight sweep with a 2-head condition (2 splits),
    long-tail replications (2 splits x 3) and a smoke pair."""
    for split in (0, 1, 2):
        for name, weight in (("baseline", 0.0), ("binary", 0.4)):
            prefix = f"freeze/split{split}/{name}"
            _pretrain(root, prefix, weight, split)
            for point, extra in FREEZE_POINTS.items():
                final = _b_error(split, weight, extra)
                _transfer(root, prefix, f"freeze-{point}", final, split, freeze=point, epochs=40)
    for split in (0, 1):
        for weight in WEIGHTS:
            prefix = f"weights/split{split}/w{weight:g}"
            _pretrain(root, prefix, weight, split)
            _transfer(root, prefix, "finetune", _b_error(split, weight), split)
        prefix = f"weights/split{split}/b0.1x2"
        _pretrain(root, prefix, 0.2, split, heads=2)
        _transfer(root, prefix, "finetune", _b_error(split, 0.2, 0.7), split)
    for split in (0, 1):
        for rep in range(3):
            for name, weight in (("baseline", 0.0), ("binary", 0.4)):
                prefix = f"longtail/split{split}/rep{rep}/{name}"
                _pretrain(root, prefix, weight, split, seed=rep)
                final = _b_error(split, weight, 5.0 + 0.7 * rep * (1 + weight))
                _transfer(root, prefix, "longtail", final, split, seed=rep, per_class=60)
    for name, weight in (("baseline", 0.0), ("binary", 0.4)):
        prefix = f"smoke/split0/{name}"
        _pretrain(root, prefix, weight, 0, smoke=True)
        _transfer(root, prefix, "finetune", 90.0 + weight, 0, epochs=2, smoke=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    _write_experiments(root)
    before = _files(root)
    report = write_report(root, format="json", run_curves=False)  # the runs' PNGs: below
    return root, before, report


def _files(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _section(report, prefix):
    return next(s for s in report["sections"] if s["id"].startswith(prefix))


def test_report_writes_real_pngs_and_only_report_files(written):
    root, before, report = written
    added = _files(root) - before
    assert _files(root) >= before
    figures = [f["file"] for s in report["sections"] for f in s["figures"]]
    assert all(r["figure"] is None for r in report["runs"])
    assert added == {"report.md", "report.json", ".report-files", *figures}
    assert all((root / name).read_bytes()[:8] == PNG for name in figures)
    kinds = {f["kind"] for s in report["sections"] for f in s["figures"]}
    assert kinds == {"points", "curves", "splits", "weights", "heads"}
    assert len(report["runs"]) == 24 + 16 + 24 + 4


def _texts(fig):
    found = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        found.append(fig._suptitle.get_text())
    for ax in fig.axes:
        found += [t.get_text() for t in ax.texts]
    return found


def test_every_figure_has_labels_titles_and_a_legend(written):
    root, _, _ = written
    report = build_report(root)
    drawn = [(FIGURES[f["kind"]](s), s["smoke"]) for s in report["sections"] for f in s["figures"]]
    drawn += [(run_figure(r), r["smoke"]) for r in report["runs"][:3] + report["runs"][-2:]]
    for fig, smoke in drawn:
        assert fig._suptitle is not None and fig._suptitle.get_text()
        supxlabel = fig._supxlabel.get_text() if fig._supxlabel is not None else ""
        assert any(ax.get_ylabel() for ax in fig.axes)
        assert any(ax.get_legend() is not None for ax in fig.axes)
        for ax in fig.axes:
            assert ax.get_title()
            assert ax.get_xlabel() or supxlabel
        assert (SMOKE_LABEL in "\n".join(_texts(fig))) == smoke


def test_freeze_sweep_numbers(written):
    _, _, report = written
    freeze = _section(report, "freeze")
    assert freeze["points"] == ["0", "2.1", "3"]
    assert freeze["at_epochs"] == [1, 21, 40]
    row = next(
        r
        for r in freeze["errors_at_epochs"]
        if (r["condition"], r["point"], r["epoch"]) == ("binary 0.4", "3", 21)
    )
    expected = [_b_error(s, 0.4, 9.0) + 4.0 * 19 for s in (0, 1, 2)]
    assert row["n"] == 3 and row["mean"] == pytest.approx(sum(expected) / 3)
    comparison = next(c for c in freeze["comparisons"] if c["point"] == "2.1")
    reference = paired_test(
        [_b_error(s, 0.0, 1.5) for s in (0, 1, 2)],
        [_b_error(s, 0.4, 1.5) for s in (0, 1, 2)],
        splits=[0, 1, 2],
    )
    assert comparison["test"]["t_pvalue"] == pytest.approx(reference.t_pvalue)
    assert comparison["test"]["mean_difference"] == pytest.approx(
        0.4 + sum(BINARY_GAP.values()) / 3
    )


def test_reported_epochs_follow_the_paper_or_the_run():
    assert reported_epochs("freeze", 40) == [1, 21, 40]
    assert reported_epochs("reset", 100) == [1, 51, 100]
    assert reported_epochs("reset", 40) == [1, 21, 40]
    assert reported_epochs("freeze", 2) == [1, 2]


def test_report_md_has_the_tables_tests_and_smoke_label(written):
    root, _, report = written
    text = (root / "report.md").read_text()
    assert "Table 1: B cut to 60 images per class" in text
    for paper in ("31.81", "38.86", "35.57", "37.12"):
        assert f"| {paper} |" in text
    long_tail = _section(report, "longtail")["long_tail"]
    baseline_0 = [_b_error(0, 0.0, 5.0 + 0.7 * rep) for rep in range(3)]
    assert long_tail[0]["mean"] == pytest.approx(sum(baseline_0) / 3)
    assert f"| split 0 (#1) | baseline | 3 | {error(sum(baseline_0) / 3)} |" in text
    assert "- paired t-test (scipy.stats.ttest_rel): t = " in text
    assert "- Wilcoxon signed-rank test: cannot test: 3 non-zero difference(s)" in text
    assert "up to 3 pairs share a split" in text
    assert (
        f"## Fine-tuning all layers: cifar_densenet_bc_100, 2 epochs on B ({SMOKE_LABEL})" in text
    )
    assert f"> **{SMOKE_LABEL}**: 4 of the 68 runs are smoke runs" in text
    assert "- interval and paired t-test: cannot test: 1 pair;" in text  # the smoke pair
    # The weight sweep's mean over splits, and the heads condition.
    assert "binary 0.2 = 0.1 x 2 heads" in text
    assert "![A's and B's error per split and condition](fig-finetune-" in text


def test_json_holds_the_numbers_of_the_markdown(written):
    root, _, _ = written
    data = json.loads((root / "report.json").read_text())
    text = (root / "report.md").read_text()
    checked = 0
    for section in data["sections"]:
        for comparison in section["comparisons"]:
            test, variance = comparison["test"], comparison["variance"]
            if test["mean_difference"] is not None:
                assert f"mean difference: {difference(test['mean_difference'])} points" in text
            if test["t_pvalue"] is not None:
                assert f"[{difference(test['ci_low'])}, {difference(test['ci_high'])}]" in text
                assert f"p = {pvalue(test['t_pvalue'])}" in text
                checked += 1
            if variance["split_fraction"] is not None:
                assert f"split {share(variance['split_fraction'])}, condition" in text
        for row in section.get("per_split") or []:
            assert f"| {error(row['a_mean'])} | {error(row['b_mean'])} |" in text
    assert checked >= 4
    for run in data["runs"]:
        assert f"| {error(run['final_test_error'])} | {error(run['best_test_error'])} (" in text
    assert re.search(r"NaN|Infinity", (root / "report.json").read_text()) is None


def test_unpaired_runs_get_the_cannot_test_line(tmp_path):
    for split, (name, weight) in ((0, ("baseline", 0.0)), (1, ("binary", 0.4))):
        prefix = f"split{split}/{name}"
        _pretrain(tmp_path, prefix, weight, split)
        _transfer(tmp_path, prefix, "finetune", _b_error(split, weight), split)
    write_report(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert (
        "- interval and paired t-test: cannot test: unpaired runs "
        "(baseline on split 0, binary 0.4 on split 1)" in text
    )
    assert "- variance by split and condition: cannot test: unpaired runs" in text
    assert "p = " not in text


def test_empty_broken_and_half_written_runs_are_reported_and_skipped(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 0
    assert "No finished runs were found" in (empty / "report.md").read_text()
    assert "no finished runs under" in capsys.readouterr().err

    root = tmp_path / "runs"
    for name, weight in (("baseline", 0.0), ("binary", 0.4)):
        _pretrain(root, f"split0/{name}", weight, 0)
        _transfer(root, f"split0/{name}", "finetune", _b_error(0, weight), 0)
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text('{"epochs": 3,')
    config = RunConfig(model="m", num_classes=50, epochs=3, side="B", transfer_from="../pretrain")
    RunDir(root / "half-config").write_config(config.to_json())
    _write_run(root, "half-metrics", config, [50.0, 40.0], finish=False)
    (root / "orphan").mkdir()
    (root / "orphan" / "metrics.csv").write_text("epoch,test_error\n1,50\n")
    before = _files(root)
    assert main([str(root), "--format", "json"]) == 0
    err = capsys.readouterr().err
    text = (root / "report.md").read_text()
    reasons = {
        "broken": "config.json does not parse",
        "half-config": "unfinished: no results.json (no metrics.csv)",
        "half-metrics": "unfinished: no results.json (metrics.csv has 2 of 3 epochs)",
        "orphan": "no config.json (holds metrics.csv)",
    }
    for run_id, reason in reasons.items():
        assert f"- `{run_id}`: {reason}" in text
        assert f"skipped {run_id}: {reason}" in err
    assert "4 finished run(s) reported, 4 skipped" in text
    assert "binary 0.4 - baseline" in text
    runs = [f"run-split0_{name}_{step}.png" for name in ("baseline", "binary")
            for step in ("pretrain", "finetune")]  # fmt: skip
    (section,) = json.loads((root / "report.json").read_text())["sections"]
    assert section["id"].startswith("finetune-cifar_densenet_bc_100-")
    figures = [f"fig-{section['id']}-splits.png"]  # two weights: no weight sweep
    assert _files(root) - before == {"report.md", "report.json", ".report-files", *figures, *runs}
    assert all((root / name).read_bytes()[:8] == PNG for name in runs)
    assert f"[curves]({runs[0]})" in text
    assert [s.id for s in gather(root).skipped] == [
        "broken",
        "half-config",
        "half-metrics",
        "orphan",
    ]


def test_missing_source_and_duplicate_runs_are_skipped_with_reasons(tmp_path):
    for copy in ("a", "b"):
        for name, weight in (("baseline", 0.0), ("binary", 0.4)):
            _pretrain(tmp_path, f"{copy}/split0/{name}", weight, 0)
            _transfer(tmp_path, f"{copy}/split0/{name}", "finetune", _b_error(0, weight), 0)
    _transfer(tmp_path, "c/split0/binary", "finetune", 33.0, 0)  # no pretrain beside it
    skipped = {s["id"]: s["reason"] for s in build_report(tmp_path)["skipped"]}
    assert skipped["b/split0/binary/finetune"].startswith(
        "same setting, condition, split and seed as a/split0/binary/finetune"
    )
    assert (
        "'../pretrain' (transfer_from) is not among the finished runs"
        in skipped["c/split0/binary/finetune"]
    )


def test_command_line_checks_its_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "missing")])
    assert stop.value.code == 2
    assert "DIR: expected a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--format", "html"])
    out = tmp_path / "elsewhere"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert (out / "report.md").exists() and not (tmp_path / "report.md").exists()
    run = tmp_path / "a-run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        main([str(run)])  # the report would write into the run
    assert stop.value.code == 2
    assert "is itself a run directory" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


# The aux-labels experiment's conditions: head settings and B's error minus the baseline's.
AUX_KINDS = {
    "binary": ({}, {0: 0.5, 1: 1.5, 2: -0.3}),
    "random20": ({"num_groups": 20}, {0: -1.0, 1: 0.25, 2: 0.1}),
    "coarse": ({"num_groups": 20, "aux_labels": "coarse"}, {0: 2.0, 1: 1.0, 2: 3.5}),
}


def test_every_kind_of_auxiliary_labels_is_paired_with_the_baseline_of_its_split(tmp_path):
    for split in (0, 1, 2):
        _pretrain(tmp_path, f"split{split}/baseline", 0.0, split)
        _transfer(tmp_path, f"split{split}/baseline", "finetune", 30 + SPLIT_EFFECT[split], split)
        for name, (head, gap) in AUX_KINDS.items():
            _pretrain(tmp_path, f"split{split}/{name}", 0.4, split, **head)
            final = 30 + SPLIT_EFFECT[split] + gap[split]
            _transfer(tmp_path, f"split{split}/{name}", "finetune", final, split)
    report = write_report(tmp_path, format="json", run_curves=False)
    (section,) = report["sections"]  # one setting: the kinds differ in their head only
    names = ["baseline", "binary 0.4", "random 20-way 0.4", "coarse 0.4"]
    assert section["conditions"] == names
    assert [(r["split"], r["condition"]) for r in section["per_split"]] == [
        (split, name) for split in (0, 1, 2) for name in names
    ]
    by_kind = {c["condition"]: c for c in section["comparisons"]}
    assert list(by_kind) == names[1:]
    for (folder, (_, gap)), name in zip(AUX_KINDS.items(), names[1:], strict=True):
        comparison = by_kind[name]
        assert [p["split"] for p in comparison["pairs"]] == [0, 1, 2]
        assert [p["condition_run"] for p in comparison["pairs"]] == [
            f"split{s}/{folder}/finetune" for s in (0, 1, 2)
        ]
        differences = [p["difference"] for p in comparison["pairs"]]
        assert differences == pytest.approx([gap[s] for s in (0, 1, 2)], abs=1e-9)
        base = [p["baseline"] for p in comparison["pairs"]]
        other = [p["condition"] for p in comparison["pairs"]]
        test = comparison["test"]
        assert test["mean_difference"] == pytest.approx(statistics.mean(gap.values()), abs=1e-9)
        assert test["t_pvalue"] == pytest.approx(stats.ttest_rel(other, base).pvalue, rel=1e-9)
    # Fig. 4's sweep is of binary weights only (the other kinds are not weights of it), and
    # two weights are the pair the section shows already: no two-point sweep.
    assert section["weight_sweep"] is None
    assert section["heads"] is None
    text = (tmp_path / "report.md").read_text()
    assert "by binary weight" not in text and "against the binary weight" not in text
    # B's runs have no auxiliary head: the settings table lists no settings of one.
    settings = text[text.index("<details>") : text.index("</details>")]
    for name in ("aux_labels", "binary_weight", "num_groups", "num_partitions"):
        assert f"| {name} |" not in settings
    for name in names[1:]:
        assert f"**{name} - baseline**" in text
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [c["condition"] for c in saved["sections"][0]["comparisons"]] == names[1:]
    runs = {r["id"]: r["condition"] for r in saved["runs"]}
    assert runs["split1/coarse/pretrain"] == runs["split1/coarse/finetune"] == "coarse 0.4"
    assert runs["split1/random20/pretrain"] == "random 20-way 0.4"


def test_runs_written_before_the_kinds_existed_share_the_section_of_new_ones(tmp_path):
    """paired's runs from before ``num_groups`` and ``aux_labels`` (their config.json
    lacks both) and the coarse runs added beside them later are one setting, paired."""
    for name, weight, head in (("baseline", 0.0, {}), ("binary", 0.4, {}),
                               ("coarse", 0.4, {"num_groups": 20, "aux_labels": "coarse"})):  # fmt: skip
        _pretrain(tmp_path, f"split0/{name}", weight, 0, **head)
        _transfer(tmp_path, f"split0/{name}", "finetune", 30.0 + weight, 0)
    for name in ("baseline", "binary"):
        for step in ("pretrain", "finetune"):
            path = tmp_path / f"split0/{name}/{step}/config.json"
            config = json.loads(path.read_text())
            del config["num_groups"], config["aux_labels"]
            path.write_text(json.dumps(config))
    (section,) = build_report(tmp_path)["sections"]
    assert section["conditions"] == ["baseline", "binary 0.4", "coarse 0.4"]
    assert [len(c["pairs"]) for c in section["comparisons"]] == [1, 1]


def test_a_kind_without_a_baseline_on_its_split_cannot_be_tested(tmp_path):
    _pretrain(tmp_path, "split6/baseline", 0.0, 6)
    _transfer(tmp_path, "split6/baseline", "finetune", 30.0, 6)
    _pretrain(tmp_path, "split5/coarse", 0.4, 5, num_groups=20, aux_labels="coarse")
    _transfer(tmp_path, "split5/coarse", "finetune", 31.0, 5)
    (comparison,) = build_report(tmp_path)["sections"][0]["comparisons"]
    assert comparison["condition"] == "coarse 0.4" and comparison["pairs"] == []
    assert comparison["test"]["t_note"] == (
        "cannot test: unpaired runs (baseline on split 6, coarse 0.4 on split 5)"
    )


def test_pairs_are_made_by_split_then_by_seed(tmp_path):
    # One run of each condition on split 0 pair whatever their seeds; on split 1, with
    # replications, only runs with the same seed pair.
    runs = [(0, "baseline", 0), (0, "binary", 7), (1, "baseline", 0), (1, "baseline", 1),
            (1, "binary", 1), (1, "binary", 2)]  # fmt: skip
    for split, name, seed in runs:
        prefix = f"split{split}/seed{seed}/{name}"
        weight = 0.4 if name == "binary" else 0.0
        _pretrain(tmp_path, prefix, weight, split, seed=seed)
        _transfer(tmp_path, prefix, "finetune", _b_error(split, weight, seed), split, seed=seed)
    (comparison,) = build_report(tmp_path)["sections"][0]["comparisons"]
    pairs = [(p["baseline_run"], p["condition_run"]) for p in comparison["pairs"]]
    assert pairs == [
        ("split0/seed0/baseline/finetune", "split0/seed7/binary/finetune"),
        ("split1/seed1/baseline/finetune", "split1/seed1/binary/finetune"),
    ]
    assert comparison["unpaired"] == [
        "split1/seed0/baseline/finetune",
        "split1/seed2/binary/finetune",
    ]


def test_left_out_runs_are_counted_once_and_figures_keep_their_names(tmp_path):
    for split in (0, 1):
        for name, weight in (("baseline", 0.0), ("binary", 0.4)):
            _pretrain(tmp_path, f"split{split}/{name}", weight, split)
            _transfer(tmp_path, f"split{split}/{name}", "finetune", 30.0 + weight, split)
    # A B run whose A run is not there: left out, and so not among the runs reported.
    _transfer(tmp_path, "orphan/binary", "finetune", 31.0, 0)
    first = write_report(tmp_path, format="json", run_curves=False)
    assert "orphan/binary/finetune" not in [r["id"] for r in first["runs"]]
    assert [s["id"] for s in first["skipped"]] == ["orphan/binary/finetune"]
    text = (tmp_path / "report.md").read_text()
    assert "8 finished run(s) reported, 1 skipped" in text
    figures = {f["file"] for s in first["sections"] for f in s["figures"]}
    # Another setting beside it: the first keeps its figure names, and its section its id.
    for name, weight in (("baseline", 0.0), ("binary", 0.4)):
        _pretrain(tmp_path, f"long/split0/{name}", weight, 0)
        _transfer(tmp_path, f"long/split0/{name}", "finetune", 33.0, 0, epochs=6)
    second = write_report(tmp_path, format="json", run_curves=False)
    assert figures < {f["file"] for s in second["sections"] for f in s["figures"]}
    # The long runs gone, their figures go with them; nothing else is removed.
    import shutil

    (tmp_path / "notes.png").write_bytes(PNG)
    shutil.rmtree(tmp_path / "long")
    write_report(tmp_path, format="json", run_curves=False)
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert pngs == figures | {"notes.png"}
    assert set((tmp_path / ".report-files").read_text().split()) == {
        "report.md",
        "report.json",
        *figures,
    }


def test_the_runs_table_has_a_curves_column_only_when_curves_are_drawn(tmp_path):
    _pretrain(tmp_path, "split0/baseline", 0.0, 0)
    _transfer(tmp_path, "split0/baseline", "finetune", 30.0, 0)
    write_report(tmp_path, run_curves=False)
    runs = (tmp_path / "report.md").read_text().split("## Runs", 1)[1]
    assert "curves" not in runs
    assert [line.count("|") for line in runs.splitlines() if line.startswith("|")] == [7] * 4
    report = write_report(tmp_path)
    runs = (tmp_path / "report.md").read_text().split("## Runs", 1)[1]
    assert "Training and test curves of every run:" in runs
    for run in report["runs"]:
        assert f"[curves]({run['figure']})" in runs


def test_figures_of_a_report_from_before_the_manifest_are_replaced(tmp_path):
    _pretrain(tmp_path, "split0/baseline", 0.0, 0)
    _transfer(tmp_path, "split0/baseline", "finetune", 30.0, 0)
    (tmp_path / "report.md").write_text("# an earlier report\n")
    (tmp_path / "fig-finetune-1-splits.png").write_bytes(PNG)  # its index-named figure
    (tmp_path / "figure-of-mine.png").write_bytes(PNG)
    report = write_report(tmp_path, run_curves=False)
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {"figure-of-mine.png", *(f["file"] for f in report["sections"][0]["figures"])}


def _lines(figure):
    """Every plotted line of a figure's panels with its label, x, y, marker and style."""
    return [
        (line.get_label(), list(line.get_xdata()), list(line.get_ydata()), line.get_marker(),
         line.get_linestyle())
        for ax in figure.axes for line in ax.get_lines() if not line.get_label().startswith("_")
    ]  # fmt: skip


def test_lines_that_coincide_stay_visible(written):
    _, _, report = written
    freeze = _section(report, "freeze")
    points = FIGURES["points"](freeze)
    per_panel = [ln for ln in _lines(points) if ln[0].startswith("epoch ")]
    # Each epoch's line drawn beside the others, with its own marker and style.
    by_label = {}
    for label, xs, _, marker, style in per_panel:
        by_label.setdefault(label, (xs, marker, style))
    firsts = [xs[0] for xs, _, _ in by_label.values()]
    assert len(set(firsts)) == len(firsts) == len(freeze["at_epochs"])
    assert len({(m, st) for _, m, st in by_label.values()}) == len(by_label)
    curves = FIGURES["curves"](freeze)
    styles = {(label, m, st) for label, _, _, m, st in _lines(curves) if "(n=" in label}
    assert len({(m, st) for _, m, st in styles}) == len(freeze["points"])


def test_the_splits_figure_joins_no_conditions(written):
    _, _, report = written
    figure = FIGURES["splits"](_section(report, "finetune"))
    assert all(not ax.get_lines() for ax in figure.axes)  # markers (scatter) only
    assert all(ax.collections for ax in figure.axes)


def test_run_figure_legends_lie_outside_the_curves(written):
    """Each panel's legend below its axes: inside, it covered the curves it names."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    report = written[2]
    run = next(r for r in report["runs"] if r["id"].endswith("binary/pretrain"))

    fig = run_figure(run)
    renderer = FigureCanvasAgg(fig).get_renderer()
    for ax in fig.axes:
        legend, area = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert legend.y1 < area.y0, (legend, area)
        assert fig.bbox.x0 <= legend.x0 and legend.x1 <= fig.bbox.x1 and legend.y0 >= fig.bbox.y0


def test_a_pretraining_with_a_head_plots_its_class_loss_against_the_test_loss(written):
    _, _, report = written
    run = next(r for r in report["runs"] if r["id"] == "weights/split0/w0.4/pretrain")
    lines = {label: ys for label, _, ys, _, _ in _lines(run_figure(run))}
    assert lines["train, class term"] == pytest.approx(run["curves"]["train_main_loss"])
    assert lines["train, total with the auxiliary term"] == pytest.approx(
        run["curves"]["train_loss"]
    )
    assert lines["test"] == pytest.approx(run["curves"]["test_loss"])  # the loss panel's


def test_rank_correlation_is_scipys_with_a_seeded_bootstrap():
    from scipy import stats as scipy_stats

    from auxtransfer.report.stats import rank_correlation

    x = [0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.5]
    y = [30.0, 28.0, 29.5, 25.0, 24.0, 31.0, 27.0]
    found = rank_correlation(x, y)
    assert found.kendall == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
    assert found.spearman == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert found.kendall_ci[0] <= found.kendall <= found.kendall_ci[1] <= 1
    assert found.spearman < -0.9 and found.spearman_ci[1] < 0
    assert rank_correlation(x, y) == found  # seeded
    assert rank_correlation([1.0, 2.0], [3.0, 4.0]).note.startswith("cannot test: 2 run(s)")


def _smoke_sweep(out, *flags):
    """``out`` after the DenseNet example's smoke sweep with ``flags``, in a process of its own."""
    import os
    import subprocess
    import sys

    example = Path(__file__).resolve().parents[1] / "examples" / "cifar100_densenet.py"
    done = subprocess.run(
        [sys.executable, str(example), "--smoke", "--device", "cpu", *flags, "--out", str(out)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def test_the_report_sets_the_scores_beside_b_error(tmp_path):
    """The smoke paired sweep on three splits: every transfer run's scores.json, per split
    and condition in report.md and report.json, and each score's rank correlation."""
    out = _smoke_sweep(tmp_path / "runs", "--splits", "3")
    report = write_report(out, tmp_path / "report", format="json", run_curves=False)
    (section,) = report["sections"]
    scores = section["scores"]
    assert [(r["split"], r["condition"]) for r in scores["rows"]] == [
        (s, c) for s in (0, 1, 2) for c in ("baseline", "binary 0.4")
    ]
    saved = json.loads((out / "split1/binary/finetune/scores.json").read_text())
    row = next(r for r in scores["rows"] if (r["split"], r["condition"]) == (1, "binary 0.4"))
    assert row["logme"] == pytest.approx(saved["logme"]) and row["nce"] == pytest.approx(
        saved["nce"]
    )
    for name in ("logme", "hscore", "leep", "nce"):
        assert scores["correlations"][name]["n"] == 6
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### Transferability scores, measured before training on B" in text
    on_disk = json.loads((tmp_path / "report" / "report.json").read_text())
    assert on_disk["sections"][0]["scores"]["rows"][0]["logme"] == pytest.approx(
        scores["rows"][0]["logme"]
    )


def test_a_freeze_sweep_reports_as_logme_where_each_point_ends(tmp_path):
    out = _smoke_sweep(tmp_path / "runs", "--experiment", "freeze")
    report = build_report(out)
    (section,) = report["sections"]
    profile = {(r["condition"], r["point"]): r for r in section["scores"]["profile"]}
    assert {point for _, point in profile} == {"0", "2.1", "3"}
    for condition, run in (("baseline", "split0/baseline"), ("binary 0.4", "split0/binary")):
        layers = json.loads((out / f"{run}/freeze-2.1/scores.json").read_text())["layers"]
        assert profile[(condition, "2.1")]["a_logme"] == pytest.approx(layers["2.1"])
        assert profile[(condition, "3")]["a_logme"] == pytest.approx(layers["3.1"])
        assert profile[(condition, "0")]["a_logme"] is None


def test_the_papers_table_1_values_stand_only_beside_its_own_setting(tmp_path, written):
    """A long tail of 60 images per class on another network gets no paper column."""
    for split in (0, 1):
        for name, weight in (("baseline", 0.0), ("binary", 0.4)):
            prefix = f"split{split}/{name}"
            _pretrain(tmp_path, prefix, weight, split)
            _transfer(tmp_path, prefix, "longtail", 30.0 + weight, split, per_class=60)
    for config in tmp_path.rglob("config.json"):
        config.write_text(config.read_text().replace("cifar_densenet_bc_100", "digits_cnn"))
    write_report(tmp_path, run_curves=False)
    text = (tmp_path / "report.md").read_text()
    assert "over replications:" in text and "| mean | sd |\n" in text
    assert "paper" not in text.split("Table 1")[1].split("###")[0]
    theirs = (written[0] / "report.md").read_text()  # the paper's own setting: beside it
    assert "with the paper's value beside its splits 1 and 2" in theirs
    assert "Baseline 1 31.81" in theirs
