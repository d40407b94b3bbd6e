import subprocess
import sys
from pathlib import Path

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run the long opt-in sweeps")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The sweeps (every timm model, ...) are opt-in, and the CUDA checks need a GPU: leave
    # them out of the run entirely rather than reporting each as skipped.
    left_out = set()
    if not config.getoption("--run-slow"):
        left_out.add("slow")
    if not torch.cuda.is_available():
        left_out.add("cuda")
    deselected = [item for item in items if left_out.intersection(item.keywords)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not left_out.intersection(item.keywords)]


@pytest.fixture
def regnet_on_meta(monkeypatch: pytest.MonkeyPatch) -> None:
    # RegNet computes its stage widths with tensor ops while being built; run just that
    # part on the CPU so the rest of the model can be built on the meta device.
    from torchvision.models import regnet

    build = regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return build(cls, *args, **kwargs)

    monkeypatch.setattr(regnet.BlockParams, "from_init_params", classmethod(on_cpu))


@pytest.fixture
def torchrun():
    """Run a worker script of tests/ under torchrun with two CPU processes (gloo)."""

    def run(worker: str, out: Path) -> None:
        script = Path(__file__).with_name(worker)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(out),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]

    return run
