"""Auxiliary-label pre-training and transfer on synthetic CIFAR-shaped data.

Runs in about a minute on a laptop CPU, with nothing to download:

1. Pre-train a small timm ResNet on dataset A (10 classes) with a binary head that learns
   a random balanced partition of A's classes: loss = 0.6 * CE(y) + 0.4 * CE(y_b).
2. Hand back the plain backbone, give it a new classifier and fine-tune on dataset B
   (10 other classes); report B's test error.

    python examples/quickstart.py --epochs 3 --weight 0.4
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from auxtransfer import CombinedLoss, RandomPartitionHead, reset_classifier


def synthetic_images(num_classes: int, per_class: int, *, seed: int) -> tuple[Tensor, Tensor]:
    """32x32 RGB images, a CIFAR stand-in: a fixed smooth template per class plus noise.

    The templates are the same for every call; ``seed`` draws the noise.
    """
    templates = torch.rand(num_classes, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    templates = F.interpolate(templates, size=32, mode="bilinear")
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return templates[labels] + 0.6 * noise, labels


def batches(images: Tensor, labels: Tensor, batch_size: int, *, generator: torch.Generator | None):
    order = (
        torch.randperm(len(labels), generator=generator) if generator else torch.arange(len(labels))
    )
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


@torch.no_grad()
def test_error(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    model.eval()
    wrong = sum(
        int((model(x).argmax(1) != y).sum())
        for x, y in batches(images, labels, 256, generator=None)
    )
    return 100.0 * wrong / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs on A, and again on B")
    parser.add_argument("--weight", type=float, default=0.4, help="binary loss weight w in [0, 1]")
    parser.add_argument("--partitions", type=int, default=1, help="number of binary heads")
    parser.add_argument("--model", default="resnet10t", help="any timm model name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    # Two disjoint 10-class data sets: A is classes 0-9 of a 20-class set, B the rest.
    train, test = synthetic_images(20, 64, seed=1), synthetic_images(20, 16, seed=2)
    a_train, a_test = [(x[y < 10], y[y < 10]) for x, y in (train, test)]
    b_train, b_test = [(x[y >= 10], y[y >= 10] - 10) for x, y in (train, test)]

    # 1. Pre-train on A with the binary head beside the classifier.
    backbone = timm.create_model(args.model, pretrained=False, num_classes=10)
    net = RandomPartitionHead(backbone, num_partitions=args.partitions, seed=args.seed)
    print(f"partition of A's classes: {net.partition.tolist()}")
    loss_fn = CombinedLoss(args.weight)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        net.train()
        start = time.perf_counter()
        for x, y in batches(*a_train, 32, generator=g):
            loss = loss_fn(net(x), y, net.relabel(y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        terms = loss_fn.last_terms
        print(
            f"A epoch {epoch}: loss {terms.total:.3f} (class {terms.main:.3f}, binary {terms.binary:.3f}), "
            f"test error {test_error(backbone, *a_test):.1f}% [{time.perf_counter() - start:.1f}s]"
        )

    # 2. Transfer: the plain backbone, a fresh classifier for B's classes, fine-tune all layers.
    backbone = net.unwrap()
    reset_classifier(backbone, 10, seed=args.seed)
    opt = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for epoch in range(1, args.epochs + 1):
        backbone.train()
        for x, y in batches(*b_train, 32, generator=g):
            loss = F.cross_entropy(backbone(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(
            f"B epoch {epoch}: loss {loss.item():.3f}, test error {test_error(backbone, *b_test):.1f}%"
        )


if __name__ == "__main__":
    main()
