"""Find a model's classifier, and give it a fresh one for another number of classes."""

from __future__ import annotations

from typing import Any, NoReturn

import torch
from torch import nn

from ._checks import check_int, check_seed, describe
from ._twin import build_twin, is_transformers_model

__all__ = ["find_classifier", "reset_classifier"]

# Where torchvision keeps its classifiers, in the order they are tried.
_HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
# Module types that can be a final classifier layer.
CLASSIFIER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def find_classifier(model: nn.Module) -> str:
    """Name the module that produces a model's class logits.

    The search, in order: a timm model's ``get_classifier()`` (the first one when it
    returns several, as distilled models do); then the torchvision attributes ``fc``,
    ``classifier``, ``heads`` and ``head``. Where that is a container (VGG's
    ``classifier``, ViT's ``heads``), the last ``Linear`` or ``Conv`` inside it is the
    classifier.

    Args:
        model: Any ``nn.Module``.

    Returns:
        The classifier's name in ``model.named_modules()``.

    Raises:
        ValueError: if no classifier is found; pass its name as ``classifier=`` to
            [`RandomPartitionHead`][auxtransfer.RandomPartitionHead] instead.

    Examples:
        >>> import torchvision
        >>> find_classifier(torchvision.models.vgg11(num_classes=10))
        'classifier.6'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    names = {id(module): name for name, module in model.named_modules() if name}
    tried: list[str] = []
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        # A timm model says itself where its classifier is; when it has none (num_classes=0,
        # or an encoder), the layers inside its head are pre-logits, not a classifier.
        try:
            head = get_classifier()
        except Exception as error:  # timm raises AttributeError for some headless models
            head = None
            tried.append(f"get_classifier() raised {type(error).__name__}")
        if isinstance(head, (tuple, list)):
            head = head[0] if head else None
        if getattr(model, "num_classes", None) == 0:
            tried.append("num_classes=0")
        elif isinstance(head, nn.Module) and id(head) in names:
            found = last_classifier_layer(model, names[id(head)])
            if found is not None:
                return found
            tried.append(f"get_classifier() returned {type(head).__name__}")
        elif head is not None:
            tried.append(f"get_classifier() returned {type(head).__name__}")
        if tried:
            _raise_not_found(model, tried)
    for attribute in _HEAD_ATTRIBUTES:
        if isinstance(getattr(model, attribute, None), nn.Module):
            found = last_classifier_layer(model, attribute)
            if found is not None:
                return found
            tried.append(f"`{attribute}` has no Linear or Conv layer")
    _raise_not_found(model, tried)


def reset_classifier(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Module:
    """Give any timm, torchvision or Hugging Face model a fresh classifier for ``num_classes`` classes.

    timm models (and the CIFAR models of [`auxtransfer.models`][auxtransfer.models]) use
    their own ``reset_classifier``. For torchvision models the new layer is taken from a
    freshly built model of the same architecture, so it is initialised as that family's
    constructor does (zeros for ViT, ``normal(0, 0.01)`` for VGG, ...); for a Hugging Face
    model, from ``type(model)(config)`` with ``num_labels=num_classes``, and its
    ``config.num_labels`` (and ``num_labels``) follow. Any other model gets
    a new layer of the same type as the old one with PyTorch's default initialisation. The
    new layer sits where the old one was, on its device and in its dtype.

    The random draws come from a generator seeded with ``seed``; the caller's random state
    is unchanged. For torchvision models a whole fresh model is built on the CPU, with the
    builder's default arguments, to take its classifier (a second or two for ViT-B).
    Only the main classifier is replaced: GoogLeNet's and Inception v3's auxiliary
    classifiers keep their class count (build those with ``aux_logits=False`` for transfer).

    Args:
        model: A timm, torchvision or Hugging Face model, or any model whose classifier
            [`find_classifier`][auxtransfer.find_classifier] finds.
        num_classes: The new number of classes, at least 1 (0 removes the classifier from
            timm models, as their own ``reset_classifier(0)`` does).
        seed: Seeds the new classifier's weights.

    Returns:
        ``model``, changed in place.

    Examples:
        >>> import torchvision
        >>> model = reset_classifier(torchvision.models.resnet18(), 50)
        >>> model.fc
        Linear(in_features=512, out_features=50, bias=True)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    if getattr(type(model), "_layer_map_delegate", None) is not None:  # RandomPartitionHead
        raise TypeError(
            f"Expected a plain model, but got a {type(model).__name__}: its auxiliary head is tied "
            "to the old classes. Reset the backbone's classifier instead "
            "(reset_classifier(net.unwrap(), num_classes)) and wrap it again if you need a "
            "head for the new classes."
        )
    timm_protocol = callable(getattr(model, "reset_classifier", None)) and callable(
        getattr(model, "get_classifier", None)
    )
    num_classes = check_int("num_classes", num_classes, minimum=0 if timm_protocol else 1)
    seed = check_seed("seed", seed)
    if timm_protocol:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.reset_classifier(num_classes)  # type: ignore[operator]
        return model
    name = find_classifier(model)
    old = model.get_submodule(name)
    new = _fresh_layer(model, name, old, num_classes, seed)
    reference = next(old.parameters(), None)
    if reference is not None:
        new.to(device=reference.device, dtype=reference.dtype)
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, new)
    if isinstance(getattr(model, "num_classes", None), int):
        object.__setattr__(model, "num_classes", num_classes)
    if is_transformers_model(model):
        # A Hugging Face model reads its class count (for its own loss) from these.
        config: Any = getattr(model, "config")  # noqa: B009  (typed as a module)
        config.num_labels = num_classes
        if isinstance(getattr(model, "num_labels", None), int):
            object.__setattr__(model, "num_labels", num_classes)
    return model


def _fresh_layer(
    model: nn.Module, name: str, old: nn.Module, num_classes: int, seed: int
) -> nn.Module:
    # Building a twin is cheap next to what it buys: the family's own classifier init.
    classes_now = classifier_widths(old, name)[1]
    twin = build_twin(model, num_classes=num_classes, seed=seed, names=[], classes_now=classes_now)
    if twin is not None:
        layer = dict(twin.module.named_modules()).get(name)
        if layer is not None and type(layer) is type(old):
            return layer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(old, nn.Linear):
            return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        if isinstance(old, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return type(old)(
                old.in_channels,
                num_classes,
                old.kernel_size,  # type: ignore[arg-type]
                stride=old.stride,  # type: ignore[arg-type]
                padding=old.padding,  # type: ignore[arg-type]
                bias=old.bias is not None,
            )
    raise TypeError(
        f"Expected the classifier `{name}` to be a Linear or Conv layer, but it is a "
        f"{type(old).__name__}."
    )


def _raise_not_found(model: nn.Module, tried: list[str]) -> NoReturn:
    candidates = classifier_layers(model)[-3:]
    detail = f" ({'; '.join(tried)})" if tried else ""
    hint = f", e.g. one of {candidates[::-1]}" if candidates else ""
    raise ValueError(
        f"Expected a timm model with get_classifier() and num_classes > 0, or a module named "
        f"{' / '.join(_HEAD_ATTRIBUTES)}, but could not find the classifier of "
        f"{type(model).__name__}{detail}. Pass the name of the layer that outputs the class "
        f"logits as `classifier=`{hint}."
    )


def classifier_layers(module: nn.Module, prefix: str = "") -> list[str]:
    """Names of the Linear/Conv layers in ``module`` (itself included), in order."""
    return [n for n, m in module.named_modules(prefix=prefix) if isinstance(m, CLASSIFIER_TYPES)]


def last_classifier_layer(model: nn.Module, name: str) -> str | None:
    """The last Linear/Conv layer in the submodule ``name`` (itself included), or None."""
    layers = classifier_layers(model.get_submodule(name), prefix=name)
    return layers[-1] if layers else None


def named_classifier(model: nn.Module, classifier: str | None) -> tuple[str, nn.Module]:
    """The classifier named ``classifier`` (None: ``find_classifier``'s) and its module, or
    the error that says what was given and which layers the model ends with."""
    if classifier is None:
        classifier = find_classifier(model)
    elif not isinstance(classifier, str):
        raise TypeError(
            f"Expected `classifier` to be a module name (str), but got {describe(classifier)}."
        )
    try:
        return classifier, model.get_submodule(classifier)
    except AttributeError:
        raise ValueError(
            f"Expected `classifier` to name a module of {type(model).__name__}, but got "
            f"{classifier!r}; the last Linear/Conv modules are "
            f"{classifier_layers(model)[-3:]}."
        ) from None


def classifier_widths(module: nn.Module, name: str) -> tuple[int, int]:
    """(input features, output classes) of a classifier layer or a container of them."""
    layers = [m for m in module.modules() if isinstance(m, CLASSIFIER_TYPES)]
    if not layers:
        raise TypeError(
            f"Expected `classifier` to name a Linear or Conv layer, or a container of them, "
            f"but `{name}` is a {type(module).__name__} with none inside."
        )
    first, last = layers[0], layers[-1]
    width = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    classes = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    return width, classes
