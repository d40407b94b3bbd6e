"""Pre-train on A with an auxiliary head, transfer to B with frozen layers: in Lightning.

The paper's two phases as two ``Trainer.fit`` calls on one A/B class split of CIFAR-100:
an ``AuxTransferModule`` with the binary head (weight 0.4) on A, then its backbone with a
new classifier on B, every layer up to ``--until`` frozen (``FreezeUntil``, with the
BatchNorm policy ``--bn``) and, from ``--unfreeze-at-epoch`` on, trained again at
``--unfreeze-lr``. Needs ``pip install "auxtransfer[lightning]"``.

  python examples/lightning_transfer.py --smoke                        # seconds, synthetic
  python examples/lightning_transfer.py --data-root data --download --epochs-a 175 --epochs-b 40
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import lightning as L
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)
from auxtransfer import reset_classifier
from auxtransfer.experiments.sources import Cifar100, Images, SyntheticCifar100, run_data
from auxtransfer.lightning import AuxTransferModule, FreezeUntil


def loaders(side: Images, test: Images, mean: Sequence[float], std: Sequence[float], batch: int):
    """Normalised float images in a shuffled training loader and a test loader."""

    def normalised(images: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(mean).view(1, 3, 1, 1)
        s = torch.tensor(std).view(1, 3, 1, 1)
        return (images.float() / 255 - m) / s

    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(normalised(side[0]), side[1]), batch_size=batch,
                       shuffle=True, generator=g)  # fmt: skip
    return train, DataLoader(TensorDataset(normalised(test[0]), test[1]), batch_size=256)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", default="data", help="folder holding cifar-100-python")
    parser.add_argument("--download", action="store_true", help="download CIFAR-100 if missing")
    parser.add_argument("--split-seed", type=int, default=0, help="the A/B class split")
    parser.add_argument("--model", default="cifar_densenet_bc_100", help="a timm model name")
    parser.add_argument("--epochs-a", type=int, default=175, help="pre-training epochs on A")
    parser.add_argument("--epochs-b", type=int, default=40, help="transfer epochs on B")
    parser.add_argument("--weight", type=float, default=0.4, help="the auxiliary term's weight")
    parser.add_argument("--until", default="2", help="freeze the stem up to this address on B")
    parser.add_argument("--bn", choices=["freeze", "update"], default="freeze",
                        help="BatchNorm of the frozen layers")  # fmt: skip
    parser.add_argument("--unfreeze-at-epoch", type=int, default=None,
                        help="train the frozen layers again from this epoch of B (0-based)")  # fmt: skip
    parser.add_argument("--unfreeze-lr", type=float, default=0.001,
                        help="their learning rate from then on")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny DenseNet-BC, synthetic CIFAR-shaped data, 1 epoch each")  # fmt: skip
    args = parser.parse_args(argv)

    kwargs = {}
    if args.smoke:
        source = SyntheticCifar100(train_per_class=4, test_per_class=2)
        kwargs = {"depth": 10, "growth_rate": 4}
        args.epochs_a, args.epochs_b, args.batch_size = 1, 1, 16
        args.unfreeze_at_epoch = 0 if args.unfreeze_at_epoch is None else args.unfreeze_at_epoch
    else:
        source = Cifar100(args.data_root, download=args.download)
    whole = source.load()
    trainer_options = {"accelerator": "auto", "devices": 1, "logger": False,
                       "enable_checkpointing": False, "enable_progress_bar": not args.smoke}  # fmt: skip

    # A: the classifier and the binary head.
    (a_train, a_test) = run_data(whole, num_classes=100, side="A", split_seed=args.split_seed)
    backbone = timm.create_model(args.model, num_classes=50, **kwargs)
    # The paper's drops, 0.1 / 0.01 / 0.001 from epochs 1 / 126 / 151 of 175, at the same
    # fractions of --epochs-a (Lightning counts epochs from 0).
    drops = [max(1, args.epochs_a * m // 175) for m in (125, 150)]
    module_a = AuxTransferModule(backbone, num_classes=50, weight=args.weight, lr=0.1,
                                 milestones=drops)  # fmt: skip
    trainer_a = L.Trainer(max_epochs=args.epochs_a, **trainer_options)
    trainer_a.fit(module_a, *loaders(a_train, a_test, source.mean, source.std, args.batch_size))

    # B: A's backbone with a new classifier, frozen up to --until.
    (b_train, b_test) = run_data(whole, num_classes=100, side="B", split_seed=args.split_seed)
    reset_classifier(backbone, 50, seed=0)
    module_b = AuxTransferModule(backbone, num_classes=50, weight=0.0, lr=0.01)
    freeze = FreezeUntil(args.until, bn=args.bn, unfreeze_at_epoch=args.unfreeze_at_epoch,
                         lr=args.unfreeze_lr if args.unfreeze_at_epoch is not None else None)  # fmt: skip
    trainer_b = L.Trainer(max_epochs=args.epochs_b, callbacks=[freeze], **trainer_options)
    trainer_b.fit(module_b, *loaders(b_train, b_test, source.mean, source.std, args.batch_size))
    print(f"frozen on B: {freeze.summary}")
    results = {
        "a_val_acc": float(trainer_a.callback_metrics["val/acc"]),
        "b_val_acc": float(trainer_b.callback_metrics["val/acc"]),
    }
    print(f"accuracy on A's test set {results['a_val_acc']:.3f}, on B's {results['b_val_acc']:.3f}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
