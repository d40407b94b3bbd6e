"""The paper's CIFAR networks and a small CNN for 8x8 digits, registered with timm.

Importing this module registers them::

    import timm
    import auxtransfer.models

    model = timm.create_model("cifar_densenet_bc_100", num_classes=50)
    model = timm.create_model("cifar_wrn_28_10", num_classes=50)
    model = timm.create_model("digits_cnn", num_classes=5)

The CIFAR names carry a ``cifar_`` prefix that no timm model uses; their ``pretrained_cfg``
says 32x32 inputs and the CIFAR-100 mean and standard deviation. ``digits_cnn``'s says
one-channel 8x8 inputs and the mean and standard deviation of scikit-learn's digits (the
training set of ``experiments.sources.Digits``). There are no pretrained weights.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .densenet import CifarDenseNet
from .digits import DigitsCNN
from .wrn import WideResNet

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "CifarDenseNet",
    "DigitsCNN",
    "WideResNet",
]

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
#: scikit-learn's digits, the training set of ``experiments.sources.Digits()`` (0-1 units).
DIGITS_MEAN = (0.3058,)
DIGITS_STD = (0.3763,)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "features.conv0",
        "classifier": "classifier",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "cifar_densenet_bc_100": _cfg(),
        "cifar_wrn_28_10": _cfg(first_conv="conv1", classifier="fc"),
        "digits_cnn": _cfg(
            num_classes=10,
            input_size=(1, 8, 8),
            pool_size=(4, 4),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            first_conv="stem.0",
            classifier="fc",
        ),
    }
)


def _refuse_pretrained(pretrained: bool, name: str) -> None:
    if pretrained:
        raise ValueError(
            f"Expected `pretrained` to be False ({name} has no pretrained weights), but got True."
        )


@register_model
def cifar_densenet_bc_100(pretrained: bool = False, **kwargs: Any) -> CifarDenseNet:
    """DenseNet-BC-100 (k=12) with the CIFAR stem."""
    _refuse_pretrained(pretrained, "cifar_densenet_bc_100")
    kwargs = {"depth": 100, "growth_rate": 12, **kwargs}
    return build_model_with_cfg(CifarDenseNet, "cifar_densenet_bc_100", pretrained, **kwargs)


@register_model
def cifar_wrn_28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 with dropout 0.3."""
    _refuse_pretrained(pretrained, "cifar_wrn_28_10")
    kwargs = {"depth": 28, "widen_factor": 10, "drop_rate": 0.3, **kwargs}
    return build_model_with_cfg(WideResNet, "cifar_wrn_28_10", pretrained, **kwargs)


@register_model
def digits_cnn(pretrained: bool = False, **kwargs: Any) -> DigitsCNN:
    """A small CNN for 8x8 single-channel images (width 32)."""
    _refuse_pretrained(pretrained, "digits_cnn")
    return build_model_with_cfg(DigitsCNN, "digits_cnn", pretrained, **kwargs)
