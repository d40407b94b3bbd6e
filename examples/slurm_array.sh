#!/bin/bash
# One run of an experiment's plan per SLURM array task.
#
#   slurm_array.sh STEP [example flags ...]
#
# The example is examples/cifar100_densenet.py; EXAMPLE names another
# (EXAMPLE=examples/cifar100_wrn.py, EXAMPLE=examples/imagenet100_densenet121.py). With
# submitit installed, `--launcher submitit` on the example itself does all of this in one
# command (docs/experiments.md).
#
# STEP is "pretrain" (the plan's pre-trainings on A), "transfer" (every other run) or
# "all". Array task i runs the i-th of those ids, in the order `--list` prints them, with
# `--run ID` and the same flags. A transfer needs its pre-training finished: submit the
# pre-trainings as one array and the transfers as a second array that waits for the
# first (a transfer started too early stops at once with the plan's own error, naming the
# pre-training it needs, and writes nothing):
#
#   FLAGS="--experiment paired --data-root data --out runs/paired"
#   pre=$(python examples/cifar100_densenet.py $FLAGS --list | grep -c '/pretrain$')
#   all=$(python examples/cifar100_densenet.py $FLAGS --list | wc -l)
#   first=$(sbatch --parsable --array=0-$((pre - 1)) examples/slurm_array.sh pretrain $FLAGS)
#   sbatch --dependency=afterok:$first --array=0-$((all - pre - 1)) \
#       examples/slurm_array.sh transfer $FLAGS
#
# Submit from the repository root (the job runs in the folder it was submitted from).
# Download CIFAR-100 once beforehand, where there is a network: `python -c "from
# auxtransfer.experiments import load_cifar100; load_cifar100('data', train=True,
# download=True)"`. A task that is rerun skips a finished run and resumes an unfinished one. PYTHON picks the interpreter (default: python); LAUNCH the command that
# trains, e.g. LAUNCH="torchrun --nproc_per_node=4" for 4 GPUs per task (ask for them
# with --gres).
#
#SBATCH --job-name=auxtransfer
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out

set -euo pipefail

step=${1:?usage: slurm_array.sh pretrain|transfer|all [example flags ...]}
shift
python=${PYTHON:-python}
launch=${LAUNCH:-$python}
example=${EXAMPLE:-examples/cifar100_densenet.py}
task=${SLURM_ARRAY_TASK_ID:?not an array task: submit with sbatch --array}

ids=$("$python" "$example" "$@" --list)
case $step in
    pretrain) ids=$(grep '/pretrain$' <<<"$ids" || true) ;;
    transfer) ids=$(grep -v '/pretrain$' <<<"$ids" || true) ;;
    all) ;;
    *) echo "slurm_array.sh: STEP must be pretrain, transfer or all, not '$step'" >&2; exit 2 ;;
esac
id=$(sed -n "$((task + 1))p" <<<"$ids")
if [ -z "$id" ]; then
    echo "slurm_array.sh: no $step run for array task $task ($(grep -c . <<<"$ids" || true) in the plan)" >&2
    exit 1
fi
echo "array task $task: $id"
# --runs, not --run, which torchrun would take for its own --run-path.
# shellcheck disable=SC2086  # LAUNCH may be a command with arguments
exec $launch "$example" "$@" --runs "$id"
