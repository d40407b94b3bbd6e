import math

import pytest
import torch

from auxtransfer import class_partition
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
