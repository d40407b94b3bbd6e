"""Paired statistics of B's final error: binary against baseline on the same splits.

``paired_test`` gives the mean paired difference with a confidence interval from the t
distribution, the paired t-test (``scipy.stats.ttest_rel``) and the Wilcoxon signed-rank
test (``scipy.stats.wilcoxon``). ``variance_decomposition`` splits the variance of the
errors into a part from the split, a part from the condition and the rest, as a two-way
analysis of variance of the additive model. Where a number cannot be had honestly (too
few pairs, all on one split, no spread) its field is None and a note says
``"cannot test: <reason>"``. scipy is imported when a function is called.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

from .groups import split_label

__all__ = [
    "MIN_WILCOXON_PAIRS",
    "PairedTest",
    "RankCorrelation",
    "VarianceDecomposition",
    "paired_test",
    "rank_correlation",
    "variance_decomposition",
]

#: The fewest non-zero differences for which the two-sided Wilcoxon signed-rank test can
#: reach p < 0.05: with n differences its smallest exact p-value is 2 / 2**n (0.0625 for 5,
#: 0.03125 for 6).
MIN_WILCOXON_PAIRS = 6

# Relative size below which differences of errors count as float rounding.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PairedTest:
    """The paired comparison of B's final error, ``condition - baseline`` (percentage
    points; the condition: binary or another kind of auxiliary head).

    Attributes:
        pairs: Number of pairs.
        splits: Number of distinct splits among the pairs (None when not given).
        mean_difference: Mean of ``condition - baseline`` (None without pairs).
        confidence: The interval's confidence level.
        ci_low: Lower bound of the interval, ``mean - t * sd / sqrt(n)``.
        ci_high: Upper bound.
        df: Degrees of freedom of the t distribution, ``pairs - 1``.
        t_statistic: The paired t statistic (positive: the condition's error is higher).
        t_pvalue: Its two-sided p-value.
        wilcoxon_statistic: The signed-rank statistic as scipy reports it.
        wilcoxon_pvalue: Its two-sided p-value.
        t_note: ``"cannot test: ..."`` when the interval and t-test are missing, else None.
        wilcoxon_note: The same for the Wilcoxon test.
    """

    pairs: int
    splits: int | None
    mean_difference: float | None
    confidence: float
    ci_low: float | None
    ci_high: float | None
    df: int | None
    t_statistic: float | None
    t_pvalue: float | None
    wilcoxon_statistic: float | None
    wilcoxon_pvalue: float | None
    t_note: str | None
    wilcoxon_note: str | None


@dataclass(frozen=True)
class VarianceDecomposition:
    """Sums of squares of B's final error by source, for paired runs.

    The model is additive: error = mean + split effect + condition effect + residual. With
    one pair per split it is the two-way analysis of variance without replication (the
    residual is the split x condition interaction); with replications the residual also
    holds the spread between them. Each split has as many runs of one condition as of the
    other, so the split and condition sums of squares add up with the residual to the total.

    Attributes:
        pairs: Number of pairs (two runs each).
        splits: Number of distinct splits.
        total: Total sum of squares around the grand mean.
        split: Sum of squares between splits.
        condition: Sum of squares between the two conditions.
        residual: The rest.
        split_fraction: ``split / total`` (None when it cannot be had).
        condition_fraction: ``condition / total``.
        residual_fraction: ``residual / total``.
        df_split: ``splits - 1``.
        df_condition: 1.
        df_residual: ``2 * pairs - splits - 1``.
        f_split: F statistic of the split (None without residual spread).
        p_split: Its p-value.
        f_condition: F statistic of the condition.
        p_condition: Its p-value (equal to the paired t-test's with one pair per split).
        note: ``"cannot test: ..."`` when the decomposition is missing, else None.
    """

    pairs: int
    splits: int
    total: float | None
    split: float | None
    condition: float | None
    residual: float | None
    split_fraction: float | None
    condition_fraction: float | None
    residual_fraction: float | None
    df_split: int
    df_condition: int
    df_residual: int
    f_split: float | None
    p_split: float | None
    f_condition: float | None
    p_condition: float | None
    note: str | None


def paired_test(
    baseline: Sequence[float],
    binary: Sequence[float],
    *,
    splits: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
) -> PairedTest:
    """Compare ``binary[i]`` with ``baseline[i]``, pair by pair.

    The interval and the t-test need at least 2 pairs with some spread in their
    differences; the Wilcoxon test needs ``MIN_WILCOXON_PAIRS`` non-zero differences.
    Given ``splits`` (the split of each pair), pairs that all come from one split are not
    tested: a difference there cannot be told apart from that split's own luck, the
    confound the paper found, so the test would speak for that split only.

    Args:
        baseline: B's final error of the baseline run of each pair.
        binary: B's final error of the binary run of each pair.
        splits: The split of each pair.
        confidence: Confidence level of the interval, in (0, 1).

    Returns:
        The differences' statistics, with a ``"cannot test: ..."`` note instead of each
        number that cannot be had.

    Examples:
        >>> result = paired_test([30.0, 32.0, 31.0], [31.0, 32.5, 33.0])
        >>> round(result.mean_difference, 3), round(result.t_pvalue, 3)
        (1.167, 0.118)
        >>> result.wilcoxon_note
        'cannot test: 3 non-zero difference(s); the Wilcoxon signed-rank test needs at least 6 to reach p < 0.05 (two-sided)'
    """
    base, bin_ = _check_pairs(baseline, binary)
    if splits is not None and len(splits) != len(base):
        raise ValueError(
            f"Expected one split per pair ({len(base)}), but got {len(splits)} in `splits`."
        )
    if isinstance(confidence, bool) or not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` to be in (0, 1), but got {confidence!r}.")
    n = len(base)
    differences = [b - a for a, b in zip(base, bin_, strict=True)]
    distinct = None if splits is None else len(set(splits))
    t_note, w_note = _too_few(n, splits)
    # Differences equal up to float rounding (errors read back from JSON) have no spread:
    # a t statistic from the rounding noise alone would be meaningless.
    if t_note is None and max(differences) - min(differences) <= _TOLERANCE * max(
        1.0, *map(abs, differences)
    ):
        t_note = f"cannot test: all {n} differences are {differences[0]:+.4g} (no spread to test against)"
    nonzero = sum(d != 0 for d in differences)
    if w_note is None and nonzero < MIN_WILCOXON_PAIRS:
        w_note = (
            f"cannot test: {nonzero} non-zero difference(s); the Wilcoxon signed-rank test "
            f"needs at least {MIN_WILCOXON_PAIRS} to reach p < 0.05 (two-sided)"
        )
    ci_low = ci_high = t_stat = t_p = w_stat = w_p = None
    if t_note is None or w_note is None:
        from scipy import stats

        if t_note is None:
            t = stats.ttest_rel(bin_, base)
            low, high = t.confidence_interval(confidence)
            ci_low, ci_high = float(low), float(high)
            t_stat, t_p = float(t.statistic), float(t.pvalue)
        if w_note is None:
            w = stats.wilcoxon(bin_, base)
            w_stat, w_p = float(w.statistic), float(w.pvalue)
    return PairedTest(
        pairs=n, splits=distinct, mean_difference=sum(differences) / n if n else None,
        confidence=confidence, ci_low=ci_low, ci_high=ci_high,
        df=n - 1 if t_note is None else None, t_statistic=t_stat, t_pvalue=t_p,
        wilcoxon_statistic=w_stat, wilcoxon_pvalue=w_p, t_note=t_note, wilcoxon_note=w_note,
    )  # fmt: skip


def variance_decomposition(
    baseline: Sequence[float], binary: Sequence[float], splits: Sequence[Hashable]
) -> VarianceDecomposition:
    """How much of the variance of B's final error comes from the split and the condition.

    Args:
        baseline: B's final error of the baseline run of each pair.
        binary: B's final error of the binary run of each pair.
        splits: The split of each pair.

    Returns:
        The sums of squares of split, condition and residual, their fractions of the total
        and F-tests of split and condition, with a ``"cannot test: ..."`` note where the
        pairs come from fewer than 2 splits or every error is the same.

    Examples:
        >>> v = variance_decomposition([30.0, 35.0], [31.0, 36.0], splits=[0, 1])
        >>> v.split_fraction, v.condition_fraction, v.residual_fraction
        (0.9615384615384616, 0.038461538461538464, 0.0)
    """
    base, bin_ = _check_pairs(baseline, binary)
    if len(splits) != len(base):
        raise ValueError(
            f"Expected one split per pair ({len(base)}), but got {len(splits)} in `splits`."
        )
    n, groups = len(base), sorted(set(splits), key=repr)
    s = len(groups)
    dfs = (max(s - 1, 0), 1, max(2 * n - s - 1, 0))
    empty = VarianceDecomposition(
        pairs=n, splits=s, total=None, split=None, condition=None, residual=None,
        split_fraction=None, condition_fraction=None, residual_fraction=None,
        df_split=dfs[0], df_condition=dfs[1], df_residual=dfs[2],
        f_split=None, p_split=None, f_condition=None, p_condition=None, note=None,
    )  # fmt: skip
    if n == 0:
        return _with_note(empty, "cannot test: no pairs")
    if s < 2:
        pairs = "1 pair" if n == 1 else f"all {n} pairs are on one split"
        return _with_note(
            empty, f"cannot test: {pairs}; the split's share needs pairs on at least 2 splits"
        )
    values = [*base, *bin_]
    grand = sum(values) / len(values)
    total = sum((v - grand) ** 2 for v in values)
    if total <= (_TOLERANCE * max(1.0, *map(abs, values))) ** 2 * len(values):
        return _with_note(empty, f"cannot test: every error is {grand:.4g} (no variance)")
    split_ss = 0.0
    for group in groups:
        members = [i for i, split in enumerate(splits) if split == group]
        group_values = [base[i] for i in members] + [bin_[i] for i in members]
        split_ss += len(group_values) * (sum(group_values) / len(group_values) - grand) ** 2
    condition_ss = n * ((sum(base) / n - grand) ** 2 + (sum(bin_) / n - grand) ** 2)
    residual = max(total - split_ss - condition_ss, 0.0)  # rounding can dip below 0
    f_split = p_split = f_condition = p_condition = None
    if residual > 0 and dfs[2] > 0:
        from scipy import stats

        mean_residual = residual / dfs[2]
        f_split = split_ss / dfs[0] / mean_residual
        f_condition = condition_ss / dfs[1] / mean_residual
        p_split = float(stats.f.sf(f_split, dfs[0], dfs[2]))
        p_condition = float(stats.f.sf(f_condition, dfs[1], dfs[2]))
    return VarianceDecomposition(
        n, s, total, split_ss, condition_ss, residual,
        split_ss / total, condition_ss / total, residual / total, *dfs,
        f_split, p_split, f_condition, p_condition, None,
    )  # fmt: skip


def _check_pairs(
    baseline: Sequence[float], binary: Sequence[float]
) -> tuple[list[float], list[float]]:
    if len(baseline) != len(binary):
        raise ValueError(
            f"Expected `baseline` and `binary` to hold one error per pair each, but got "
            f"{len(baseline)} and {len(binary)}."
        )
    base, bin_ = [float(v) for v in baseline], [float(v) for v in binary]
    bad = [v for v in (*base, *bin_) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"Expected finite errors, but got {bad[:3]}.")
    return base, bin_


def _too_few(n: int, splits: Sequence[Hashable] | None) -> tuple[str | None, str | None]:
    """The notes of the t-test and the Wilcoxon test when the pairs are too few for them."""
    if n == 0:
        note = "cannot test: no pairs (no baseline and binary runs on the same split)"
        return note, note
    if n < 2:
        return (
            "cannot test: 1 pair; the interval and the t-test need at least 2",
            f"cannot test: 1 pair; the Wilcoxon signed-rank test needs at least {MIN_WILCOXON_PAIRS} "
            "non-zero differences to reach p < 0.05 (two-sided)",
        )
    if splits is not None and len(set(splits)) == 1:
        note = (
            f"cannot test: all {n} pair(s) are on {split_label(splits[0])}, so a difference cannot be "
            f"told apart from that split's own luck; pair runs on at least 2 splits"
        )
        return note, note
    return None, None


def _with_note(result: VarianceDecomposition, note: str) -> VarianceDecomposition:
    return replace(result, note=note)


@dataclass(frozen=True)
class RankCorrelation:
    """How well one number orders runs as another does: Kendall's tau and Spearman's rho
    with bootstrap intervals (runs resampled with replacement), or a note."""

    n: int
    kendall: float | None
    spearman: float | None
    kendall_ci: tuple[float, float] | None
    spearman_ci: tuple[float, float] | None
    note: str | None


def rank_correlation(
    x: Sequence[float], y: Sequence[float], *, resamples: int = 2000, seed: int = 0,
    confidence: float = 0.95,
) -> RankCorrelation:  # fmt: skip
    """Kendall's tau and Spearman's rho of ``x`` and ``y`` (``scipy.stats``), each with a
    percentile bootstrap interval over ``resamples`` resamples of the pairs (numpy's
    generator seeded with ``seed``; resamples without spread in either are left out).
    Needs 3 pairs with some spread in both."""
    n = len(x)
    if len(y) != n:
        raise ValueError(f"Expected as many `y` as `x` ({n}), but got {len(y)}.")
    if n < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        why = f"{n} run(s)" if n < 3 else "no spread"
        return RankCorrelation(n, None, None, None, None, f"cannot test: {why}; needs 3 runs with some spread")  # fmt: skip
    import numpy as np
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(resamples):
        pick = rng.integers(0, n, n)
        if len(set(a[pick])) > 1 and len(set(b[pick])) > 1:
            taus.append(stats.kendalltau(a[pick], b[pick]).statistic)
            rhos.append(stats.spearmanr(a[pick], b[pick]).statistic)
    tail = (1 - confidence) / 2 * 100

    def interval(values: list[float]) -> tuple[float, float] | None:
        kept = [v for v in values if math.isfinite(v)]
        if not kept:
            return None
        low, high = np.percentile(kept, [tail, 100 - tail])
        return float(low), float(high)

    return RankCorrelation(
        n, float(stats.kendalltau(a, b).statistic), float(stats.spearmanr(a, b).statistic),
        interval(taus), interval(rhos), None,
    )  # fmt: skip
