"""benchmarks/run.py: the table runs end to end and saves what it printed.

Timings are not checked (a test must not assert speed on a shared machine): only that
every ratio and rate was measured and is a positive finite number.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
RATIOS = {"aux_step", "relabel_epoch", "frozen_step", "batches", "loop_vs_reference"}
RATES = {"plain_step", "device_batches", "pil_dataloader", "our_loop", "reference_loop"}


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    result = _run("--quick", "--tiny", "--workers", "0", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_json_has_every_ratio_and_rate_as_positive_finite_numbers(tiny_run):
    data, _ = tiny_run
    assert data["device"].startswith("CPU")
    assert data["preset"] == "tiny"
    assert set(data["ratios"]) == RATIOS
    assert set(data["images_per_s"]) == RATES
    for value in [*data["ratios"].values(), *data["images_per_s"].values()]:
        assert isinstance(value, float)
        assert math.isfinite(value)
        assert value > 0


def test_goals_are_judged_where_they_apply(tiny_run):
    data, _ = tiny_run
    assert set(data["goals"]) == RATIOS
    # On the CPU every goal but the GPU one is judged; the GPU one is shown, not judged.
    assert data["goals"]["loop_vs_reference"]["holds"] is None
    for name in RATIOS - {"loop_vs_reference"}:
        goal = data["goals"][name]
        bound = float(goal["goal"].split()[1].rstrip("x"))
        value = data["ratios"][name]
        expected = value <= bound if goal["goal"].startswith("<=") else value >= bound
        assert goal["holds"] is expected, (name, goal, value)


def test_printed_table_matches_the_json(tiny_run):
    data, table = tiny_run
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    for name, value in data["ratios"].items():
        assert rows[name][1] == f"{value:.3f}", name
    for name, value in data["images_per_s"].items():
        assert rows[name][1] == f"{value:,.0f}", name


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--device", "tpu"], "--device"),
        (["--workers", "-1"], "--workers"),
        (["--json", "no/such/folder/bench.json"], "--json"),
    ],
)
def test_bad_flags_end_with_one_line_before_measuring(args, flag):
    result = _run("--tiny", *args, timeout=120)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("run.py: error: " + flag), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
