"""Run by test_ddp.py under torchrun: a few DDP steps of a wrapped model on the CPU."""

import os
import sys

import torch
import torch.distributed as dist
import torchvision
from torch.nn.parallel import DistributedDataParallel

from auxtransfer import CombinedLoss, RandomPartitionHead


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)  # the same initial backbone on every rank
    net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), num_partitions=2, seed=0)
    model = DistributedDataParallel(
        net
    )  # find_unused_parameters=False: every parameter must get a gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
    for weight in (0.4, 0.4, 0.0, 1.0):
        x = torch.randn(4, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        loss = CombinedLoss(weight)(model(x), y, net.relabel(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(net.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
