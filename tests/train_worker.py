"""Run by test_train.py under torchrun: two-epoch DDP runs on the CPU with gloo.

``run`` trains straight through; ``resumed`` stops after epoch 1 and is resumed.
"""

import sys
from pathlib import Path

import timm
import torch
import torch.distributed as dist

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer.experiments.train import RunConfig, train_run


def main(out: str) -> None:
    dist.init_process_group("gloo")
    g = torch.Generator().manual_seed(0)
    # 37 images: 19 per rank after wrap-around padding, and a partial last batch.
    images = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (37,), generator=g)
    config = RunConfig(
        model="cifar_wrn_28_10", num_classes=4, epochs=2, lr=0.05, batch_size=8, binary_weight=0.4,
        model_kwargs={"depth": 10, "widen_factor": 1, "drop_rate": 0.3},
    )  # fmt: skip
    built = []

    def build(cfg):
        built.append(timm.create_model(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs))
        return built[-1]

    data = (images, labels), (images[:16], labels[:16])
    kwargs = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "build_model": build}
    train_run(config, Path(out) / "run", *data, **kwargs)
    torch.save(built[0].state_dict(), Path(out) / f"rank{dist.get_rank()}.pt")
    assert train_run(config, Path(out) / "resumed", *data, stop_after=1, **kwargs) is None
    train_run(config, Path(out) / "resumed", *data, resume=True, **kwargs)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
