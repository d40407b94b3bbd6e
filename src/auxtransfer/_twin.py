"""Freshly built twins of a model: where "the model's own initialisation" comes from.

Most models initialise their weights in their constructor (torchvision, most of timm, the
CIFAR models of this package), not in a method that can be called again. A twin is a new
model of the same architecture, built on the CPU under a seed; its tensors are what the
constructor gives, and can be copied into the model.
"""

from __future__ import annotations

import copy
import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from ._checks import describe

__all__: list[str] = []


class Twin(NamedTuple):
    """A freshly built model and where it came from: ``"init"``, ``"timm"``,
    ``"torchvision"`` or ``"transformers"``."""

    module: nn.Module
    source: str


def build_twin(
    model: nn.Module,
    *,
    num_classes: int | None,
    seed: int,
    init: Callable[[], nn.Module] | None = None,
    names: Iterable[str] | None = None,
    match: Iterable[str] | None = None,
    classes_now: int | None = None,
) -> Twin | None:
    """A new model like ``model``, built on the CPU after ``torch.manual_seed(seed)``.

    ``init`` (a callable returning a fresh model) is used when given. Otherwise a Hugging
    Face model is rebuilt from its config, a timm model by its architecture name, and a torchvision classification model by the
    builder whose model (with ``classes_now`` classes, by default ``num_classes``) has the
    tensors ``match`` names (default: all of ``model``'s; leave a replaced classifier out),
    both with ``num_classes`` classes (neither when it is None) and default arguments. A
    Hugging Face model is rebuilt whether or not ``num_classes`` is known: from a copy of
    its config, with ``num_labels=num_classes`` when given (and the config as it is when
    that does not fit). The twin must hold every tensor in ``names`` (default: all) with
    the same shape; None when no twin can be built or none fits, except for a Hugging Face
    model: ValueError when its class cannot be built from its config or its twin does not
    fit. The caller's random state is left unchanged.
    """
    wanted = _shapes(model, names)
    # Builders warn about their defaults (GoogLeNet's init_weights): not the caller's concern.
    with torch.random.fork_rng(devices=[]), _quiet(), torch.device("cpu"):
        if init is not None:
            torch.manual_seed(seed)
            twin = init()
            if not isinstance(twin, nn.Module):
                raise TypeError(
                    f"Expected `init` to return a fresh nn.Module, but it returned {describe(twin)}."
                )
            missing = _misfits(twin, wanted)
            if missing:
                raise ValueError(
                    f"Expected `init` to build a model with the layers of {type(model).__name__}, "
                    f"but its model lacks or reshapes {', '.join(missing[:5])}"
                    f"{', ...' if len(missing) > 5 else ''}."
                )
            return Twin(twin, "init")
        if is_transformers_model(model):
            return Twin(_transformers_twin(model, num_classes, seed, wanted), "transformers")
        if num_classes is None:
            return None
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
        if isinstance(architecture, str):
            import timm

            if timm.is_model(architecture):
                torch.manual_seed(seed)
                twin = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
                if not _misfits(twin, wanted):
                    return Twin(twin, "timm")
        builder = _torchvision_builder(
            model, num_classes if classes_now is None else classes_now, _shapes(model, match)
        )
        if builder is not None:
            torch.manual_seed(seed)
            return Twin(builder(weights=None, num_classes=num_classes), "torchvision")
    return None


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _shapes(model: nn.Module, names: Iterable[str] | None) -> dict[str, tuple[int, ...]]:
    state = model.state_dict(keep_vars=True)
    selected = state if names is None else {n: state[n] for n in names if n in state}
    return {name: tuple(tensor.shape) for name, tensor in selected.items()}


def _misfits(twin: nn.Module, wanted: dict[str, tuple[int, ...]]) -> list[str]:
    """Names in ``wanted`` that ``twin`` lacks or holds with another shape."""
    have = {name: tuple(t.shape) for name, t in twin.state_dict(keep_vars=True).items()}
    return [name for name, shape in wanted.items() if have.get(name) != shape]


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``transformers`` model (without importing it
    unless the model's class comes from there)."""
    if not type(model).__module__.startswith("transformers."):
        return False
    import transformers

    return isinstance(model, transformers.PreTrainedModel)


def _transformers_twin(
    model: nn.Module, num_classes: int | None, seed: int, wanted: dict[str, tuple[int, ...]]
) -> nn.Module:
    """``type(model)(config)`` after ``torch.manual_seed(seed)``: a Hugging Face model
    initialises its weights in its constructor (``post_init``), from its own config.

    The config is a deep copy of the model's, so nothing the twin does reaches the model's.
    With ``num_classes`` (a new class count, or the width of the classifier found) the
    twin has that many labels; when such a twin does not fit ``wanted`` (the width was
    read off a layer that is no classifier), the model's config as it is gives the twin.
    Without it (no classifier found: ImageGPT's ``score``, DeiT's two classifiers,
    Perceiver's decoder, ShieldGemma2's language-model head) the config is taken as it
    is. ValueError when the class cannot be built from its config, or when its model does
    not hold the tensors of ``wanted`` (layers replaced by hand): there is then no own
    initialisation to give them, and ``init_weights()`` on a built model changes nothing
    (transformers marks every module initialised once built).
    """
    config: Any = getattr(model, "config")  # noqa: B009  (typed as a module)
    counts: list[int | None] = [None]
    if num_classes is not None and num_classes != getattr(config, "num_labels", None):
        counts.insert(0, num_classes)
    cls = type(model).__name__
    missing: list[str] = []
    for count in counts:
        fresh_config = copy.deepcopy(config)
        if count is not None:
            fresh_config.num_labels = count
        torch.manual_seed(seed)
        try:
            twin = type(model)(fresh_config)
        except Exception as error:
            raise ValueError(
                f"Expected to build a fresh {cls} from its config (the model's own "
                f"initialisation), but {cls}(config) raised {type(error).__name__}: {error}. "
                f"Pass `init=` (a callable returning a fresh model of the same architecture)."
            ) from error
        missing = _misfits(twin, wanted)
        if not missing:
            return twin
    have = {name: tuple(t.shape) for name, t in twin.state_dict(keep_vars=True).items()}
    described = [
        f"{name} {list(wanted[name])} (it builds "
        f"{'none' if have.get(name) is None else list(have[name])})"
        for name in missing[:5]
    ]
    raise ValueError(
        f"Expected {cls} to hold the layers {cls}(model.config) builds, but it holds "
        f"{', '.join(described)}{', ...' if len(missing) > 5 else ''}: layers replaced by hand "
        f"have no initialisation of the model's own. Update model.config to match (a "
        f"classifier's width is config.num_labels), or pass `init=` (a callable returning a "
        f"fresh model of the same architecture)."
    )


def torchvision_model_class(model: nn.Module) -> bool:
    """Whether ``model`` is of a class that a torchvision classification builder returns."""
    cls = type(model)
    return cls.__module__.startswith("torchvision.models") and cls.__name__ in _builder_classes()


@functools.cache
def _builder_classes() -> frozenset[str]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return frozenset(
        getattr(returns, "__name__", str(returns))
        for returns in (
            inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
            for name in names
        )
    )


def _torchvision_builder(
    model: nn.Module, num_classes: int, match: dict[str, tuple[int, ...]]
) -> Callable[..., nn.Module] | None:
    """The torchvision builder whose model (on the meta device) has ``model``'s layers.

    A builder whose model has as many tensors as ``model`` wins over one that merely holds
    those of ``match`` (a GoogLeNet built without its auxiliary classifiers, say). Builders
    that cannot build on the meta device (RegNet computes its widths with tensor
    operations) are not tried.
    """
    cls = type(model)
    if not torchvision_model_class(model):
        return None
    count = len(model.state_dict())
    signature = (cls, num_classes, count, tuple(sorted(match.items())))
    name = _matching_builder(signature)
    if name is None:
        return None
    import torchvision

    return torchvision.models.get_model_builder(name)


@functools.lru_cache(maxsize=64)
def _matching_builder(
    signature: tuple[type, int, int, tuple[tuple[str, tuple[int, ...]], ...]],
) -> str | None:
    import torchvision

    cls, num_classes, count, items = signature
    wanted = dict(items)
    subset = None
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = torchvision.models.get_model_builder(name)
        returns = inspect.signature(builder).return_annotation
        if getattr(returns, "__name__", returns) != cls.__name__:
            continue
        try:
            with torch.device("meta"), _quiet():
                candidate: nn.Module = builder(weights=None, num_classes=num_classes)
        except Exception:  # some builders compute sizes with tensor ops (RegNet)
            continue
        if type(candidate) is not cls or _misfits(candidate, wanted):
            continue
        if len(candidate.state_dict()) == count:
            return name
        subset = subset or name
    return subset
