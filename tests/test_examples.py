import json
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_train_cifar_end_to_end_on_synthetic_data(tmp_path):
    run = tmp_path / "run"
    command = [
        sys.executable, str(EXAMPLES / "train_cifar.py"), "--synthetic", "120", "--epochs", "2", "--milestones", "2",
        "--batch-size", "20", "--run-dir", str(run), "--model", "cifar_wrn_28_10",
        "--model-kwargs", '{"depth": 10, "widen_factor": 1}', "--classes", "B", "--binary-weight", "0.4",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final test error" in result.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["num_classes"] == 50
    assert config["phase"] == "pretrain-B-split0"
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    # A second call refuses to overwrite the finished run.
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0
    assert "holds a finished run" in again.stderr
