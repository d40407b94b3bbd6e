"""Run folders written by the released code (commit 0e334e2, tests/fixtures/rundir_0e334e2:
the DenseNet example's smoke freeze plan, stopped after 5 epochs) still work with this code:
``--list`` plans the same runs, calling the same command again skips the finished runs,
resumes the unfinished one exactly where it stopped and runs the rest, and the report reads
them all."""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar100_densenet.py"
FIXTURE = ROOT / "tests" / "fixtures" / "rundir_0e334e2"
# One thread per process: the runs are tiny, and it keeps them bit-for-bit reproducible.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The flags of the command that wrote the fixture (its README), less --out and --stop-after.
# 0e334e2's --bn defaulted to "update" (the fixture's runs say so in config.json): should the
# default change, add "--bn", "update" here so that the command means the same runs.
FLAGS = ["--smoke", "--experiment", "freeze", "--device", "cpu"]

# The fixture's runs by state (see its README).
FINISHED = ["split0/baseline/pretrain", "split0/binary/pretrain"]
UNFINISHED = "split0/baseline/freeze-0"
NOT_STARTED = [
    "split0/baseline/freeze-2.1",
    "split0/baseline/freeze-3",
    "split0/binary/freeze-0",
    "split0/binary/freeze-2.1",
    "split0/binary/freeze-3",
]
# The files of a finished run that skipping it leaves byte for byte.
KEPT = ["results.json", "metrics.csv", "best.pt"]


def _plan():
    """The run ids 0e334e2's ``--list`` printed for the fixture's command."""
    return (FIXTURE / "list.txt").read_text().splitlines()


def _example(*args):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *FLAGS, *args], capture_output=True, text=True,
        timeout=300, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metrics(run_dir):
    """metrics.csv's rows, every column but ``seconds`` (the wall time of the epoch)."""
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows and all("seconds" in row for row in rows), rows
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _copy_fixture(folder):
    out = folder / "out"
    shutil.copytree(FIXTURE / "out", out)
    return out


def test_the_fixture_is_as_its_readme_says():
    out = FIXTURE / "out"
    assert _plan() == [*FINISHED, UNFINISHED, *NOT_STARTED]
    for run in FINISHED:
        assert all((out / run / name).is_file() for name in [*KEPT, "last.pt", "config.json"])
        assert len(_metrics(out / run)) == 2
    assert (out / UNFINISHED / "last.pt").is_file()
    assert not (out / UNFINISHED / "results.json").exists()
    assert len(_metrics(out / UNFINISHED)) == 1
    assert not any((out / run).exists() for run in NOT_STARTED)
    assert {p.relative_to(out).parent.as_posix() for p in out.rglob("config.json")} == {
        *FINISHED,
        UNFINISHED,
    }


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    """A copy of the fixture, the same command called on it again (no --stop-after): the
    copy, what the call printed, and the files of the fixture it should have kept."""
    out = _copy_fixture(tmp_path_factory.mktemp("rerun"))
    kept = {(run, name): (out / run / name).read_bytes() for run in FINISHED for name in KEPT}
    metrics_before = (out / UNFINISHED / "metrics.csv").read_bytes()
    result = _example("--out", str(out))
    return out, result.stdout, kept, metrics_before


def test_list_plans_the_fixtures_runs(tmp_path):
    out = _copy_fixture(tmp_path)
    result = _example("--out", str(out), "--list")
    assert result.stdout.splitlines() == _plan()


def test_calling_again_skips_resumes_and_runs_the_rest(rerun):
    out, stdout, kept, metrics_before = rerun
    for (run, name), content in kept.items():
        assert (out / run / name).read_bytes() == content, f"{run}/{name} changed"
    # The unfinished run went on from its last finished epoch: its first row is kept as
    # written (a run trained again from scratch rewrites it, with another time), and it
    # said it resumed.
    metrics = (out / UNFINISHED / "metrics.csv").read_bytes()
    assert metrics.startswith(metrics_before) and len(metrics) > len(metrics_before)
    said = [line for line in stdout.splitlines() if UNFINISHED in line]
    assert any("resum" in line.lower() for line in said), stdout
    for run in _plan():
        assert (out / run / "results.json").is_file(), f"{run} has no results.json"
        assert len(_metrics(out / run)) == 2, run
        assert json.loads((out / run / "results.json").read_text())["epochs"] == 2, run


def test_the_resumed_run_equals_one_trained_in_one_go(rerun, tmp_path):
    """The unfinished run, resumed by this code, ends where the same run trained from its
    start in one call (from the same pre-training) does."""
    out = rerun[0]
    fresh = tmp_path / "fresh"
    pretrain = "split0/baseline/pretrain"  # the run UNFINISHED transfers from
    shutil.copytree(FIXTURE / "out" / pretrain, fresh / pretrain)
    _example("--out", str(fresh), "--run", UNFINISHED)
    # The fixture's first epoch was trained on another machine, whose CPU kernels may round
    # the last bits differently: equal to 1e-6 (a resume that lost the optimizer, the
    # schedule or the random state is off by far more).
    resumed, whole = _metrics(out / UNFINISHED), _metrics(fresh / UNFINISHED)
    assert [sorted(row) for row in resumed] == [sorted(row) for row in whole]
    for row, expected in zip(resumed, whole, strict=True):
        numbers = [k for k, v in expected.items() if _is_number(v)]
        assert {k: v for k, v in row.items() if k not in numbers} == {
            k: v for k, v in expected.items() if k not in numbers
        }
        assert [float(row[k]) for k in numbers] == pytest.approx(
            [float(expected[k]) for k in numbers], rel=1e-6
        )
    results = [json.loads((o / UNFINISHED / "results.json").read_text()) for o in (out, fresh)]
    assert results[0] == pytest.approx(results[1], rel=1e-6)


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_the_report_reads_every_run(rerun, tmp_path):
    out, report = rerun[0], tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "auxtransfer.report", str(out), "--out", str(report)],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (report / "report.md").read_text()
    conditions = set()
    for run in _plan():
        condition = json.loads((out / run / "config.json").read_text())["condition"]
        conditions.add(condition)
        # The run's row in the table of runs names its condition.
        row = rf"^\| `{re.escape(run)}`.*\| {re.escape(condition)}\b"
        assert re.search(row, text, re.M), f"no row for {run} ({condition})"
    assert conditions == {"baseline", "binary"}
    points = {run.rsplit("freeze-", 1)[1] for run in _plan() if "/freeze-" in run}
    assert points == {"0", "2.1", "3"}
    for point in points:
        assert re.search(rf"^\| `{re.escape(point)}` \|", text, re.M), f"no freeze point {point}"
