#!/usr/bin/env bash
# The GPU checks as one script, for a machine with a CUDA device and PyTorch, timm and
# torchvision already installed (no network needed), under 8 minutes in all:
#   1. the CUDA tests (captured training steps against the plain loop, bf16, compile);
#   2. the benchmark table on CUDA (benchmarks/run.py: ratios, images/s eager and graphed,
#      concurrent runs);
#   3. a 3-epoch synthetic `paired` sweep of the DenseNet example with --jobs 4;
#   4. the paper's experiments projected at the measured speeds (benchmarks/projection.py).
# Every figure and log goes under $RESULTS (default runs/benchmarks).
#   RESULTS=runs/benchmarks bash benchmarks/gpu.sh [python]
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
results="${RESULTS:-runs/benchmarks}"
mkdir -p "$results"
status=0
started=$SECONDS

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $results/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "::: $name (at most ${limit} s)"
    local begin=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$results/$name.txt"
    local code=${PIPESTATUS[0]}
    echo "::: $name: exit $code after $((SECONDS - begin)) s" | tee -a "$results/$name.txt"
    [ "$code" -eq 0 ] || status=1
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$python" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__)"
    date -u +%Y-%m-%dT%H:%MZ
} | tee "$results/machine.txt"

step cuda_tests 150 "$python" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_graphs.py
step benchmark_table 240 "$python" benchmarks/run.py --device cuda --json "$results/run.json"
rm -rf "$results/paired"
step paired_jobs4 90 "$python" examples/cifar100_densenet.py --smoke --experiment paired \
    --pretrain-epochs 3 --transfer-epochs 3 --jobs 4 --out "$results/paired"
step projection 30 "$python" benchmarks/projection.py --rates "$results/run.json"
echo "::: done in $((SECONDS - started)) s, status $status"
exit "$status"
