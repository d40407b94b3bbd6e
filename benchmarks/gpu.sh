#!/usr/bin/env bash
# The GPU checks as one script, for a machine with PyTorch, timm and torchvision and
# nothing else (no pytest, no network), run from a copy of the repository:
#   0. preflight: the card, driver, torch, triton, a C compiler, MPS running or not;
#   1. cuda_checks: the CUDA checks (benchmarks/cuda_checks.py, what tests/test_cuda.py runs);
#   2. parity: DenseNet-BC-100 and WRN-28-10 graphed against eager, bf16 + channels-last;
#   3. benchmark_table: benchmarks/run.py on CUDA (ratios, images/s, concurrent runs);
#   4. aux_labels_jobs4: the DenseNet example's aux-labels smoke sweep with --jobs 4 (its
#      four pre-trainings at once);
#   5. projection: the paper's experiments at the measured speeds.
# Each step has its own time limit (420 s in all) and writes its own files under
# $RESULTS (default runs/benchmarks) as it ends: a killed step loses only itself. Without
# a GPU every CUDA step says "no GPU", and the script exits 0 having checked nothing.
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
    local why=""
    [ "$code" -eq 124 ] && why=" (killed at its limit)"
    echo "::: $name: exit $code after $((SECONDS - begin)) s$why" | tee -a "$results/$name.txt"
    [ "$code" -eq 0 ] || status=1
}

step preflight 20 "$python" benchmarks/preflight.py --json "$results/preflight.json"
{ date -u +%Y-%m-%dT%H:%MZ; cat "$results/preflight.txt"; } > "$results/machine.txt"
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    for name in cuda_checks parity benchmark_table aux_labels_jobs4 projection; do
        echo "::: $name: no GPU, skipped" | tee "$results/$name.txt"
    done
    echo "::: no GPU: nothing was measured or checked on CUDA; done in $((SECONDS - started)) s"
    exit 0
fi

step cuda_checks 130 "$python" benchmarks/cuda_checks.py --json "$results/cuda_checks.json"
step parity 60 "$python" benchmarks/parity.py --device cuda --json "$results/parity.json"
step benchmark_table 150 "$python" benchmarks/run.py --device cuda --json "$results/run.json"
rm -rf "$results/aux_labels"
step aux_labels_jobs4 45 "$python" examples/cifar100_densenet.py --smoke --experiment aux-labels \
    --device cuda --jobs 4 --out "$results/aux_labels"
if [ -s "$results/run.json" ]; then
    step projection 15 "$python" benchmarks/projection.py --rates "$results/run.json"
else
    echo "::: projection: no benchmark table (benchmark_table failed), skipped" | tee "$results/projection.txt"
fi
echo "::: done in $((SECONDS - started)) s, status $status"
exit "$status"
