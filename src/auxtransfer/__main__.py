"""Command line: ``python -m auxtransfer layers <model>`` prints a model's layer map."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import __version__
from .layers import LayerGroup, layer_groups


def build(name: str, num_classes: int | None, source: str = "auto") -> nn.Module:
    """A model by name, built on the meta device (no weights, no memory).

    A timm or torchvision model name (``source="auto"`` takes timm's where both libraries
    have it), or an import path ``package.module:name`` of an ``nn.Module`` class or a
    function returning one, called without arguments (with ``num_classes=`` when given);
    a Hugging Face model class is built from its default config.
    """
    if ":" in name:
        return _import_model(name, num_classes)
    import timm
    import torchvision

    import auxtransfer.models  # noqa: F401  (registers the CIFAR models with timm)

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    in_timm, in_torchvision = timm.is_model(name), name in torchvision.models.list_models()
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if in_timm and source in ("auto", "timm"):
            return timm.create_model(name, pretrained=False, **kwargs)
        if in_torchvision and source in ("auto", "torchvision"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    where = {"auto": "timm or torchvision", "timm": "timm", "torchvision": "torchvision"}[source]
    raise SystemExit(
        f"unknown model {name!r}: expected a {where} model name, or package.module:name "
        f"of a model class or factory"
    )


def _import_model(path: str, num_classes: int | None) -> nn.Module:
    module_name, _, attribute = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"cannot import model {path!r}: {error}") from None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config_class = getattr(factory, "config_class", None)
        if isinstance(factory, type) and config_class is not None:  # Hugging Face
            config = config_class()
            if num_classes is not None:
                config.num_labels = num_classes
            model = factory(config)
        else:
            model = factory() if num_classes is None else factory(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise SystemExit(f"model {path!r} built {type(model).__name__}, not an nn.Module")
    return model


def _covering_modules(model: nn.Module, group: LayerGroup) -> list[str]:
    """The largest modules whose tensors all belong to ``group``, in order."""
    members = set(group.tensors)
    result: list[str] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        tensors = [prefix + n for n, _ in module.named_parameters()] + [
            prefix + n for n, _ in module.named_buffers()
        ]
        if not tensors or not members.issuperset(tensors):
            continue
        if any(name == r or name.startswith(r + ".") for r in result if r):
            continue
        result.append(name or "<root>")
    if "<root>" in result:
        return result
    # Tensors held directly by a module that also holds other groups' (a position
    # embedding on the encoder, a class token on the model) are listed by name.
    covered = {t for r in result for t in members if t.startswith(r + ".")}
    return result + [t for t in group.tensors if t not in covered]


def format_layers(model: nn.Module) -> str:
    """The table ``python -m auxtransfer layers`` prints."""
    groups = layer_groups(model)
    rows = [("address", "params", "modules")]
    for group in groups:
        rows.append(
            (group.address, f"{group.num_params:,}", ", ".join(_covering_modules(model, group)))
        )
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{width[0]}}  {p:>{width[1]}}  {m}" for a, p, m in rows]
    total = sum(g.num_params for g in groups)
    lines.append(f"{len(groups)} addresses, {total:,} parameters")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auxtransfer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"auxtransfer {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    layers = commands.add_parser("layers", help="print the address table of a model")
    layers.add_argument(
        "model",
        help="a timm or torchvision model name (resnet50, densenet121), or package.module:name "
        "of a model class or factory (transformers:ViTForImageClassification, "
        "mypackage.nets:MyNet)",
    )
    layers.add_argument(
        "--num-classes", type=int, default=None, help="classifier size (default: the model's)"
    )
    layers.add_argument(
        "--source",
        choices=["auto", "timm", "torchvision"],
        default="auto",
        help="library to take the model from (auto: timm where both have the name)",
    )
    args = parser.parse_args(argv)
    model = build(args.model, args.num_classes, args.source)
    origin = type(model).__module__
    if ":" in args.model:
        library = f"{origin}.{type(model).__name__}"
    elif origin.startswith(("timm.", "auxtransfer.")):
        library = "timm"
    else:
        library = "torchvision"
    print(f"# {args.model} from {library}")
    print(format_layers(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
