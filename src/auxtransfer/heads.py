"""The binary partition head that sits beside any backbone's classifier."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, NoReturn

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._checks import check_int, check_labels, check_seed, describe
from .partition import as_partition, class_partition

__all__ = ["AuxOutput", "RandomPartitionHead", "find_classifier"]

# Where torchvision keeps its classifiers, in the order they are tried.
_HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head")
# Module types that can be a final classifier layer.
_CLASSIFIER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Prefix of the attribute through which the classifier's pre-hook hands its input back.
_STORE = "_auxtransfer_inputs"


class AuxOutput(NamedTuple):
    """What :class:`RandomPartitionHead` returns.

    Attributes:
        logits: The backbone's own class logits, ``[B, C]``.
        aux_logits: The binary heads' logits, ``[B, n, 2]``.
    """

    logits: Tensor
    aux_logits: Tensor


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
            :class:`RandomPartitionHead` instead.

    Example:
        >>> import torchvision
        >>> find_classifier(torchvision.models.vgg11(num_classes=10))
        'classifier.6'
    """
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
            found = _last_classifier_layer(model, names[id(head)])
            if found is not None:
                return found
            tried.append(f"get_classifier() returned {type(head).__name__}")
        elif head is not None:
            tried.append(f"get_classifier() returned {type(head).__name__}")
        if tried:
            _raise_not_found(model, tried)
    for attribute in _HEAD_ATTRIBUTES:
        if isinstance(getattr(model, attribute, None), nn.Module):
            found = _last_classifier_layer(model, attribute)
            if found is not None:
                return found
            tried.append(f"`{attribute}` has no Linear or Conv layer")
    _raise_not_found(model, tried)


def _raise_not_found(model: nn.Module, tried: list[str]) -> NoReturn:
    candidates = _classifier_layers(model)[-3:]
    detail = f" ({'; '.join(tried)})" if tried else ""
    hint = f", e.g. one of {candidates[::-1]}" if candidates else ""
    raise ValueError(
        f"Could not find the classifier of {type(model).__name__}{detail}. Expected a timm "
        f"model with get_classifier() and num_classes > 0, or a module named "
        f"{' / '.join(_HEAD_ATTRIBUTES)}. Pass the name of the layer that outputs the class "
        f"logits as `classifier=`{hint}."
    )


def _classifier_layers(module: nn.Module, prefix: str = "") -> list[str]:
    """Names of the Linear/Conv layers in ``module`` (itself included), in order."""
    return [n for n, m in module.named_modules(prefix=prefix) if isinstance(m, _CLASSIFIER_TYPES)]


def _last_classifier_layer(model: nn.Module, name: str) -> str | None:
    layers = _classifier_layers(model.get_submodule(name), prefix=name)
    return layers[-1] if layers else None


def _layer_widths(module: nn.Module, name: str) -> tuple[int, int]:
    """(input features, output classes) of a classifier layer or a container of them."""
    layers = [m for m in module.modules() if isinstance(m, _CLASSIFIER_TYPES)]
    if not layers:
        raise TypeError(
            f"Expected `classifier` to name a Linear or Conv layer, or a container of them, "
            f"but `{name}` is a {type(module).__name__} with none inside."
        )
    first, last = layers[0], layers[-1]
    width = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    classes = last.out_features if isinstance(last, nn.Linear) else last.out_channels
    return width, classes


def _pooling_head(model: nn.Module, classifier: str) -> str | None:
    """The innermost module above ``classifier`` whose forward takes ``pre_logits``."""
    parts = classifier.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:depth])
        forward = getattr(model.get_submodule(name), "forward", None)
        try:
            if forward is not None and "pre_logits" in inspect.signature(forward).parameters:
                return name
        except (TypeError, ValueError):
            continue
    return None


def _capture_input(key: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    # A forward pre-hook on the classifier: while RandomPartitionHead.forward runs, it
    # hands the classifier's input back through a list set on the module under the
    # wrapper's own key, so two wrappers (or a copy's stale hook) never mix. A partial of a
    # module-level function keeps models picklable and deep-copyable.
    store = getattr(module, key, None)
    if store is not None:
        store.append(args[0])


class RandomPartitionHead(nn.Module):
    """Wrap a classifier with binary heads that learn random partitions of its classes.

    Beside the backbone's classifier, a linear layer reads the same features (the
    classifier's input, globally average-pooled when it is a feature map) and predicts, for
    each of ``n`` partitions, which of two groups the image's class belongs to. The
    backbone is not modified: its classifier gets a forward pre-hook that hands its input
    to the binary head, nothing more, so ``net(x).logits`` is exactly what ``backbone(x)``
    returns, and ``net.backbone`` (or :meth:`unwrap`) is the plain model for the transfer
    step.

    Args:
        backbone: Any classification model: a timm model, a torchvision model, or any module
            whose classifier ``classifier=`` names.
        num_partitions: Number of binary heads ``n``, each with its own partition.
            Defaults to 1, or to the number of rows of ``partition``.
        seed: Seeds both the partition (:func:`class_partition`) and the binary head's
            initial weights; no global random state is used.
        partition: A fixed ``[n, C]`` (or ``[C]``) 0/1 tensor instead of a drawn one.
        classifier: Name of the module that outputs the class logits, for models where
            :func:`find_classifier` does not find it. A container names its layers: the
            input width comes from its first Linear/Conv, the class count from its last.

    Shape:
        - Input: whatever the backbone takes.
        - Output: :class:`AuxOutput` with ``logits`` ``[B, C]`` and ``aux_logits``
          ``[B, n, 2]``.

    Example:
        >>> import torch, torchvision
        >>> net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), seed=0)
        >>> out = net(torch.randn(2, 3, 32, 32))
        >>> out.logits.shape, out.aux_logits.shape
        (torch.Size([2, 10]), torch.Size([2, 1, 2]))
        >>> net.relabel(torch.tensor([0, 5, 9])).shape
        torch.Size([3, 1])
    """

    partition: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_partitions: int | None = None,
        seed: int = 0,
        partition: Tensor | Sequence[Sequence[int]] | None = None,
        classifier: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"Expected `backbone` to be an nn.Module, but got {describe(backbone)}."
            )
        seed = check_seed("seed", seed)
        if classifier is None:
            classifier = find_classifier(backbone)
        elif not isinstance(classifier, str):
            raise TypeError(
                f"Expected `classifier` to be a module name (str), but got {describe(classifier)}."
            )
        try:
            layer = backbone.get_submodule(classifier)
        except AttributeError:
            raise ValueError(
                f"Expected `classifier` to name a module of {type(backbone).__name__}, but got "
                f"{classifier!r}; the last Linear/Conv modules are "
                f"{_classifier_layers(backbone)[-3:]}."
            ) from None
        in_features, num_classes = _layer_widths(layer, classifier)
        if num_classes < 2:
            raise ValueError(
                f"Expected the classifier `{classifier}` to output at least 2 classes, "
                f"but it outputs {num_classes}."
            )

        if num_partitions is not None:
            num_partitions = check_int("num_partitions", num_partitions, minimum=1)
        if partition is not None:
            table = as_partition(partition, num_classes=num_classes)
            if num_partitions is not None and num_partitions != table.shape[0]:
                raise ValueError(
                    f"Expected `num_partitions` to match the {table.shape[0]} rows of `partition`, "
                    f"but got {num_partitions}."
                )
        else:
            table = class_partition(num_classes, num_partitions=num_partitions or 1, seed=seed)

        reference = next(layer.parameters(), None)
        device = reference.device if reference is not None else None
        dtype = reference.dtype if reference is not None else None
        self.backbone = backbone
        self.classifier_name = classifier
        # skip_init: nn.Linear's own initialisation would draw from the global RNG.
        self.aux_head = nn.utils.skip_init(
            nn.Linear, in_features, 2 * table.shape[0], device=device, dtype=dtype
        )
        self.register_buffer("partition", torch.empty_like(table, device=device))
        self.seed = seed
        self._table = table  # the CPU original, so reset_parameters can restore the buffer
        self.reset_parameters()
        # A timm head that classifies every token before pooling them (the CLIP ResNets'
        # attention pool) never computes pooled pre-logits; for such heads the input of the
        # enclosing module with a `pre_logits` switch is kept to compute them.
        self.pooling_head_name = _pooling_head(backbone, classifier)
        self._store = f"{_STORE}_{id(self):x}"
        hook = functools.partial(_capture_input, self._store)
        self._hooks: list[RemovableHandle] | None = [
            backbone.get_submodule(name).register_forward_pre_hook(hook)
            for name in (classifier, self.pooling_head_name)
            if name is not None
        ]

    def reset_parameters(self) -> None:
        """Restore the partition buffer and the binary head's initial weights.

        Both depend on ``seed`` alone. Call it after building on the ``meta`` device and
        ``to_empty()``; the backbone is not touched.
        """
        # nn.Linear's default initialisation, drawn from a private generator on the CPU so
        # the weights depend on the seed alone, not on the device or the global RNG.
        weight, bias = self.aux_head.weight, self.aux_head.bias
        if weight.is_meta:
            return
        with torch.no_grad():
            self.partition.copy_(self._table)
        generator = torch.Generator().manual_seed(self.seed)
        w = torch.empty(weight.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(weight.shape[1])
        b = torch.empty(bias.shape, dtype=torch.float32).uniform_(
            -bound, bound, generator=generator
        )
        with torch.no_grad():
            weight.copy_(w)
            bias.copy_(b)

    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` of the backbone's classifier."""
        return int(self.partition.shape[1])

    @property
    def num_partitions(self) -> int:
        """Number of binary heads ``n``."""
        return int(self.partition.shape[0])

    def forward(self, *args: Any, **kwargs: Any) -> AuxOutput:
        """Run the backbone once; return its logits and the binary heads' logits."""
        if self._hooks is None:
            raise RuntimeError(
                "This RandomPartitionHead was unwrapped; call its former `backbone` directly."
            )
        names = [self.classifier_name]
        if self.pooling_head_name is not None:
            names.append(self.pooling_head_name)
        layers = [self.backbone.get_submodule(name) for name in names]
        stores: list[list[Tensor]] = [[] for _ in layers]
        for layer, store in zip(layers, stores, strict=True):
            setattr(layer, self._store, store)
        try:
            output = self.backbone(*args, **kwargs)
        finally:
            for layer in layers:
                setattr(layer, self._store, None)
        logits = _main_logits(output)
        if not stores[0]:
            raise RuntimeError(
                f"The classifier `{self.classifier_name}` did not run, or was replaced after "
                f"wrapping (by reset_classifier, say): call unwrap() first, change the "
                f"classifier, and wrap the backbone again."
            )
        if len(stores[0]) > 1:
            raise RuntimeError(
                f"Expected the classifier `{self.classifier_name}` to run once per forward, but it "
                f"ran {len(stores[0])} times; pass the layer that outputs the final logits as "
                f"`classifier=`."
            )
        features = stores[0][0]
        if features.dim() == 3 and len(layers) == 2 and len(stores[1]) == 1:
            features = layers[1](stores[1][0], pre_logits=True)
        elif features.dim() > 2:
            # Conv classifiers (SqueezeNet, timm's use_conv heads) read a feature map: pool it.
            features = features.mean(dim=tuple(range(2, features.dim())))
        if features.dim() != 2 or features.shape[1] != self.aux_head.in_features:
            raise RuntimeError(
                f"Expected the classifier `{self.classifier_name}` to read pooled features of "
                f"shape [B, {self.aux_head.in_features}] or a feature map "
                f"[B, {self.aux_head.in_features}, H, W], but it read {tuple(stores[0][0].shape)}; "
                f"pass the layer that reads pooled features as `classifier=`."
            )
        aux_logits = self.aux_head(features).unflatten(-1, (self.num_partitions, 2))
        return AuxOutput(logits, aux_logits)

    # timm's model protocol, passed through so timm's helpers see the backbone's settings.
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm ``pretrained_cfg`` (empty for other models)."""
        return dict(getattr(self.backbone, "pretrained_cfg", None) or {})

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of :attr:`pretrained_cfg`, as timm keeps one."""
        return self.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        """The backbone's ``no_weight_decay()`` names, prefixed with ``backbone.``."""
        names = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in names()} if callable(names) else set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Forward timm's gradient checkpointing switch to the backbone."""
        switch = getattr(self.backbone, "set_grad_checkpointing", None)
        if not callable(switch):
            raise AttributeError(f"{type(self.backbone).__name__} has no set_grad_checkpointing()")
        switch(enable)

    def relabel(self, target: Tensor) -> Tensor:
        """Map class labels to the binary labels of every partition.

        Args:
            target: Class indices in ``[0, C)``, any shape ``S``.

        Returns:
            Binary labels of shape ``S + (n,)``, on ``target``'s device.
        """
        if not isinstance(target, Tensor):
            raise TypeError(
                f"Expected `target` to be a tensor of class indices, but got {describe(target)}."
            )
        check_labels("target", target, self.num_classes)
        return self.partition.to(target.device).t()[target]

    def unwrap(self) -> nn.Module:
        """Remove the hook from the classifier and return the plain backbone.

        The backbone keeps its own classifier and every weight it learned; this wrapper
        can no longer be called afterwards.
        """
        for hook in self._hooks or ():
            hook.remove()
        self._hooks = None
        return self.backbone

    def extra_repr(self) -> str:
        return (
            f"classifier={self.classifier_name!r}, num_classes={self.num_classes}, "
            f"num_partitions={self.num_partitions}"
        )


def _main_logits(output: Any) -> Tensor:
    # torchvision's GoogLeNet and Inception3 return (logits, aux...) namedtuples in training;
    # timm's distilled models may return (logits, logits_dist).
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(getattr(output, "logits", None), Tensor):
        logits = output.logits
    elif isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        logits = output[0]
    else:
        raise TypeError(
            f"Expected the backbone to return a logits tensor (or a tuple starting with one), "
            f"but it returned {describe(output)}."
        )
    if logits.dim() != 2:
        raise RuntimeError(
            f"Expected the backbone to return logits of shape [B, C], but got {tuple(logits.shape)}."
        )
    return logits
