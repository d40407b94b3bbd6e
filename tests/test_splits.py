"""A/B class splits, class subsets and per-class limits: seeded, golden, checked by hand."""

import pytest
import torch

from auxtransfer import class_partition
from auxtransfer.experiments.splits import limit_per_class, split_classes, subset_classes

# Frozen outputs: recorded A/B experiments depend on them never changing.
GOLDEN_A_100_SEED_0 = [1, 4, 6, 8, 9, 10, 11, 14, 16, 17]  # the first ten of A
GOLDEN_SPLIT_10_SEED_3 = ([1, 2, 3, 5, 8], [0, 4, 6, 7, 9])
GOLDEN_LIMIT_SEED_0 = [1, 2, 10, 16, 17, 19, 22, 24, 28, 29, 30, 31, 33, 34, 35, 38, 43, 45, 46, 47]


def test_split_golden():
    a, b = split_classes(100, seed=0)
    assert a[:10] == GOLDEN_A_100_SEED_0
    assert b[:3] == [0, 2, 3]
    assert split_classes(10, seed=3) == GOLDEN_SPLIT_10_SEED_3


@pytest.mark.parametrize(("num_classes", "num_a"), [(100, None), (11, None), (10, 3)])
def test_split_is_a_partition_of_the_classes(num_classes, num_a):
    a, b = split_classes(num_classes, seed=7, num_a=num_a)
    assert len(a) == (num_classes // 2 if num_a is None else num_a)
    assert sorted(a + b) == list(range(num_classes))
    assert a == sorted(a)
    assert b == sorted(b)


def test_split_seeds_and_independence_from_the_partition():
    assert split_classes(100, seed=5) == split_classes(100, seed=5)
    assert split_classes(100, seed=5) != split_classes(100, seed=6)
    # Its own random stream: the same seed does not give class_partition's first shuffle.
    group_one = class_partition(100, seed=0)[0].nonzero().flatten().tolist()
    assert split_classes(100, seed=0)[0] != group_one


def test_subset_relabels_in_the_given_order():
    labels = torch.tensor([3, 7, 1, 3, 9, 7, 0])
    subset = subset_classes(labels, [7, 3])
    assert subset.indices.tolist() == [0, 1, 3, 5]
    assert subset.labels.tolist() == [1, 0, 1, 0]
    assert subset.classes == (7, 3)
    # The mapping back gives the original labels.
    assert [subset.classes[j] for j in subset.labels.tolist()] == labels[subset.indices].tolist()


def test_limit_per_class_golden_and_counts():
    labels = torch.arange(10).repeat(5)
    kept = limit_per_class(labels, 2, seed=0)
    assert kept.tolist() == GOLDEN_LIMIT_SEED_0
    assert torch.bincount(labels[kept]).tolist() == [2] * 10
    assert kept.tolist() == sorted(set(kept.tolist()))
    assert limit_per_class(labels, 2, seed=1).tolist() != GOLDEN_LIMIT_SEED_0
    assert limit_per_class(labels, 5, seed=0).tolist() == list(range(50))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: split_classes(1, seed=0),
            ValueError,
            r"`num_classes` to be an int >= 2, but got 1",
        ),
        (
            lambda: split_classes(10, seed=0, num_a=10),
            ValueError,
            r"`num_a` to leave at least one class for B \(at most 9\), but got 10",
        ),
        (lambda: split_classes(10, seed=-1), ValueError, r"`seed` to be an int >= 0"),
        (
            lambda: subset_classes(torch.tensor([0, 1]), [1, 1]),
            ValueError,
            r"`classes` to hold distinct classes, but got \[1, 1\]",
        ),
        (
            lambda: subset_classes(torch.tensor([0, 1]), [2]),
            ValueError,
            r"every class in `classes` to occur in `labels`, but \[2\] do not",
        ),
        (
            lambda: subset_classes(torch.tensor([0, 1]), []),
            ValueError,
            r"`classes` to hold at least one class",
        ),
        (
            lambda: subset_classes(torch.tensor([0.5]), [0]),
            TypeError,
            r"`labels` to be a 1-D tensor of class indices",
        ),
        (
            lambda: limit_per_class(torch.tensor([0, 0, 1]), 2, seed=0),
            ValueError,
            r"class 1 has 1 samples and `n` is 2",
        ),
        (
            lambda: limit_per_class(torch.tensor([0, -1]), 1, seed=0),
            ValueError,
            r"`labels` to be class indices >= 0, but got -1",
        ),
        (
            lambda: limit_per_class(torch.tensor([0, 1]), 0, seed=0),
            ValueError,
            r"`n` to be an int >= 1, but got 0",
        ),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
