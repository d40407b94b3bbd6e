"""Where an auxiliary head changed A's features: linear CKA between paired A networks.

An A run with an auxiliary head and the baseline A run of its split (the same settings,
seed and split, no head) are a pair. ``write_similarity`` takes both networks (the weights
their transfers start from, ``transfer_weights``) through A's test images and writes
``similarity.json`` to the run with the head: the debiased linear CKA
([`linear_cka`][auxtransfer.probe.linear_cka]) of their features at every address of the
layer map but the head, 1 where the two networks' features are the same up to a rotation
and scale. ``write_pending`` does it for every pair of a plan whose two runs have finished
and that has no ``similarity.json`` yet; ``execute`` calls it after its runs, so a sweep
measures each pair once, whichever call finishes it.
"""

from __future__ import annotations

import os
import posixpath
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..layers import layer_map
from ..probe import features, linear_cka
from .batches import DeviceBatches, LoaderBatches
from .plan import Plan, PlannedRun, run_state
from .rundir import SIMILARITY_FILE, write_json
from .sources import DataSource, run_data_for
from .transfer import load_backbone

__all__ = ["SIMILARITY_FILE", "pairs", "similarity", "write_pending", "write_similarity"]

#: The settings that make a run's auxiliary head; a pair differs in these alone.
_AUX = (
    "binary_weight",
    "num_partitions",
    "num_groups",
    "aux_labels",
    "partition_seed",
    "condition",
)


def pairs(plan: Plan) -> list[tuple[PlannedRun, PlannedRun]]:
    """``(run, baseline)`` for every A run of ``plan`` with an auxiliary head whose
    baseline (an A run with every other setting the same, split and seed included) is in
    the plan, in plan order."""

    def key(run: PlannedRun) -> str:
        settings = run.config.to_json()
        return repr(sorted((k, v) for k, v in settings.items() if k not in _AUX))

    a_runs = [r for r in plan if r.config.side == "A" and r.config.transfer_from is None]
    baselines = {key(r): r for r in a_runs if r.config.binary_weight == 0}
    return [
        (r, baselines[key(r)]) for r in a_runs if r.config.binary_weight > 0 and key(r) in baselines
    ]


def similarity(
    run_dir: str | os.PathLike[str],
    baseline_dir: str | os.PathLike[str],
    batches: Any,
    *,
    which: str = "best",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Debiased linear CKA between the networks of two finished runs of one model, at
    every address but the head, on the inputs of ``batches`` (``(x, y, ...)``, iterated
    twice)."""
    nets = [load_backbone(d, which=which).to(device) for d in (run_dir, baseline_dir)]
    addresses = layer_map(nets[0]).names[:-1]
    taken = [features(net, batches, addresses) for net in nets]
    return {a: linear_cka(taken[0][a], taken[1][a], debiased=True) for a in addresses}


def write_similarity(
    run: PlannedRun,
    baseline: PlannedRun,
    out: str | os.PathLike[str],
    source: DataSource,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """``similarity.json`` in ``run``'s directory under ``out``: the CKA of its network and
    ``baseline``'s at every address on A's test images (``run_data_for(run.config,
    source)``, which the two runs share), with what was compared."""
    config = run.config
    _, test = run_data_for(config, source)
    samples = len(test[1]) if isinstance(test, tuple) else len(test)  # type: ignore[arg-type]
    size = min(256, samples)
    if isinstance(test, tuple):
        batches: Any = DeviceBatches(*test, batch_size=size, mean=source.mean, std=source.std,
            device=device, train=False)  # fmt: skip
    else:
        batches = LoaderBatches(test, batch_size=size, device=device, train=False,
            num_workers=config.num_workers)  # fmt: skip
    layers = similarity(Path(out) / run.id, Path(out) / baseline.id, batches,
        which=config.transfer_weights, device=device)  # fmt: skip
    found = {
        "baseline": posixpath.relpath(baseline.id, run.id),
        "images": "A test",
        "samples": samples,
        "cka": "linear, debiased",
        "weights": config.transfer_weights,
        "layers": layers,
    }
    write_json(Path(out) / run.id / SIMILARITY_FILE, found)
    return found


def write_pending(
    plan: Plan,
    out: str | os.PathLike[str],
    source: DataSource,
    *,
    device: str | torch.device = "cpu",
    report: Callable[[str], None] | None = None,
) -> list[str]:
    """``write_similarity`` for every pair of ``plan`` whose two runs have finished under
    ``out`` with the weights their transfers take (``best.pt`` or ``last.pt``) and whose run
    with the head has no ``similarity.json``; the ids written. A pair
    that cannot be measured is said through ``report`` (else a ``RuntimeWarning``) and the
    others go on."""
    written = []
    for run, baseline in pairs(plan):
        here = Path(out) / run.id
        if (here / SIMILARITY_FILE).exists():
            continue
        dirs = (here, Path(out) / baseline.id)
        weights = f"{run.config.transfer_weights}.pt"
        if any(run_state(d) != "finished" or not (d / weights).exists() for d in dirs):
            continue
        try:
            write_similarity(run, baseline, out, source, device=device)
        except Exception as error:  # a measurement beside the runs: it never ends a sweep
            first = str(error).strip().split("\n", 1)[0]
            message = f"no similarity for {run.id}: {type(error).__name__}: {first}"
            if report is None:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
            else:
                report(message)
            continue
        written.append(run.id)
    return written
