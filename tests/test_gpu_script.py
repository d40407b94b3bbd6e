"""benchmarks/gpu.sh on a machine without a GPU and without the test or report
dependencies: every CUDA step says "no GPU", and the script exits 0."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a GPU machine with torch, timm and torchvision only lacks.
ABSENT = ("pytest", "scipy", "matplotlib", "transformers", "lightning", "submitit")


def _without(tmp_path, names=ABSENT):
    """A folder that, first on PYTHONPATH, makes importing each of ``names`` fail."""
    shim = tmp_path / "shim"
    shim.mkdir()
    for name in names:
        (shim / f"{name}.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return shim


def test_gpu_script_without_a_gpu_says_so_and_exits_0(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "RESULTS": str(results), "PYTHONPATH": str(_without(tmp_path)),
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), sys.executable],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for name in ("cuda_checks", "parity", "benchmark_table", "aux_labels_jobs4", "projection"):
        assert f"::: {name}: no GPU, skipped" in lines
        assert (results / f"{name}.txt").read_text().strip() == f"::: {name}: no GPU, skipped"
    assert lines[-1].startswith("::: no GPU: nothing was measured or checked on CUDA")
    preflight = json.loads((results / "preflight.json").read_text())
    assert preflight["cuda"] is False and preflight["device"] is None
    assert "no GPU (torch sees no CUDA device)" in (results / "machine.txt").read_text()


def test_the_gpu_scripts_need_nothing_beyond_torch_timm_and_torchvision(tmp_path):
    """Each script the GPU run calls starts (its --help) with the other packages absent;
    the checks and the parity comparison run and say "no GPU"."""
    env = {**os.environ, "PYTHONPATH": f"{_without(tmp_path)}{os.pathsep}{ROOT / 'src'}",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    scripts = ["preflight.py", "cuda_checks.py", "parity.py", "run.py", "projection.py"]
    for script in scripts:
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (script, done.stderr[-2000:])
    for script, said in (("cuda_checks.py", "no GPU: nothing checked"),
                         ("parity.py", "no GPU: nothing compared")):  # fmt: skip
        args = [sys.executable, str(ROOT / "benchmarks" / script)]
        if script == "parity.py":
            args += ["--device", "cuda"]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and said in done.stdout, done.stdout + done.stderr[-2000:]


def test_the_check_runner_reports_each_check_and_goes_on(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "cuda_checks", ROOT / "benchmarks" / "cuda_checks.py"
    )
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    assert "replays_follow_the_same_steps_eagerly" in checks.CHECKS
    assert "a_replayed_stale_batch_is_caught" in checks.CHECKS

    def bad():
        raise AssertionError("weights apart")

    monkeypatch.setattr(checks, "CHECKS", {"bad": bad, "ok": lambda: None})
    lines, saved = [], []
    outcomes = checks.run([], log=lines.append, done=lambda o: saved.append(dict(o)))
    assert [(n, o["passed"], o["error"]) for n, o in outcomes.items()] == [
        ("bad", False, "AssertionError: weights apart"),
        ("ok", True, None),
    ]
    assert [line.split()[:2] for line in lines] == [["FAIL", "bad"], ["PASS", "ok"]]
    assert [list(s) for s in saved] == [["bad"], ["bad", "ok"]]  # saved after every check
    with pytest.raises(ValueError, match=r"but got \['nope'\]"):
        checks.run(["nope"])


@pytest.mark.parametrize("script", ["run.py"])
def test_a_gpu_benchmark_without_a_gpu_is_one_line(script):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--device", "cuda"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"{script}: error: argument --device: cuda was asked for, but torch sees no CUDA device"
    )
    assert "Traceback" not in done.stderr
