#!/usr/bin/env bash
# The GPU checks, as one script for a machine with a CUDA device and PyTorch, timm and
# torchvision already installed (no network needed): the CUDA tests, then the benchmarks.
# The benchmark table is saved under $RESULTS (default runs/benchmarks).
#   bash benchmarks/gpu.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
results="${RESULTS:-runs/benchmarks}"
mkdir -p "$results"
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$python" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"

echo "::: CUDA tests"
"$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py || status=1

echo "::: core tests on this machine's torch"
"$python" -m pytest -q -p no:cacheprovider -x tests/test_partition.py tests/test_losses.py tests/test_heads.py tests/test_data.py \
    tests/test_layers.py tests/test_freezing.py tests/test_optim.py || status=1

echo "::: benchmark table"
"$python" benchmarks/run.py --device cuda --json "$results/run.json" | tee "$results/run.txt" || status=1

echo "::: benchmarks"
"$python" benchmarks/head_overhead.py --device cuda --model resnet18 --size 32 --batch 128 --amp || status=1
"$python" benchmarks/head_overhead.py --device cuda --model resnet50 --size 224 --batch 64 --amp || status=1
"$python" benchmarks/head_overhead.py --device cuda --model resnet50 --size 224 --batch 64 --amp --compile || status=1
"$python" benchmarks/freeze_speed.py --device cuda --batch 64 || status=1
"$python" benchmarks/freeze_speed.py --device cuda --batch 64 --amp || status=1
exit "$status"
