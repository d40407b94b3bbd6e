"""Images per second: DeviceBatches over a torchvision CIFAR100-style pipeline.

The reference is what CIFAR code of the paper's era did: a map-style dataset that turns each
uint8 image into a PIL image and runs RandomCrop(32, padding=4), RandomHorizontalFlip,
ToTensor and Normalize on it, batched by a DataLoader. Both read the same synthetic
CIFAR-shaped data (no download), on the CPU, in one process; the DataLoader is timed with
0 and 2 workers and the faster counts.

    python benchmarks/batches_speed.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from auxtransfer.experiments import DeviceBatches

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class PilCifar(Dataset):
    """torchvision.datasets.CIFAR100's __getitem__: HWC uint8 -> PIL -> transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.data = images.permute(0, 2, 3, 1).numpy()
        self.targets = labels.tolist()
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):  # type: ignore[no-untyped-def]
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def rate(batches, total: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    seen = 0
    for x, _ in batches:
        seen += len(x)
    assert seen == total
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (args.images,), generator=g)

    device = DeviceBatches(images, labels, batch_size=args.batch, mean=MEAN, std=STD)
    rate(device, args.images)  # warm-up
    ours = rate(device, args.images)
    loaders = {}
    for workers in (0, 2):
        loader = DataLoader(
            PilCifar(images, labels), batch_size=args.batch, shuffle=True, num_workers=workers
        )
        loaders[workers] = rate(loader, args.images)
    best = max(loaders.values())
    print(
        f"DeviceBatches (CPU): {ours:,.0f} images/s; torchvision PIL pipeline through a DataLoader: "
        f"{loaders[0]:,.0f} images/s (0 workers), {loaders[2]:,.0f} images/s (2 workers); "
        f"ratio {ours / best:.1f}x over the faster (goal >= 5x), {torch.get_num_threads()} CPU threads"
    )


if __name__ == "__main__":
    main()
