"""benchmarks/run.py: the table runs end to end and saves what it printed.

Timings are not checked (a test must not assert speed on a shared machine): only that
every ratio and rate was measured and is a positive finite number, that goals are judged
where they apply, that the harness times each work side by side in seconds a call, that
the flags pick the rows and the steps' model, and that a concurrent run whose worker dies
is reported as failed.
"""

import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
JUDGED = {"aux_step", "relabel_epoch", "frozen_step", "batches", "loop_vs_reference", "logme"}
# The tiny preset measures its tiny DenseNet-BC eager and through GraphTrainer on the CPU
# too; --jobs-counts 1 2 adds the concurrent runs. These ratios have no goal.
INFORMATION = {"graph_vs_eager_densenet", "jobs2_vs_jobs1", "features_vs_forward"}
RATIOS = JUDGED | INFORMATION
RATES = {
    "forward",
    "features",
    "plain_step",
    "head_step",
    "full_step",
    "frozen_model_step",
    "device_batches",
    "pil_dataloader",
    "pil_dataloader_0_workers",
    "our_loop",
    "reference_loop",
    "cifar_densenet_bc_100_b16_eager",
    "cifar_densenet_bc_100_b16_graph",
    "jobs1",
    "jobs2",
}
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
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
    result = _run(
        "--quick", "--tiny", "--workers", "0", "--jobs-counts", "1", "2", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@pytest.fixture(scope="module")
def bench():
    """benchmarks/run.py imported as the module ``run``: the name its spawned workers import
    it by (they get this process's sys.path)."""
    saved = sys.path[:]
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("run")
    finally:
        sys.path[:] = saved
        sys.modules.pop("run", None)


def test_json_has_every_ratio_and_rate_as_positive_finite_numbers(tiny_run):
    data, _ = tiny_run
    assert data["device"].startswith("CPU")
    assert data["preset"] == "tiny"
    assert set(data["ratios"]) == RATIOS
    assert set(data["images_per_s"]) == RATES
    assert data["failed"] == {}
    for value in [*data["ratios"].values(), *data["images_per_s"].values()]:
        assert isinstance(value, float)
        assert math.isfinite(value)
        assert value > 0


def test_goals_are_judged_where_they_apply(tiny_run):
    data, _ = tiny_run
    assert set(data["goals"]) == RATIOS
    # On the CPU every goal but the GPU one is judged; the GPU one is shown, not judged.
    assert data["goals"]["loop_vs_reference"]["holds"] is None
    for name in JUDGED - {"loop_vs_reference"}:
        goal = data["goals"][name]
        bound = float(goal["goal"].split()[1].rstrip("x"))
        value = data["ratios"][name]
        expected = value <= bound if goal["goal"].startswith("<=") else value >= bound
        assert goal["holds"] is expected, (name, goal, value)
    for name in INFORMATION:
        assert data["goals"][name] == {"goal": None, "holds": None}, name
    assert "jobs4_vs_jobs1" not in data["ratios"]  # only with a jobs4
    assert data["mps"] is None  # MPS is a question on CUDA only


def test_printed_table_matches_the_json(tiny_run):
    data, table = tiny_run
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    for name, value in data["ratios"].items():
        assert rows[name][1] == f"{value:.3f}", name
    for name, value in data["images_per_s"].items():
        assert rows[name][1] == f"{value:,.0f}", name
    assert "failed" not in table.lower()


def test_the_harness_times_each_work_side_by_side_in_seconds_a_call(bench, monkeypatch):
    calls = []

    def work(name, seconds=0.0):
        def call():
            calls.append(name)
            time.sleep(seconds)

        return call

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # what Timer must keep
    set_threads = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    slow, fast = bench.interleaved([work("a", 0.02), work("b")], 3)
    # Each measurement: an untimed call, then a timed one; every other round reversed.
    assert "".join(calls) == "aabb" + "bbaa" + "aabb"
    assert set(set_threads) == {3}, set_threads
    assert slow >= 0.02  # the seconds of one call
    assert fast > 0


def test_only_some_rows_with_the_steps_model_size_and_batch_of_the_flags(bench, tmp_path):
    out = tmp_path / "steps.json"
    args = ["--tiny", "--only", "frozen_step", "aux_step", "--model", bench.TV_DENSENET]
    result = bench.main([*args, "--size", "40", "--batch", "4", "--until", "1", "--json", str(out)])
    assert json.loads(out.read_text())["ratios"] == result["ratios"]
    assert list(result["ratios"]) == ["aux_step", "frozen_step"]  # the table's order
    assert list(result["images_per_s"]) == [
        "plain_step",
        "head_step",
        "full_step",
        "frozen_model_step",
    ]
    assert all(value > 0 for value in result["ratios"].values())
    setting = result["settings"]["frozen_step"]
    assert setting.startswith(f"{bench.TV_DENSENET}, 40 px, batch 4, fp32, median of 3 steps")
    assert setting.endswith("frozen through '1'")


def test_goals_are_judged_where_they_apply_and_concurrent_runs_only_inform(bench):
    assert bench.judged("loop_vs_reference", 12.0, CPU) == {"goal": ">= 10x on GPU", "holds": None}
    assert bench.judged("loop_vs_reference", 12.0, CUDA)["holds"] is True
    assert bench.judged("loop_vs_reference", 9.0, CUDA)["holds"] is False
    # Failed: not judged on the CPU, does not hold on the GPU.
    assert bench.judged("loop_vs_reference", None, CPU)["holds"] is None
    assert bench.judged("loop_vs_reference", None, CUDA)["holds"] is False
    # Without MPS, processes on one GPU take turns: a goal the design cannot reach is none.
    for count in (2, 4, 8):
        assert bench.judged(f"jobs{count}_vs_jobs1", 3.0, CUDA) == {"goal": None, "holds": None}


def test_concurrent_runs_are_measured_on_the_cpu_only_when_asked(bench):
    assert bench.parse_args(["--tiny"]).jobs_counts == []
    assert bench.parse_args(["--jobs-counts", "4", "1", "4"]).jobs_counts == [1, 4]
    assert bench.parse_args(["--jobs-counts"]).jobs_counts == []


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        # Ends at once without reporting, as a crash would (os._exit(70)).
        ("exit", "worker 1 ended with exit code 70 without reporting"),
        # Raises: the worker reports its traceback.
        ("raise", "worker 1: RuntimeError: worker 1 raised on purpose"),
    ],
    ids=["exit", "raise"],
)
def test_a_crashed_worker_is_reported_as_failed_without_hanging(bench, how, reason):
    # Worker 1 fails; worker 0 is released from the barrier and stopped. The measurement
    # ends failed, not hung.
    log: list[str] = []
    sizes = bench.sizes_for("tiny", CPU)
    rates, ratios, failed = bench.measure_jobs(sizes, CPU, False, [2], log.append, (1, how))
    assert (rates, ratios) == ({}, {})
    assert list(failed) == ["jobs2"]
    assert failed["jobs2"].startswith(reason), failed
    assert log[-1].endswith(f"jobs2 failed: {failed['jobs2']}"), log
    if how == "raise":
        assert any("Traceback" in line for line in log), log


def test_a_failed_entry_is_marked_in_the_table_and_fails_its_ratio(bench, monkeypatch):
    def run_jobs(count, *args, **kwargs):
        return "worker 1: RuntimeError: boom" if count == 2 else 100.0

    monkeypatch.setattr(bench, "run_jobs", run_jobs)
    sizes = bench.sizes_for("tiny", CPU)
    rates, ratios, failed = bench.measure_jobs(sizes, CUDA, True, [1, 2, 4], lambda _: None)
    assert rates == {"jobs1": 100.0, "jobs4": 100.0}
    assert ratios == {"jobs4_vs_jobs1": 1.0}
    assert failed == {"jobs2": "worker 1: RuntimeError: boom", "jobs2_vs_jobs1": "jobs2 failed"}
    names = ["jobs2_vs_jobs1", "jobs4_vs_jobs1"]
    table = bench.format_table(
        {
            "device": "GPU",
            "torch": torch.__version__,
            "date": "today",
            "preset": "tiny",
            "ratios": ratios,
            "images_per_s": rates,
            "settings": {name: "setting" for name in names},
            "goals": {name: bench.judged(name, ratios.get(name), CUDA) for name in names},
            "failed": failed,
            "seconds": 1.0,
        }
    )
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert rows["jobs2_vs_jobs1"][1:3] == ["failed", "-"]
    assert rows["jobs4_vs_jobs1"][1:4] == ["1.000", "-", "-"]
    assert rows["jobs2"][1:3] == ["failed", "worker"]
    assert rows["jobs1"][1] == "100"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--device", "tpu"], "--device"),
        (["--workers", "-1"], "--workers"),
        (["--batch", "0"], "--batch"),
        (["--model", "no_such_model"], "--model"),
        (["--only", "nothing"], "--only"),
        (["--jobs-counts", "1", "0"], "--jobs-counts"),
        (["--json", "no/such/folder/bench.json"], "--json"),
    ],
)
def test_bad_flags_end_with_one_line_before_measuring(bench, capsys, args, flag):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--tiny", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("run.py: error: argument " + flag), err[-2000:]
    assert out == ""


def test_the_logme_reference_of_the_table_agrees_with_probe(bench):
    """The numpy LogME the table times ours against computes the same score."""
    from auxtransfer.probe import logme

    generator = torch.Generator().manual_seed(1)
    for n, d in ((300, 20), (40, 60)):
        f = torch.randn(n, d, generator=generator, dtype=torch.float64)
        y = torch.arange(n) % 4
        f[:, :4] += torch.nn.functional.one_hot(y, 4) * 3
        assert bench.logme_numpy(f.numpy(), y.numpy()) == pytest.approx(logme(f, y), rel=1e-9)
