import torch
import torchvision

from auxtransfer import RandomPartitionHead


def test_ddp_two_ranks_on_cpu(tmp_path, torchrun):
    torchrun("ddp_worker.py", tmp_path)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    torch.manual_seed(0)
    initial = RandomPartitionHead(
        torchvision.models.resnet18(num_classes=10), num_partitions=2
    ).state_dict()
    assert rank0.keys() == rank1.keys() == initial.keys()
    # Gradients are averaged, so parameters agree bitwise; BatchNorm running statistics are
    # each rank's own (DDP re-broadcasts rank 0's at the start of every forward).
    parameters = {
        name
        for name, _ in RandomPartitionHead(
            torchvision.models.resnet18(num_classes=10)
        ).named_parameters()
    }
    for key in [*parameters, "partition"]:
        assert torch.equal(rank0[key], rank1[key]), key
    # Training moved the binary head and the backbone alike.
    assert not torch.equal(rank0["aux_head.weight"], initial["aux_head.weight"])
    assert not torch.equal(rank0["backbone.conv1.weight"], initial["backbone.conv1.weight"])
