import pickle

import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from auxtransfer import RandomPartitionHead, binary_relabel, class_partition


def _tensor_dataset(n=20, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


class _PlainDataset(Dataset):
    """No `targets`: labels are only known item by item."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.full((2,), float(index)), self.labels[index]


def test_yields_triples_with_the_heads_labels():
    data = _tensor_dataset()
    partition = class_partition(10, num_partitions=3, seed=4)
    wrapped = binary_relabel(data, partition)
    assert len(wrapped) == len(data)
    net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), partition=partition)
    for i in range(len(data)):
        x, y, y_b = wrapped[i]
        assert torch.equal(x, data[i][0])
        assert torch.equal(y, data[i][1])
        assert y_b.dtype == torch.long
        assert y_b.shape == (3,)
        assert torch.equal(y_b, net.relabel(y.view(1))[0])
        assert y_b.tolist() == [int(partition[j, int(y)]) for j in range(3)]


def test_reads_targets_without_loading_inputs():
    data = _tensor_dataset()
    wrapped = binary_relabel(data, class_partition(10))
    assert torch.equal(wrapped.targets, data.tensors[1])
    assert torch.equal(wrapped.binary_targets, class_partition(10).t()[data.tensors[1]])

    subset = Subset(data, [3, 1, 4])
    wrapped = binary_relabel(subset, class_partition(10))
    assert wrapped.targets.tolist() == [int(data.tensors[1][i]) for i in (3, 1, 4)]

    assert binary_relabel(_PlainDataset([0, 1]), class_partition(10)).targets is None


def test_labels_checked_from_targets_alone():
    class ImagesNotLoaded(_PlainDataset):
        targets = (0, 3, 12)

        def __getitem__(self, index):
            raise AssertionError("the wrapper must not load items to read the labels")

    with pytest.raises(ValueError, match=r"item 2 has label 12"):
        binary_relabel(ImagesNotLoaded([0, 3, 12]), class_partition(10))
    ImagesNotLoaded.targets = (0, 3, 9)
    wrapped = binary_relabel(ImagesNotLoaded([0, 3, 9]), class_partition(10))
    assert torch.equal(wrapped.binary_targets, class_partition(10).t()[torch.tensor([0, 3, 9])])


def test_torchvision_dataset(tmp_path):
    # A small generated ImageFolder: torchvision's own dataset class with `.targets`.
    for cls in ("cat", "dog", "emu"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (4, 4)).save(tmp_path / cls / f"{i}.png")
    folder = torchvision.datasets.ImageFolder(
        str(tmp_path), transform=torchvision.transforms.ToTensor()
    )
    partition = torch.tensor([0, 1, 1])
    wrapped = binary_relabel(folder, partition)
    assert wrapped.targets.tolist() == [0, 0, 1, 1, 2, 2]
    x, y, y_b = wrapped[4]
    assert x.shape == (3, 4, 4)
    assert y == 2
    assert y_b.tolist() == [1]


def test_target_transform_is_respected(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (2, 2)).save(tmp_path / cls / "0.png")
    folder = torchvision.datasets.ImageFolder(str(tmp_path), target_transform=lambda y: 1 - y)
    wrapped = binary_relabel(folder, torch.tensor([0, 1]))
    assert wrapped.targets is None  # `.targets` holds labels before the transform
    assert wrapped[0][1] == 1
    assert wrapped[0][2].tolist() == [1]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_through_a_dataloader_with_two_workers(context):
    data = _tensor_dataset(n=24)
    partition = class_partition(10, num_partitions=2, seed=1)
    wrapped = binary_relabel(data, partition)
    loader = DataLoader(wrapped, batch_size=5, num_workers=2, multiprocessing_context=context)
    ys, y_bs = [], []
    for x, y, y_b in loader:
        assert x.shape[1:] == (3, 8, 8)
        assert y_b.shape == (len(y), 2)
        ys.append(y)
        y_bs.append(y_b)
    assert torch.equal(torch.cat(ys), data.tensors[1])
    assert torch.equal(torch.cat(y_bs), partition.t()[data.tensors[1]])


def test_pickles():
    wrapped = binary_relabel(_tensor_dataset(), class_partition(10))
    clone = pickle.loads(pickle.dumps(wrapped))
    assert torch.equal(clone[3][2], wrapped[3][2])
    assert "partitions=1, classes=10" in repr(wrapped)


def test_bad_labels():
    data = TensorDataset(torch.zeros(3, 1), torch.tensor([0, 10, 2]))
    with pytest.raises(
        ValueError,
        match=r"labels of `dataset` to be class indices in \[0, 10\) .* item 1 has label 10",
    ):
        binary_relabel(data, class_partition(10))
    plain = binary_relabel(_PlainDataset([0, -1]), class_partition(10))
    assert plain[0][2].shape == (1,)
    with pytest.raises(ValueError, match=r"item 1 has label -1"):
        plain[1]
    with pytest.raises(
        TypeError, match=r"label of item 0 to be an integer class index, but got 0.5"
    ):
        binary_relabel(_PlainDataset([0.5]), class_partition(10))[0]


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"`dataset` to be a map-style dataset"):
        binary_relabel(iter([]), class_partition(10))
    with pytest.raises(
        ValueError, match=r"`partition` to hold group ids >= 0, but got the value -1"
    ):
        binary_relabel(_tensor_dataset(), torch.arange(10) - 1)
    with pytest.raises(ValueError, match=r"row 0 leaves group 1 empty"):
        binary_relabel(_tensor_dataset(), torch.tensor([0, 2] * 5))
    with pytest.raises(TypeError, match=r"`partition` to be a tensor of group ids"):
        binary_relabel(_tensor_dataset(), "0101")
    with pytest.raises(TypeError, match=r"items to be \(x, y\) pairs, but item 0 is"):
        binary_relabel(TensorDataset(torch.zeros(2, 1)), class_partition(10))[0]
