import pickle

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF

from auxtransfer import class_partition
from auxtransfer.experiments import DeviceBatches, crop_flip, load_cifar100

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(
        n
    ) % 10


def _torchvision_reference(image, top, left, flip):
    """torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip for given draws."""
    out = TF.crop(TF.pad(image, [4], fill=0), top, left, 32, 32)
    return TF.horizontal_flip(out) if flip else out


def test_crop_flip_matches_torchvision_image_by_image():
    images, _ = _images(16)
    g = torch.Generator().manual_seed(1)
    offsets = torch.randint(0, 9, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    out = crop_flip(images, offsets, flips, pad=4)
    for b in range(16):
        expected = _torchvision_reference(
            images[b], int(offsets[b, 0]), int(offsets[b, 1]), bool(flips[b])
        )
        assert torch.equal(out[b], expected), b
    # The corners: all-padding rows and columns appear where the offsets put them.
    corner = crop_flip(images[:1], torch.tensor([[0, 0]]), torch.tensor([False]), pad=4)
    assert (corner[0, :, :4, :] == 0).all()
    assert torch.equal(corner[0, :, 4:, 4:], images[0, :, :28, :28])


def test_batches_reproduce_the_torchvision_pipeline():
    images, labels = _images(24)
    batches = DeviceBatches(images, labels, batch_size=8, mean=MEAN, std=STD, seed=3)
    batches.set_epoch(2)
    # The same draws, made by hand in the documented order.
    g = torch.Generator().manual_seed((3 * 1_000_003 + 2) % 2**63)
    order = torch.randperm(24, generator=g)
    offsets = torch.randint(0, 9, (24, 2), generator=g)
    flips = torch.rand(24, generator=g) < 0.5
    normalize = torchvision.transforms.Normalize(MEAN, STD)
    seen = 0
    for x, y in batches:
        for row in range(len(y)):
            k = int(order[seen + row])
            reference = _torchvision_reference(
                images[k], int(offsets[k, 0]), int(offsets[k, 1]), bool(flips[k])
            )
            expected = normalize(TF.to_dtype(reference, torch.float32, scale=True))
            torch.testing.assert_close(x[row], expected, rtol=1e-5, atol=1e-5)
            assert y[row] == labels[k]
        seen += len(y)
    assert seen == 24


def test_epochs_shuffle_reproducibly_and_cover_everything():
    images, labels = _images(30)
    batches = DeviceBatches(images, labels, batch_size=7, mean=MEAN, std=STD, seed=0)
    assert len(batches) == 5

    def epoch(e):
        batches.set_epoch(e)
        return [(x.clone(), y.clone()) for x, y in batches]

    first, again, second = epoch(0), epoch(0), epoch(1)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in second]))
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(labels.tolist())
    state = torch.random.get_rng_state()
    epoch(3)
    assert torch.equal(state, torch.random.get_rng_state())


def test_eval_keeps_order_and_only_normalises():
    images, labels = _images(10)
    batches = DeviceBatches(images, labels, batch_size=4, mean=MEAN, std=STD, train=False)
    x = torch.cat([x for x, _ in batches])
    expected = torchvision.transforms.Normalize(MEAN, STD)(images.float() / 255)
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)
    assert torch.cat([y for _, y in batches]).tolist() == labels.tolist()


def test_ddp_shards_are_disjoint_and_augmented_alike():
    images, _ = _images(21)
    labels = torch.arange(21)  # label = image index, to find each image again
    single = DeviceBatches(images, labels, batch_size=4, mean=MEAN, std=STD, seed=5)
    by_index = {int(y): x_row for x, ys in single for y, x_row in zip(ys, x, strict=True)}
    shards = [
        DeviceBatches(
            images, labels, batch_size=4, mean=MEAN, std=STD, seed=5, rank=r, world_size=2
        )
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 3  # 11 images each, 21 padded to 22
    seen, originals = [], []
    for shard in shards:
        for x, ys in shard:
            originals += [
                y
                for y, kept in zip(ys.tolist(), shard.last_batch_original.tolist(), strict=True)
                if kept
            ]
            for y, row in zip(ys.tolist(), x, strict=True):
                assert torch.equal(row, by_index[y])
                seen.append(y)
    assert sorted(set(seen)) == list(range(21))
    assert len(seen) == 22
    # Without the one wrap-around repeat, every image exactly once.
    assert sorted(originals) == list(range(21))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_binary_labels_and_layout(train, channels_last):
    images, labels = _images(12)
    partition = class_partition(10, num_partitions=2, seed=1)
    batches = DeviceBatches(
        images,
        labels,
        batch_size=5,
        mean=MEAN,
        std=STD,
        train=train,
        partition=partition,
        channels_last=channels_last,
        dtype=torch.bfloat16,
        drop_last=True,
    )
    assert len(batches) == 2
    layout = torch.channels_last if channels_last else torch.contiguous_format
    for x, y, y_b in batches:
        assert x.dtype == torch.bfloat16
        assert x.is_contiguous(memory_format=layout)  # cropped too (the crop reads NHWC)
        assert torch.equal(y_b, partition.t()[y])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"batch_size": 41},
            ValueError,
            r"`batch_size` to be at most the 40 images of each of the 1 process\(es\), but got 41",
        ),
        (
            {"batch_size": 21, "world_size": 2},
            ValueError,
            r"at most the 20 images of each of the 2 process\(es\)",
        ),
        ({"world_size": 41}, ValueError, r"`world_size` to be at most the 40 images"),
        ({"batch_size": 0}, ValueError, r"`batch_size` to be an int >= 1"),
        ({"mean": (0.5, 0.5)}, ValueError, r"`mean` and `std` to give 3 values each"),
        ({"std": (0.2, 0.0, 0.2)}, ValueError, r"std > 0"),
        ({"rank": 2, "world_size": 2}, ValueError, r"`rank` to be in \[0, 2\), but got 2"),
        (
            {"labels": torch.zeros(3, dtype=torch.long)},
            ValueError,
            r"`labels` to be a tensor of shape \[40\] \(one per image\), but got a torch.int64 tensor of shape \(3,\)",
        ),
        (
            {"images": torch.zeros(40, 32, 32)},
            ValueError,
            r"`images` to be a \[N, C, H, W\] tensor, but got a torch.float32 tensor of shape \(40, 32, 32\)",
        ),
        (
            {"dtype": torch.int64},
            ValueError,
            r"`dtype` to be a floating-point dtype, but got torch.int64",
        ),
        # Arguments of the wrong type.
        (
            {"images": np.zeros((40, 3, 32, 32), np.uint8)},
            TypeError,
            r"(?s)`images` to be a \[N, C, H, W\] tensor, but got array\(.*\(ndarray\)",
        ),
        (
            {"images": torch.zeros(40, 3, 32, 32, dtype=torch.int64)},
            TypeError,
            r"`images` to be uint8 \(0-255\) or floating point \(0-1\), but got a torch.int64 tensor",
        ),
        (
            {"labels": list(range(40))},
            TypeError,
            r"`labels` to be an integer tensor of class indices, but got \[0, 1, .* \(list\)",
        ),
        (
            {"labels": torch.zeros(40)},
            TypeError,
            r"`labels` to be an integer tensor of class indices, but got a torch.float32 tensor",
        ),
        ({"batch_size": 8.0}, TypeError, r"`batch_size` to be an int >= 1, but got 8.0 \(float\)"),
        ({"batch_size": True}, TypeError, r"`batch_size` to be an int >= 1, but got True \(bool\)"),
        ({"world_size": "2"}, TypeError, r"`world_size` to be an int >= 1, but got '2' \(str\)"),
        ({"rank": 0.0}, TypeError, r"`rank` to be an int >= 0, but got 0.0 \(float\)"),
        ({"seed": 1.5}, TypeError, r"`seed` to be an int >= 0, but got 1.5 \(float\)"),
        ({"pad": None}, TypeError, r"`pad` to be an int >= 0, but got None \(NoneType\)"),
        (
            {"mean": 0.5},
            TypeError,
            r"`mean` to be a sequence of 3 floats \(one per channel\), but got 0.5 \(float\)",
        ),
        ({"std": "abc"}, TypeError, r"`std` to be a sequence of 3 floats .* but got 'abc' \(str\)"),
        ({"mean": (0.5, "0.5", 0.5)}, TypeError, r"`mean` to be a sequence of 3 floats"),
        ({"std": torch.ones(1, 3)}, TypeError, r"`std` to be a sequence of 3 floats"),
        ({"train": "yes"}, TypeError, r"`train` to be a bool, but got 'yes' \(str\)"),
        ({"flip": 1}, TypeError, r"`flip` to be a bool, but got 1 \(int\)"),
        ({"drop_last": None}, TypeError, r"`drop_last` to be a bool, but got None"),
        ({"channels_last": 0}, TypeError, r"`channels_last` to be a bool, but got 0 \(int\)"),
        (
            {"dtype": "float32"},
            TypeError,
            r"`dtype` to be a torch.dtype, but got 'float32' \(str\)",
        ),
        (
            {"device": 1.5},
            TypeError,
            r"`device` to be a torch.device or a string, but got 1.5 \(float\)",
        ),
        (
            {"partition": torch.ones(2, 10) / 2},
            TypeError,
            r"`partition` to be an integer or bool tensor of group ids",
        ),
    ],
)
def test_bad_input(kwargs, error, match):
    images, labels = _images(40)
    arguments = {
        "images": images,
        "labels": labels,
        "batch_size": 8,
        "mean": MEAN,
        "std": STD,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        DeviceBatches(arguments.pop("images"), arguments.pop("labels"), **arguments)


def test_set_epoch_checks_its_argument():
    images, labels = _images(8)
    batches = DeviceBatches(images, labels, batch_size=4, mean=MEAN, std=STD)
    with pytest.raises(TypeError, match=r"`epoch` to be an int >= 0, but got '1' \(str\)"):
        batches.set_epoch("1")
    with pytest.raises(ValueError, match=r"`epoch` to be an int >= 0, but got -1"):
        batches.set_epoch(-1)


def test_mean_and_std_as_tensors_or_arrays_normalise_alike():
    images, labels = _images(8)
    reference = torch.cat(
        [x for x, _ in DeviceBatches(images, labels, batch_size=4, mean=MEAN, std=STD, train=False)]
    )
    for mean, std in ((torch.tensor(MEAN), torch.tensor(STD)), (np.array(MEAN), list(STD))):
        batches = DeviceBatches(images, labels, batch_size=4, mean=mean, std=std, train=False)
        assert torch.equal(torch.cat([x for x, _ in batches]), reference)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"images": [[0]]},
            TypeError,
            r"`images` to be a \[B, C, H, W\] tensor, but got \[\[0\]\] \(list\)",
        ),
        ({"images": torch.zeros(2, 32, 32)}, ValueError, r"`images` to be a \[B, C, H, W\] tensor"),
        (
            {"offsets": torch.zeros(2, 2)},
            TypeError,
            r"`offsets` to be an integer tensor, but got a torch.float32 tensor of shape \(2, 2\)",
        ),
        ({"offsets": [[0, 0], [0, 0]]}, TypeError, r"`offsets` to be an integer tensor"),
        (
            {"offsets": torch.zeros(2, 3, dtype=torch.long)},
            ValueError,
            r"`offsets` to have shape \[2, 2\], but got a torch.int64 tensor of shape \(2, 3\)",
        ),
        (
            {"flips": torch.zeros(2, dtype=torch.long)},
            TypeError,
            r"`flips` to be a bool tensor, but got a torch.int64 tensor",
        ),
        ({"flips": [True, False]}, TypeError, r"`flips` to be a bool tensor"),
        (
            {"flips": torch.zeros(3, dtype=torch.bool)},
            ValueError,
            r"`flips` to have shape \[2\], but got a torch.bool tensor of shape \(3,\)",
        ),
        ({"pad": 4.0}, TypeError, r"`pad` to be an int >= 0, but got 4.0 \(float\)"),
        ({"pad": -1}, ValueError, r"`pad` to be an int >= 0, but got -1"),
    ],
)
def test_crop_flip_bad_input(kwargs, error, match):
    arguments = {
        "images": _images(2)[0],
        "offsets": torch.zeros(2, 2, dtype=torch.long),
        "flips": torch.zeros(2, dtype=torch.bool),
        "pad": 4,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        crop_flip(
            arguments.pop("images"), arguments.pop("offsets"), arguments.pop("flips"), **arguments
        )


def _write_cifar(root, n_train=12, n_test=6):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": list(range(n)),
            "coarse_labels": [0] * n,
        }
        with (folder / split).open("wb") as handle:
            pickle.dump(entry, handle)
    return rng


def test_load_cifar100_from_a_local_folder(tmp_path):
    _write_cifar(tmp_path)
    images, labels = load_cifar100(tmp_path, train=True)
    assert images.shape == (12, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert labels.tolist() == list(range(12))
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())["data"]
    assert torch.equal(
        images[3], torch.from_numpy(raw[3].reshape(3, 32, 32))
    )  # CHW, row-major as stored
    assert load_cifar100(tmp_path, train=False)[0].shape == (6, 3, 32, 32)


def test_superclasses_come_from_the_files_own_coarse_labels(tmp_path):
    from auxtransfer import group_partition
    from auxtransfer.experiments import cifar100_superclasses
    from auxtransfer.experiments.splits import split_classes

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [c for c in range(100) for _ in range(3)]
    coarse_of = [(7 * c + 3) % 20 for c in range(100)]  # any map, as long as it is the file's
    entry = {
        "data": np.zeros((300, 3072), dtype=np.uint8),
        "fine_labels": fine,
        "coarse_labels": [coarse_of[c] for c in fine],
    }
    (folder / "train").write_bytes(pickle.dumps(entry))
    superclasses = cifar100_superclasses(tmp_path)
    assert superclasses.tolist() == coarse_of
    # A side of a split: its classes' superclasses, renumbered in order of their ids.
    a_classes, _ = split_classes(100, seed=0)
    table = group_partition(superclasses, classes=a_classes)
    present = sorted({coarse_of[c] for c in a_classes})
    assert table.tolist() == [[present.index(coarse_of[c]) for c in a_classes]]

    entry["coarse_labels"] = [coarse_of[c] for c in fine[:-1]] + [(coarse_of[99] + 1) % 20]
    (folder / "train").write_bytes(pickle.dumps(entry))
    with pytest.raises(
        ValueError, match=r"fine class 99 .* one coarse class in \[0, 20\), but it has \[\d+, \d+\]"
    ):
        cifar100_superclasses(tmp_path)
    del entry["coarse_labels"]
    (folder / "train").write_bytes(pickle.dumps(entry))
    with pytest.raises(ValueError, match=r"'fine_labels' and 'coarse_labels'"):
        cifar100_superclasses(tmp_path)


def _coarse_run(**kwargs):
    from auxtransfer.experiments import RunConfig

    settings = {"num_classes": 50, "binary_weight": 0.4, "aux_labels": "coarse", "num_groups": 20}
    return RunConfig("cifar_densenet_bc_100", epochs=1, **{**settings, **kwargs})


@pytest.mark.parametrize("side", ["A", "B"])
def test_a_coarse_run_gets_the_superclasses_of_its_own_classes(tmp_path, side):
    """Cifar100's coarse labels come from its files, cut to the run's side and renumbered,
    checked against a hand loop; the other runs get none."""
    from auxtransfer.experiments.sources import Cifar100, run_partition_for
    from auxtransfer.experiments.splits import split_classes

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    coarse_of = [(7 * c + 3) % 20 for c in range(100)]
    entry = {
        "data": np.zeros((100, 3072), dtype=np.uint8),
        "fine_labels": list(range(100)),
        "coarse_labels": coarse_of,
    }
    (folder / "train").write_bytes(pickle.dumps(entry))
    source = Cifar100(tmp_path)
    a_classes, b_classes = split_classes(100, seed=4)
    classes = a_classes if side == "A" else b_classes
    table = run_partition_for(_coarse_run(side=side, split_seed=4), source)
    names: dict[int, int] = {}
    for c in sorted(classes, key=lambda c: coarse_of[c]):  # renumbered in order of their ids
        names.setdefault(coarse_of[c], len(names))
    assert table.tolist() == [[names[coarse_of[c]] for c in classes]]
    everything = run_partition_for(_coarse_run(num_classes=100), source)
    assert everything.tolist() == [coarse_of]
    for other in (_coarse_run(binary_weight=0.0), _coarse_run(aux_labels="random")):
        assert run_partition_for(other, source) is None


def test_synthetic_coarse_labels_are_twenty_balanced_superclasses():
    from auxtransfer.experiments.sources import SyntheticCifar100

    coarse = SyntheticCifar100().coarse_labels()
    assert coarse.bincount().tolist() == [5] * 20
    assert torch.equal(coarse, SyntheticCifar100().coarse_labels())
    assert not torch.equal(coarse, SyntheticCifar100(seed=1).coarse_labels())


def test_coarse_labels_the_data_does_not_have_are_named():
    from auxtransfer.experiments.sources import SyntheticCifar100, run_partition_for

    class Plain(SyntheticCifar100):
        coarse_labels = None

    with pytest.raises(ValueError, match=r"data source with coarse labels .* Plain\(.*\) has none"):
        run_partition_for(_coarse_run(side="A", split_seed=0), Plain())
    with pytest.raises(ValueError, match=r"`num_groups` to be the 20 coarse classes .* got 10"):
        run_partition_for(_coarse_run(side="A", split_seed=0, num_groups=10), SyntheticCifar100())


def test_missing_data_says_both_ways_and_writes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "data"
    with pytest.raises(
        FileNotFoundError, match=r"download=True .* copy the unpacked 'cifar-100-python' folder"
    ):
        load_cifar100(root, train=True)
    assert not root.exists()

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(
        FileNotFoundError, match=r"downloading it failed \(OSError: network is unreachable\)"
    ):
        load_cifar100(root, train=True, download=True)
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    with pytest.raises(ValueError, match=r"CIFAR-100 batch with 'data' and 'fine_labels'"):
        load_cifar100(tmp_path, train=True)


class _Exploit:
    def __reduce__(self):
        return (print, ("ARBITRARY CODE RAN",))


def test_a_crafted_pickle_cannot_run_code(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps({"data": _Exploit(), "fine_labels": []}))
    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        load_cifar100(tmp_path, train=True)
    assert "ARBITRARY CODE RAN" not in capsys.readouterr().out
    (folder / "train").write_bytes(
        pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 300]})
    )
    with pytest.raises(
        ValueError, match=r"labels .* to be in \[0, 100\), but they span \[0, 300\]"
    ):
        load_cifar100(tmp_path, train=True)
    (folder / "train").write_bytes(
        pickle.dumps({"data": np.zeros((2, 3072), np.int64), "fine_labels": [0, 1]})
    )
    with pytest.raises(ValueError, match=r"\[N, 3072\] uint8 images"):
        load_cifar100(tmp_path, train=True)
    (folder / "train").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match=r"reading it failed"):
        load_cifar100(tmp_path, train=True)


class _Normalised(torch.utils.data.Dataset):
    """Images normalised one by one, as a torchvision transform would."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return (self.images[index].float() / 255 - self.mean) / self.std, int(self.labels[index])


@pytest.mark.parametrize(("world", "train"), [(1, True), (3, True), (2, False)])
def test_loader_batches_match_device_batches(world, train):
    from auxtransfer.experiments.batches import LoaderBatches

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (23,), generator=g)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    partition = torch.tensor([[0, 1, 1, 0]])
    dataset = _Normalised(images, labels, mean, std)
    for rank in range(world):
        common = {"batch_size": 4, "train": train, "seed": 3, "partition": partition}
        common.update(rank=rank, world_size=world)
        ours = LoaderBatches(dataset, **common)
        # The same order; no crop or flip, which the dataset's transforms would do.
        reference = DeviceBatches(images, labels, mean=mean, std=std, pad=0, flip=False, **common)
        for epoch in (1, 2):
            ours.set_epoch(epoch)
            reference.set_epoch(epoch)
            pairs = list(zip(ours, reference, strict=True))
            assert len(pairs) == len(ours) == len(reference)
            for a, b in pairs:
                torch.testing.assert_close(a[0], b[0])
                assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
                assert torch.equal(ours.last_batch_original, reference.last_batch_original)


def test_train_run_takes_datasets(tmp_path):
    from auxtransfer.experiments.train import RunConfig, train_run

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (24,), generator=g)
    data = _Normalised(images, labels, (0.5,) * 3, (0.25,) * 3)
    config = RunConfig(
        model="cifar_densenet_bc_100", model_kwargs={"depth": 10, "growth_rate": 4},
        num_classes=3, epochs=2, batch_size=8, binary_weight=0.4, num_workers=1,
    )  # fmt: skip
    straight = train_run(config, tmp_path / "straight", data, data)
    assert straight["epochs"] == 2
    assert train_run(config, tmp_path / "resumed", data, data, stop_after=1) is None
    assert train_run(config, tmp_path / "resumed", data, data, resume=True) == straight
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"`mean` and `std` with \(images, labels\) tensors"):
        train_run(config, tmp_path / "tensors", (images, labels), (images, labels))
    assert not (tmp_path / "tensors").exists()
