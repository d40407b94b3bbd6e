"""Command line: ``python -m auxtransfer layers <model>`` prints a model's layer map."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import __version__
from ._naming import enclosing
from ._trace import TraceError
from .layers import LayerMap, layer_map


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
    known = list(
        dict.fromkeys(
            [
                *(timm.list_models() if source in ("auto", "timm") else ()),
                *(torchvision.models.list_models() if source in ("auto", "torchvision") else ()),
            ]
        )
    )
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise SystemExit(
        f"unknown model {name!r}{hint}: expected a {where} model name, or "
        f"package.module:name of a model class or factory"
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


def _covering_modules(model: nn.Module, layers: LayerMap) -> list[list[str]]:
    """For each group, the largest modules whose tensors all belong to it, in order, then
    the tensors no such module holds (a class token on the model), by name."""
    groups = layers.groups
    group_of = {t: i for i, g in enumerate(groups) for t in g.tensors}
    held: dict[str, set[int]] = {}  # module -> the groups of its tensors, recursively
    for name, _ in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        index = group_of[layers.aliases.get(name, name)]  # a tied tensor: its first name's
        for module in enclosing(name):
            held.setdefault(module, set()).add(index)
    result: list[list[str]] = [[] for _ in groups]
    for name, _ in model.named_modules():
        inside = held.get(name)
        if not inside or len(inside) != 1:
            continue
        parent = name.rpartition(".")[0]
        if name and held.get(parent) == inside:
            continue  # its parent covers it
        result[next(iter(inside))].append(name or "<root>")
    for modules, group in zip(result, groups, strict=True):
        if "<root>" in modules:
            continue
        prefixes = tuple(m + "." for m in modules)
        modules.extend(t for t in group.tensors if not t.startswith(prefixes))
    return result


def format_layers(model: nn.Module, input_size: Sequence[int] | None = None) -> str:
    """The table ``python -m auxtransfer layers`` prints."""
    layers = layer_map(model, input_size=input_size)
    groups = layers.groups
    rows = [("address", "params", "modules")]
    for group, modules in zip(groups, _covering_modules(model, layers), strict=True):
        rows.append((group.address, f"{group.num_params:,}", ", ".join(modules)))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{width[0]}}  {p:>{width[1]}}  {m}" for a, p, m in rows]
    total = sum(g.num_params for g in groups)
    lines.append(f"{len(groups)} addresses, {total:,} parameters")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m auxtransfer",
        description="Print a model's layer map: python -m auxtransfer layers <model>.",
    )
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
    layers.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="one input's size without the batch, e.g. 1 28 28, for a model whose input "
        "size cannot be inferred (default: timm's pretrained_cfg, a Hugging Face config, "
        "or guessed from the first layer)",
    )
    args = parser.parse_args(argv)
    if args.input_size is not None and min(args.input_size) < 1:
        parser.error(f"argument --input-size: expected positive sizes, got {args.input_size}")
    model = build(args.model, args.num_classes, args.source)
    origin = type(model).__module__
    if ":" in args.model:
        library = f"{origin}.{type(model).__name__}"
    elif origin.startswith(("timm.", "auxtransfer.")):
        library = "timm"
    else:
        library = "torchvision"
    try:
        table = format_layers(model, args.input_size)
    except TraceError as error:
        raise SystemExit(
            f"cannot map {args.model!r}: its forward pass did not run (tried {error.tried}); "
            f"pass --input-size with one input's size, e.g. --input-size 1 28 28"
        ) from None
    try:
        print(f"# {args.model} from {library}")
        print(table, flush=True)
    except BrokenPipeError:
        # The reader stopped early (`| head`): no traceback, and none at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
