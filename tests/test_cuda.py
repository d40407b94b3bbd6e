"""The checks that need a CUDA device (benchmarks/cuda_checks.py, which benchmarks/gpu.sh
runs without pytest), under pytest; collected only where a GPU is present (conftest.py)."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.cuda

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_checks.py"
_spec = importlib.util.spec_from_file_location("cuda_checks", _PATH)
assert _spec is not None and _spec.loader is not None
cuda_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_checks)


@pytest.mark.parametrize("name", list(cuda_checks.CHECKS))
def test_cuda_check(name):
    cuda_checks.CHECKS[name]()
