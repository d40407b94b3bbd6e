"""Transfer runs by condition and setting, and baseline / binary pairs.

A B run (``side`` ``"B"`` with ``transfer_from``) belongs to the condition of the A run
it starts from: the baseline when that run's ``binary_weight`` is 0, else its auxiliary
head: its labels (random binary, random ``K``-way, the data's coarse labels), weight and
number of heads. Runs that differ only in their split, seed and condition share a
*setting* (model, schedules, freeze / reset point, images per class, smoke or not, and the
A run's settings but its auxiliary head); a *family* is the settings that differ only in
their freeze (or reset) point. Within a setting a baseline and a run of another condition
are a pair when they share the split: the one run of each on that split, or, with several
runs per split (replications), the two with the same seed.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .gather import Gathered, Run, Skipped

__all__ = [
    "Condition",
    "Family",
    "Transfer",
    "address_key",
    "families",
    "pair",
    "split_label",
    "split_order",
    "transfers",
]

# Settings that do not change what a run measures, or that tell the runs of one setting
# apart (split, seed, condition): left out of the setting.
_NOT_SETTING = {
    "seed", "split_seed", "partition_seed", "transfer_from", "phase", "num_workers",
    "compile", "compile_backend", "channels_last", "amp", "condition",
}  # fmt: skip
_NOT_SOURCE_SETTING = _NOT_SETTING | {"binary_weight", "num_partitions", "num_groups", "aux_labels"}


@dataclass(frozen=True, order=True)
class Condition:
    """The A run's auxiliary head: ``weight`` 0 is the baseline; ``heads`` share the
    weight; ``labels`` ``"random"`` with ``groups`` groups per partition (2: binary) or
    ``"coarse"`` (the data's coarse labels, ``groups`` of them)."""

    weight: float
    heads: int = 1
    groups: int = 2
    labels: str = "random"

    @property
    def is_baseline(self) -> bool:
        return self.weight == 0

    @property
    def is_binary(self) -> bool:
        """The paper's kind: random binary partitions (or the baseline)."""
        return self.is_baseline or (self.labels == "random" and self.groups == 2)

    @property
    def kind(self) -> str:
        """``"binary"``, ``"random 20-way"`` or ``"coarse"``."""
        if self.labels == "coarse":
            return "coarse"
        return "binary" if self.groups == 2 else f"random {self.groups}-way"

    @property
    def name(self) -> str:
        """``"baseline"``, ``"binary 0.4"``, ``"binary 0.2 = 0.1 x 2 heads"``,
        ``"random 20-way 0.4"`` or ``"coarse 0.4"``."""
        if self.is_baseline:
            return "baseline"
        if self.heads == 1:
            return f"{self.kind} {self.weight:g}"
        return f"{self.kind} {self.weight:g} = {self.weight / self.heads:g} x {self.heads} heads"

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> Condition:
        """The condition of an A run from its ``config.json`` (settings it predates at
        their defaults)."""
        weight = float(config.get("binary_weight", 0.0) or 0.0)
        if weight <= 0:
            return cls(0.0)
        heads = int(config.get("num_partitions", 1) or 1)
        groups = int(config.get("num_groups", 2) or 2)
        return cls(weight, heads, groups, str(config.get("aux_labels", "random")))


@dataclass(frozen=True)
class Transfer:
    """A finished B run with what the report needs to place it.

    Attributes:
        run: The B run.
        source: The A run it started from.
        condition: The A run's binary head.
        split: ``split_seed`` (None when the run does not record one).
        seed: The run's ``seed``.
        kind: ``"freeze"``, ``"reset"`` or ``"finetune"`` (neither).
        point: The freeze or reset address (None for ``"finetune"``).
        setting: The family's setting as canonical JSON (without the point).
    """

    run: Run
    source: Run
    condition: Condition
    split: int | None
    seed: int
    kind: str
    point: str | None
    setting: str

    @property
    def source_error(self) -> float:
        """A's test error of the weights B started from (best or last epoch)."""
        last = self.run.config.get("transfer_weights", "best") == "last"
        return self.source.final_error if last else self.source.best_error


@dataclass(frozen=True)
class Family:
    """The transfers of one setting, all its points and conditions."""

    kind: str
    setting: Mapping[str, Any]
    transfers: tuple[Transfer, ...]

    @property
    def smoke(self) -> bool:
        return bool(self.setting.get("smoke", False))

    @property
    def points(self) -> list[str]:
        """The freeze / reset addresses in layer order (``[""]`` for a plain fine-tuning)."""
        return sorted({t.point or "" for t in self.transfers}, key=address_key)

    @property
    def conditions(self) -> list[Condition]:
        return sorted({t.condition for t in self.transfers}, key=_condition_order)

    @property
    def epochs(self) -> int:
        return int(self.setting["epochs"])

    def at(self, point: str | None = None, condition: Condition | None = None) -> list[Transfer]:
        """The transfers at ``point`` and of ``condition`` (any where None)."""
        return [
            t
            for t in self.transfers
            if (point is None or (t.point or "") == point)
            and (condition is None or t.condition == condition)
        ]


def transfers(gathered: Gathered) -> tuple[list[Transfer], list[Skipped]]:
    """Every B run of ``gathered`` placed by condition and setting.

    Returns:
        The transfers, and the B runs left out: their A run is not among the finished runs,
        or another run has the same setting, condition, split and seed (the first by id
        is kept).
    """
    by_path = {run.path.resolve(): run for run in gathered.runs}
    placed: dict[tuple[Any, ...], Transfer] = {}
    skipped = []
    for run in gathered.runs:
        source_path = run.config.get("transfer_from")
        if run.config.get("side") != "B" or not isinstance(source_path, str):
            continue
        source = by_path.get((run.path / source_path).resolve())
        if source is None:
            skipped.append(
                Skipped(
                    run.id,
                    f"its A run {source_path!r} (transfer_from) is not among the finished runs",
                )
            )
            continue
        transfer = _place(run, source)
        key = (transfer.setting, transfer.point, transfer.condition, transfer.split, transfer.seed)
        if key in placed:
            skipped.append(
                Skipped(
                    run.id,
                    f"same setting, condition, split and seed as {placed[key].run.id} (kept)",
                )
            )
            continue
        placed[key] = transfer
    return list(placed.values()), skipped


def families(items: Iterable[Transfer]) -> list[Family]:
    """The transfers grouped by setting: freeze sweeps, reset sweeps, then fine-tunings."""
    grouped: dict[tuple[str, str], list[Transfer]] = {}
    for transfer in items:
        grouped.setdefault((transfer.kind, transfer.setting), []).append(transfer)
    order = {"freeze": 0, "reset": 1, "finetune": 2}

    # Fine-tunings of all of B before those with fewer images per class (the long tail).
    def position(key: tuple[str, str]) -> tuple[int, bool, str]:
        return (order[key[0]], json.loads(key[1]).get("per_class") is not None, key[1])

    keys = sorted(grouped, key=position)
    return [
        Family(kind, json.loads(setting), tuple(grouped[kind, setting])) for kind, setting in keys
    ]


def pair(
    baseline: Sequence[Transfer], binary: Sequence[Transfer]
) -> tuple[list[tuple[Transfer, Transfer]], list[Transfer]]:
    """Baseline and ``binary`` (another condition's) runs of one setting and point, paired
    by split.

    On a split with one run of each condition those two are a pair; with more, runs pair
    when they share the seed. Returns the pairs (by split, then seed) and the runs left
    without a partner.
    """
    pairs, unpaired = [], []
    splits = sorted({t.split for t in [*baseline, *binary]}, key=split_order)
    for split in splits:
        base = sorted((t for t in baseline if t.split == split), key=lambda t: t.seed)
        bin_ = sorted((t for t in binary if t.split == split), key=lambda t: t.seed)
        if len(base) == 1 and len(bin_) == 1:
            pairs.append((base[0], bin_[0]))
            continue
        seeds = {t.seed: t for t in bin_}
        for b in base:
            if b.seed in seeds:
                pairs.append((b, seeds.pop(b.seed)))
            else:
                unpaired.append(b)
        unpaired.extend(seeds.values())
    return pairs, unpaired


def address_key(address: str) -> tuple[int, float, float, str]:
    """Layer order of a freeze / reset address: ``"0"``, ``"stem"``, ``"1.8"``, ``"1"``
    (all of block 1), ``"2.1"``, ..., ``"head"``, then any other name.

    Examples:
        >>> sorted(["3", "1", "2.8", "0", "1.8", "3.14"], key=address_key)
        ['0', '1.8', '1', '2.8', '3.14', '3']
    """
    if address in ("", "0"):
        return (0, 0.0, 0.0, address)
    if address == "stem":
        return (0, 1.0, 0.0, address)
    parts = address.split(".")
    if len(parts) <= 2 and all(part.isdigit() for part in parts):
        layer = float(parts[1]) if len(parts) == 2 else math.inf
        return (1, float(parts[0]), layer, address)
    if address == "head":
        return (2, 0.0, 0.0, address)
    return (3, 0.0, 0.0, address)


def _place(run: Run, source: Run) -> Transfer:
    # A setting a config.json predates is at its default (as a resumed run reads it), so
    # runs written before and after it was added share their setting.
    config = {**_defaults(), **run.config}
    source_config = {**_defaults(), **source.config}
    freeze, reset = config.get("freeze"), config.get("reset")
    kind = "freeze" if freeze is not None else "reset" if reset is not None else "finetune"
    point = freeze if kind == "freeze" else reset if kind == "reset" else None
    setting = {k: v for k, v in config.items() if k not in _NOT_SETTING and k != kind}
    setting["pretrain"] = {k: v for k, v in source_config.items() if k not in _NOT_SOURCE_SETTING}
    split = config.get("split_seed")
    return Transfer(
        run=run,
        source=source,
        condition=Condition.of(source.config),
        split=split if isinstance(split, int) else None,
        seed=int(config.get("seed", 0)),
        kind=kind,
        point=None if point is None else str(point),
        setting=json.dumps(setting, sort_keys=True),
    )


@functools.cache
def _defaults() -> dict[str, Any]:
    from ..experiments.settings import RunConfig

    return RunConfig.defaults()


def _condition_order(condition: Condition) -> tuple[bool, bool, bool, str, int, int, float]:
    """The baseline, the binary conditions (by heads, then weight), the random ``K``-way
    ones (by ``K``), then given labels."""
    return (
        not condition.is_baseline,
        not condition.is_binary,
        condition.labels != "random",
        condition.labels,
        condition.groups,
        condition.heads,
        condition.weight,
    )


def split_order(split: int | None) -> tuple[bool, int]:
    """Sort key of splits: ``None`` (runs without ``split_seed``) first, then by seed."""
    return (split is not None, split or 0)


def split_label(split: object) -> str:
    """``"split 3"``, or ``"no split"`` for runs without ``split_seed``."""
    return "no split" if split is None else f"split {split}"
