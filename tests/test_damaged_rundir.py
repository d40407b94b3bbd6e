"""Damaged run folders: each refused in one line that names the file and a remedy that
works, with nothing rewritten; the remedy then completes the sweep."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cifar100_densenet.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PRETRAIN = "split0/baseline/pretrain"


def _example(out, *args):
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--smoke", "--device", "cpu", "--out", str(out), *args],
        capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The smoke paired sweep, finished."""
    out = tmp_path_factory.mktemp("swept") / "runs"
    done = _example(out)
    assert done.returncode == 0, done.stderr
    return out


def _copy(swept, tmp_path):
    out = tmp_path / "runs"
    shutil.copytree(swept, out)
    return out


def _files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _refused(out, *args):
    """The example's one-line refusal, with every file as it was."""
    before = _files(out)
    done = _example(out, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert _files(out) == before
    return line


def test_a_run_without_its_config_is_refused_naming_the_file(swept, tmp_path):
    out = _copy(swept, tmp_path)
    (out / PRETRAIN / "config.json").unlink()
    line = _refused(out)
    assert f"{out / PRETRAIN / 'config.json'}" in line and "--run" not in line, line
    assert "move the run directory away" in line, line
    shutil.move(out / PRETRAIN, tmp_path / "moved")
    done = _example(out)
    assert done.returncode == 0, done.stderr
    assert (out / PRETRAIN / "results.json").exists()


def test_a_config_that_is_not_json_is_refused_naming_the_file_not_run(swept, tmp_path):
    out = _copy(swept, tmp_path)
    (out / PRETRAIN / "config.json").write_text("{not json")
    line = _refused(out)
    assert "argument --out" in line and "--run" not in line, line
    assert f"{out / PRETRAIN / 'config.json'}" in line and "does not parse" in line, line
    shutil.move(out / PRETRAIN, tmp_path / "moved")
    assert _example(out).returncode == 0


def test_a_truncated_checkpoint_is_refused_with_a_remedy_that_works(swept, tmp_path):
    out = _copy(swept, tmp_path)
    run = out / PRETRAIN
    (run / "results.json").unlink()  # unfinished: it resumes from last.pt
    last = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(last[: len(last) // 2])
    line = _refused(out)
    assert f"{run / 'last.pt'}" in line and "damaged" in line, line
    assert "delete its last.pt and metrics.csv" in line, line
    (run / "last.pt").unlink()
    (run / "metrics.csv").unlink()
    done = _example(out)
    assert done.returncode == 0, done.stderr
    assert (run / "results.json").exists()


def test_a_finished_run_without_the_weights_a_transfer_needs(swept, tmp_path):
    out = _copy(swept, tmp_path)
    (out / PRETRAIN / "best.pt").unlink()
    shutil.rmtree(out / "split0/baseline/finetune")  # a transfer still to run from it
    line = _refused(out)
    assert f"{out / PRETRAIN / 'best.pt'}" in line and "has finished" in line, line
    assert "is the run finished?" not in line and "move the run directory away" in line, line
    shutil.move(out / PRETRAIN, tmp_path / "moved")
    done = _example(out)
    assert done.returncode == 0, done.stderr
    assert (out / "split0/baseline/finetune/results.json").exists()


def test_load_backbone_says_a_finished_run_lost_its_weights(swept, tmp_path):
    from auxtransfer.experiments.transfer import load_backbone

    out = _copy(swept, tmp_path)
    (out / PRETRAIN / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"best\.pt .* has finished \(results\.json\)"):
        load_backbone(out / PRETRAIN)
    (out / PRETRAIN / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="is the run finished"):
        load_backbone(out / PRETRAIN)
