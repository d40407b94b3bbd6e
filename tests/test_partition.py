import math

import pytest
import torch

from auxtransfer import class_partition, group_partition
from auxtransfer._rng import SplitMix64


def test_splitmix64_matches_reference_vector():
    # Outputs of the reference C implementation (Vigna, splitmix64.c) for seed 1234567.
    rng = SplitMix64(1234567)
    assert [rng.next_u64() for _ in range(5)] == [
        6457827717110365317,
        3203168211198807973,
        9817491932198370423,
        4593380528125082431,
        16408922859458223821,
    ]


def test_golden_seed_0():
    assert class_partition(10, seed=0).tolist() == GOLDEN_10
    assert class_partition(10, num_partitions=3, seed=0).tolist() == GOLDEN_10x3
    assert class_partition(100, seed=0)[0].nonzero().flatten().tolist() == GOLDEN_100_GROUP1


def test_every_split_is_equally_likely():
    # 6 classes have 20 balanced rows (which 3 classes get label 1); over 6,000 seeds each
    # should come up about 300 times. A biased shuffle (j drawn from [0, n) or [0, i) instead of
    # [0, i]) skews these counts far outside the bounds (about 5 standard deviations).
    counts = {}
    for seed in range(6000):
        row = tuple(class_partition(6, seed=seed)[0].tolist())
        counts[row] = counts.get(row, 0) + 1
    assert len(counts) == math.comb(6, 3)
    assert all(210 <= c <= 390 for c in counts.values()), sorted(counts.values())
    # And every class is in group 1 half of the time.
    ones = [sum(c for row, c in counts.items() if row[k] == 1) for k in range(6)]
    assert all(2750 <= n <= 3250 for n in ones), ones


@pytest.mark.parametrize("num_classes", [2, 3, 10, 11, 100, 1000])
def test_rows_are_balanced(num_classes):
    table = class_partition(num_classes, num_partitions=5, seed=1)
    assert table.dtype == torch.long
    assert table.shape == (5, num_classes)
    assert set(table.unique().tolist()) == {0, 1}
    ones = table.sum(dim=1)
    assert torch.all(ones == num_classes // 2)
    assert torch.all((num_classes - ones) - ones <= 1)


def _canonical(row):
    row = tuple(row.tolist())
    return row if row[0] == 0 else tuple(1 - v for v in row)


@pytest.mark.parametrize(("num_classes", "num_partitions"), [(4, 3), (5, 10), (6, 10), (100, 64)])
def test_rows_are_distinct_while_possible(num_classes, num_partitions):
    table = class_partition(num_classes, num_partitions=num_partitions, seed=0)
    keys = [_canonical(row) for row in table]
    assert len(set(keys)) == len(keys)


def test_rows_repeat_only_after_every_partition_is_used():
    # 4 classes have 3 distinct balanced splits; 7 rows must use all 3 before repeating.
    table = class_partition(4, num_partitions=7, seed=5)
    keys = [_canonical(row) for row in table]
    distinct = math.comb(4, 2) // 2
    assert len(set(keys[:distinct])) == distinct
    assert len(set(keys[distinct : 2 * distinct])) == distinct


def test_seeds_differ_and_repeat():
    assert torch.equal(class_partition(100, seed=3), class_partition(100, seed=3))
    assert not torch.equal(class_partition(100, seed=3), class_partition(100, seed=4))


def test_does_not_touch_global_rng():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    class_partition(100, num_partitions=4, seed=9)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 1}, ValueError, r"`num_classes` to be an int >= 2, but got 1"),
        ({"num_classes": 10.0}, TypeError, r"`num_classes` to be an int >= 2, but got 10.0"),
        ({"num_classes": True}, TypeError, r"`num_classes`"),
        (
            {"num_classes": 10, "num_partitions": 0},
            ValueError,
            r"`num_partitions` to be an int >= 1",
        ),
        ({"num_classes": 10, "seed": -1}, ValueError, r"`seed` to be an int >= 0, but got -1"),
        ({"num_classes": 10, "seed": 2**64}, ValueError, r"`seed` to be an int in \[0, 2\*\*64\)"),
        ({"num_classes": 10, "seed": "0"}, TypeError, r"`seed`"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        class_partition(**kwargs)


def _relabelled(row):
    """The row with its groups renamed in order of first appearance (a hand version)."""
    names = {}
    for g in row.tolist():
        if g not in names:
            names[g] = len(names)
    return tuple(names[g] for g in row.tolist())


def _distinct_partitions(num_classes, num_groups):
    """Balanced partitions up to group names, counted by brute force."""
    import itertools

    size = num_classes // num_groups
    sizes = sorted(
        [size + 1] * (num_classes % num_groups) + [size] * (num_groups - num_classes % num_groups)
    )
    found = set()
    for labels in itertools.product(range(num_groups), repeat=num_classes):
        counts = sorted(labels.count(g) for g in range(num_groups))
        if counts == sizes:
            found.add(_relabelled(torch.tensor(labels)))
    return len(found)


@pytest.mark.parametrize("num_groups", [2, 3, 5, 20])
@pytest.mark.parametrize("num_classes", [20, 23, 50, 100])
def test_k_groups_are_balanced_and_distinct(num_classes, num_groups):
    table = class_partition(num_classes, num_groups=num_groups, num_partitions=6, seed=2)
    assert table.dtype == torch.long
    assert table.shape == (6, num_classes)
    for row in table:
        counts = torch.bincount(row, minlength=num_groups)
        assert len(counts) == num_groups
        assert counts.max() - counts.min() <= 1
        assert counts.sum() == num_classes
    keys = [_relabelled(row) for row in table]
    if num_groups < num_classes:
        assert len(set(keys)) == len(keys)
    assert torch.equal(
        table, class_partition(num_classes, num_groups=num_groups, num_partitions=6, seed=2)
    )


def test_k_groups_two_is_the_binary_partition_bit_for_bit():
    for seed in (0, 1, 12345):
        for num_classes in (2, 7, 10, 100):
            assert torch.equal(
                class_partition(num_classes, num_groups=2, num_partitions=4, seed=seed),
                class_partition(num_classes, num_partitions=4, seed=seed),
            )
    assert class_partition(10, num_groups=2, seed=0).tolist() == GOLDEN_10


@pytest.mark.parametrize(("num_classes", "num_groups"), [(4, 3), (5, 3), (6, 3), (6, 4), (7, 5)])
def test_k_group_rows_repeat_only_after_every_partition_is_used(num_classes, num_groups):
    distinct = _distinct_partitions(num_classes, num_groups)
    table = class_partition(num_classes, num_groups=num_groups, num_partitions=2 * distinct, seed=3)
    keys = [_relabelled(row) for row in table]
    assert len(set(keys[:distinct])) == distinct
    assert len(set(keys[distinct:])) == distinct


def test_k_group_golden_values():
    assert class_partition(10, num_groups=3, num_partitions=2, seed=0).tolist() == [
        [0, 1, 2, 2, 0, 0, 2, 0, 1, 1],
        [0, 0, 1, 1, 2, 1, 0, 2, 0, 2],
    ]
    assert class_partition(12, num_groups=5, seed=7).tolist() == [
        [0, 3, 1, 0, 2, 3, 0, 2, 1, 1, 4, 4]
    ]


def test_k_groups_bad_input():
    with pytest.raises(
        ValueError, match=r"`num_groups` to be at most `num_classes` \(10\), but got 11"
    ):
        class_partition(10, num_groups=11)
    with pytest.raises(ValueError, match=r"`num_groups` to be an int >= 2, but got 1"):
        class_partition(10, num_groups=1)


def test_group_partition_from_a_given_grouping():
    assert group_partition([2, 0, 1, 0, 2]).tolist() == [[2, 0, 1, 0, 2]]
    assert group_partition(torch.tensor([1, 0, 1])).tolist() == [[1, 0, 1]]
    assert group_partition({2: 0, 0: 1, 1: 1}).tolist() == [[1, 1, 0]]
    # Kept classes in their new order; the groups they still use renumbered 0 .. K'-1.
    coarse = [3, 3, 0, 1, 1, 2, 0, 3]
    kept = [7, 3, 5, 0]  # groups 3, 1, 2, 3: group 0 is gone
    assert group_partition(coarse, classes=kept).tolist() == [[2, 0, 1, 2]]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (({0: 0, 2: 1},), {}, r"assign every class from 0 to 2 to a group, but class 1 has none"),
        (
            ([0, 2, 2, 0],),
            {},
            r"every group id from 0 to 2 to hold a class, but group 1 holds none",
        ),
        (([0, 1, -1],), {}, r"group ids >= 0, but class 2 has group -1"),
        (([0, 1, 3, 2],), {"num_groups": 3}, r"group ids from 0 to 2 .* but class 2 has group 3"),
        (([0, 1, 1],), {"classes": [1, 2]}, r"at least two groups, but all 2 are in group 1"),
        (
            ([0, 1, 1],),
            {"classes": [0, 5]},
            r"classes that `groups` assigns \(0 to 2\), but got class 5",
        ),
        (([0],), {}, r"at least 2 classes, but got shape \(1,\)"),
    ],
)
def test_group_partition_names_what_is_wrong(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_partition(*args, **kwargs)
    with pytest.raises(TypeError, match=r"integer group ids"):
        group_partition([0.0, 1.0])


# Frozen outputs: a change here breaks every recorded A/B experiment, so it must never happen.
GOLDEN_10 = [[0, 0, 1, 1, 0, 0, 1, 0, 1, 1]]
GOLDEN_10x3 = [
    [0, 0, 1, 1, 0, 0, 1, 0, 1, 1],
    [0, 0, 1, 0, 1, 1, 0, 1, 0, 1],
    [0, 1, 0, 0, 1, 1, 1, 0, 0, 1],
]
GOLDEN_100_GROUP1 = [
    2,
    4,
    5,
    6,
    10,
    12,
    14,
    16,
    17,
    19,
    20,
    22,
    23,
    24,
    28,
    29,
    31,
    32,
    34,
    36,
    38,
    40,
    44,
    47,
    48,
    51,
    55,
    56,
    58,
    60,
    61,
    62,
    64,
    67,
    69,
    72,
    73,
    74,
    80,
    82,
    84,
    85,
    86,
    87,
    88,
    90,
    95,
    96,
    97,
    98,
]
