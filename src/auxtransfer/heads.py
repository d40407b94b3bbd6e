"""The binary partition head that sits beside any backbone's classifier."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import os
import sys
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ._checks import check_int, check_labels, check_seed, check_unit_float, describe
from ._twin import is_transformers_model
from .classifier import classifier_widths, named_classifier
from .layers import SubmoduleMatcher, layer_map
from .losses import combined_loss
from .partition import as_partition, class_partition

__all__ = ["AuxOutput", "RandomPartitionHead"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Prefix of the attribute through which the classifier's pre-hook hands its input back.
_STORE = "_auxtransfer_inputs"
#: The file that ``save_pretrained`` writes beside the backbone's own: the auxiliary
#: head's weights, the partition and the wrapper's settings.
AUX_WEIGHTS_NAME = "auxtransfer.safetensors"
# Arguments of from_pretrained that say where to find a file on the Hub.
_HUB_ARGUMENTS = (
    "cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder",
)  # fmt: skip


class AuxOutput(NamedTuple):
    """What [`RandomPartitionHead`][auxtransfer.RandomPartitionHead] returns for a backbone
    that returns a tensor or a tuple (timm, torchvision, your own).

    A Hugging Face backbone's ``ModelOutput`` is kept instead, with ``aux_logits`` added
    (see [`RandomPartitionHead`][auxtransfer.RandomPartitionHead]); both have ``logits``
    and ``aux_logits``.

    Attributes:
        logits: The backbone's own class logits, ``[B, C]``.
        aux_logits: The auxiliary heads' logits, ``[B, n, K]`` (``K = 2`` for binary heads).
    """

    logits: Tensor
    aux_logits: Tensor


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


def _capture(key: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    # A forward pre-hook on the classifier: while RandomPartitionHead.forward runs, it
    # hands the classifier's input back through a list set on the module under the
    # wrapper's own key (unique to that wrapper, so two wrappers, or a copy's stale hook,
    # never mix). A partial of a module-level function keeps models picklable and
    # deep-copyable.
    store = getattr(module, key, None)
    if store is not None:
        store.append(args[0])


def _remove_hooks(hooks: list[RemovableHandle]) -> None:
    for hook in hooks:
        hook.remove()


class RandomPartitionHead(nn.Module):
    """Wrap a classifier with auxiliary heads that learn partitions of its classes.

    Beside the backbone's classifier, a linear layer reads the same features (the
    classifier's input, globally average-pooled when it is a feature map) and predicts, for
    each of ``n`` partitions, which of its ``K`` groups the image's class belongs to: two
    (the paper's random binary partition) by default, ``num_groups`` random balanced groups,
    or a given grouping such as superclasses
    ([`group_partition`][auxtransfer.group_partition]) passed as ``partition``. The
    backbone is not modified: its classifier gets a forward pre-hook that hands its input
    to the binary head, nothing more, so ``net(x).logits`` is exactly what ``backbone(x)``
    returns, and ``net.backbone`` (or [`unwrap`][auxtransfer.RandomPartitionHead.unwrap])
    is the plain model for the transfer step. The hook lives as long as the wrapper: it is
    removed by ``unwrap()`` or when the wrapper is garbage-collected.

    The first forward pass checks that the classifier produces the model's logits: its
    output must have the logits' shape and, for a layer found by attribute name (``fc``,
    ``classifier``, ...), be the logits tensor; it fails with a clear message otherwise. A
    layer named with ``classifier=`` or found by timm's ``get_classifier()`` only has to
    have the shape, so models that scale or average their logits can be wrapped.

    On a Hugging Face backbone the wrapper is a Hugging Face model as far as training
    loops need: it returns the backbone's own ``ModelOutput`` (its class and fields, such
    as ``hidden_states``) with ``aux_logits`` added; ``labels=`` go to the backbone, whose
    ``loss`` comes back as it computes it. With ``aux_weight``, the wrapper computes the
    combined loss instead, once: the labels are not passed on, ``outputs.loss`` is
    [`combined_loss`][auxtransfer.combined_loss] of the output with the labels and their
    groups ([`relabel`][auxtransfer.RandomPartitionHead.relabel] is applied inside), so
    ``transformers.Trainer`` and Accelerate loops train with it as they are.
    ``save_pretrained`` and ``from_pretrained`` save and load the backbone the way it does,
    with the auxiliary head beside it; ``config`` is the backbone's. The documentation's
    Hugging Face page has the recipes for ``Trainer`` and Accelerate.

    Args:
        backbone: Any classification model: a timm model, a torchvision model, a Hugging
            Face ``transformers`` model, or any module whose classifier ``classifier=``
            names.
        num_partitions: Number of auxiliary heads ``n``, each with its own partition.
            Defaults to 1, or to the number of rows of ``partition``.
        num_groups: Number of groups ``K`` of a drawn partition, from 2 (the default) to
            ``C``; with ``partition``, the largest group id plus one.
        seed: Seeds both the partition
            ([`class_partition`][auxtransfer.class_partition]) and the auxiliary head's
            initial weights; no global random state is used.
        partition: A fixed ``[n, C]`` (or ``[C]``) tensor of group ids instead of a drawn
            one: 0/1 for binary heads, ``0 .. K-1`` for ``K`` groups, every group used.
        classifier: Name of the module that outputs the class logits, for models where
            [`find_classifier`][auxtransfer.find_classifier] does not find it. A container
            names its layers: the input width comes from its first Linear/Conv, the class
            count from its last.
        aux_weight: For a Hugging Face backbone: the weight ``w`` of the auxiliary term in
            the loss the wrapper returns when it is given ``labels`` (the paper used 0.4).
            ``None`` (the default): ``labels`` go to the backbone and ``loss`` is its own.
            Kept as the attribute ``aux_weight``, and saved by ``save_pretrained``.

    Shape:
        - Input: whatever the backbone takes, and ``labels`` (``[B]`` class indices or
          ``[B, C]`` class probabilities) for a Hugging Face backbone.
        - Output: [`AuxOutput`][auxtransfer.AuxOutput] with ``logits`` ``[B, C]`` and
          ``aux_logits`` ``[B, n, K]``; for a backbone that returns a ``ModelOutput``,
          that output with ``aux_logits`` added (and ``loss``).

    Examples:
        >>> import torch, torchvision
        >>> net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), seed=0)
        >>> out = net(torch.randn(2, 3, 32, 32))
        >>> out.logits.shape, out.aux_logits.shape
        (torch.Size([2, 10]), torch.Size([2, 1, 2]))
        >>> net.relabel(torch.tensor([0, 5, 9])).shape
        torch.Size([3, 1])
        >>> net = RandomPartitionHead(torchvision.models.resnet18(num_classes=10), num_groups=3)
        >>> net(torch.randn(2, 3, 32, 32)).aux_logits.shape
        torch.Size([2, 1, 3])

        A Hugging Face backbone keeps its output, and returns the combined loss:

        >>> import transformers
        >>> config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
        ...                                    depths=[1, 1], num_labels=10)
        >>> backbone = transformers.ResNetForImageClassification(config)
        >>> net = RandomPartitionHead(backbone, seed=0, aux_weight=0.4)
        >>> out = net(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 7]))
        >>> type(out).__name__, list(out.keys())
        ('ImageClassifierOutputWithNoAttention', ['loss', 'logits', 'aux_logits'])
    """

    partition: Tensor
    # The layer map is the backbone's (auxtransfer.layers), without calling group_matcher.
    _layer_map_delegate = "backbone"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_partitions: int | None = None,
        num_groups: int | None = None,
        seed: int = 0,
        partition: Tensor | Sequence[Sequence[int]] | None = None,
        classifier: str | None = None,
        aux_weight: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(
                f"Expected `backbone` to be an nn.Module, but got {describe(backbone)}."
            )
        seed = check_seed("seed", seed)
        if aux_weight is not None:
            aux_weight = _check_aux_weight(backbone, aux_weight)
        self._explicit = classifier is not None
        classifier, layer = named_classifier(backbone, classifier)
        in_features, num_classes = classifier_widths(layer, classifier)
        if num_classes < 2:
            raise ValueError(
                f"Expected the classifier `{classifier}` to output at least 2 classes, "
                f"but it outputs {num_classes}."
            )

        if num_partitions is not None:
            num_partitions = check_int("num_partitions", num_partitions, minimum=1)
        if num_groups is not None:
            num_groups = check_int("num_groups", num_groups, minimum=2)
        if partition is not None:
            table = as_partition(partition, num_classes=num_classes)
            if num_partitions is not None and num_partitions != table.shape[0]:
                raise ValueError(
                    f"Expected `num_partitions` to match the {table.shape[0]} rows of `partition`, "
                    f"but got {num_partitions}."
                )
            groups_in_table = int(table.max()) + 1
            if num_groups is not None and num_groups != groups_in_table:
                raise ValueError(
                    f"Expected `num_groups` to match the {groups_in_table} groups of "
                    f"`partition`, but got {num_groups}."
                )
        else:
            table = class_partition(
                num_classes,
                num_groups=num_groups or 2,
                num_partitions=num_partitions or 1,
                seed=seed,
            )

        reference = next(layer.parameters(), None)
        device = reference.device if reference is not None else None
        dtype = reference.dtype if reference is not None else None
        self.backbone = backbone
        self.classifier_name = classifier
        # skip_init: nn.Linear's own initialisation would draw from the global RNG.
        self._num_groups = int(table.max()) + 1
        self.aux_head = nn.utils.skip_init(
            nn.Linear, in_features, self._num_groups * table.shape[0], device=device, dtype=dtype
        )
        self.register_buffer("partition", torch.empty_like(table, device=device))
        self.seed = seed
        self.aux_weight = aux_weight
        # The partition on the CPU, so reset_parameters can fill the buffer after
        # to_empty(); a loaded state dict replaces it (see _load_from_state_dict).
        self._table = table
        self.reset_parameters()
        # A Conv classifier (SqueezeNet, timm's use_conv heads) reads a feature map, pooled
        # for the binary head; a Linear one reads pooled features.
        first = next(m for m in layer.modules() if isinstance(m, (nn.Linear, *_CONV)))
        self._reads_map = isinstance(first, _CONV)
        # A timm head that classifies every token before pooling them (the CLIP ResNets'
        # attention pool) never computes pooled pre-logits; for such heads the input of the
        # enclosing module with a `pre_logits` switch is kept to compute them.
        self.pooling_head_name = _pooling_head(backbone, classifier)
        self._verified = False
        self._attach_hooks()

    def _attach_hooks(self) -> None:
        self._store = f"{_STORE}_{uuid.uuid4().hex}"
        hook = functools.partial(_capture, self._store)
        hooks = [
            self.backbone.get_submodule(name).register_forward_pre_hook(hook)
            for name in (self.classifier_name, self.pooling_head_name)
            if name is not None
        ]
        self._hooks: list[RemovableHandle] | None = hooks
        weakref.finalize(self, _remove_hooks, hooks)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A copy (deepcopy, pickle) gets hooks on its own backbone with the original's key:
        # give it a key and a lifetime of its own.
        super().__setstate__(state)
        if self._hooks is not None:
            _remove_hooks(self._hooks)
            self._attach_hooks()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        if prefix + "partition" in state_dict and not self.partition.is_meta:
            # The loaded partition is the one reset_parameters() restores from now on.
            table = as_partition(self.partition, num_classes=self.num_classes)
            if int(table.max()) + 1 != self.num_groups:
                raise ValueError(
                    f"Expected the loaded `partition` to have the head's {self.num_groups} "
                    f"groups, but it has {int(table.max()) + 1}."
                )
            self._table = table

    def reset_parameters(self) -> None:
        """Restore the partition buffer and the binary head's initial weights.

        The weights depend on ``seed`` alone; the partition is the one drawn or given at
        construction, or the last one loaded with ``load_state_dict``. Call it after
        building on the ``meta`` device and ``to_empty()``; the backbone is not touched.
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
        """Number of auxiliary heads ``n``."""
        return int(self.partition.shape[0])

    @property
    def num_groups(self) -> int:
        """Number of groups ``K`` of every partition (2 for the paper's binary heads)."""
        return self._num_groups

    def forward(self, *args: Any, labels: Tensor | None = None, **kwargs: Any) -> Any:
        """Run the backbone once; return its logits and the binary heads' logits.

        ``labels`` go to the backbone, unless ``aux_weight`` is set: then the wrapper keeps
        them and returns the combined loss as ``loss``, divided by ``num_items_in_batch``
        where one is given (``transformers.Trainer``'s count of label entries over the
        accumulated batch: one per image for class indices, ``C`` for probabilities) and
        averaged over the batch otherwise.
        """
        if self._hooks is None:
            raise RuntimeError(
                "Expected a RandomPartitionHead that wraps a backbone, but this one was "
                "unwrapped; call its former `backbone` directly."
            )
        own_loss = labels is not None and self.aux_weight is not None
        num_items = kwargs.pop("num_items_in_batch", None) if own_loss else None
        if labels is not None and not args and not kwargs:
            raise ValueError(
                "Expected the backbone's inputs (such as `pixel_values`) beside `labels`, but "
                "got `labels` only. transformers.Trainer drops the inputs of a wrapped model "
                "unless it is given TrainingArguments(remove_unused_columns=False)."
            )
        if labels is not None and not own_loss:
            kwargs["labels"] = labels
        names = [self.classifier_name]
        if self.pooling_head_name is not None:
            names.append(self.pooling_head_name)
        layers = [self.backbone.get_submodule(name) for name in names]
        stores: list[list[Tensor]] = [[] for _ in layers]
        for layer, store in zip(layers, stores, strict=True):
            setattr(layer, self._store, store)
        # Compiling first: dynamo then never reads (and guards on) `_verified`.
        verify = not torch.compiler.is_compiling() and not self._verified
        outputs: list[Any] = []
        watch = (
            layers[0].register_forward_hook(lambda m, a, out: outputs.append(out))
            if verify
            else None
        )
        try:
            output = self.backbone(*args, **kwargs)
        finally:
            for layer in layers:
                delattr(layer, self._store)
            if watch is not None:
                watch.remove()
        logits = _main_logits(output)
        if not stores[0]:
            raise RuntimeError(
                f"Expected the classifier `{self.classifier_name}` to run in the forward pass, "
                f"but it did not: was it replaced after wrapping (by reset_classifier, say)? "
                f"Call unwrap() first, change the classifier, and wrap the backbone again."
            )
        if len(stores[0]) > 1:
            raise RuntimeError(
                f"Expected the classifier `{self.classifier_name}` to run once per forward, but it "
                f"ran {len(stores[0])} times; pass the layer that outputs the final logits as "
                f"`classifier=`."
            )
        features = stores[0][0]
        if verify:
            self._verify(features, outputs[0], logits)
        if features.dim() == 3 and len(layers) == 2 and len(stores[1]) == 1:
            features = layers[1](stores[1][0], pre_logits=True)
        elif features.dim() > 2 and self._reads_map:
            features = features.mean(dim=tuple(range(2, features.dim())))
        if features.dim() != 2 or features.shape[1] != self.aux_head.in_features:
            raise RuntimeError(
                f"Expected the classifier `{self.classifier_name}` to read pooled features of "
                f"shape [B, {self.aux_head.in_features}]"
                f"{f' or a feature map [B, {self.aux_head.in_features}, ...]' if self._reads_map else ''}"
                f", but it read {tuple(stores[0][0].shape)}; pass the layer that reads pooled "
                f"features as `classifier=`."
            )
        aux_logits = self.aux_head(features).unflatten(-1, (self.num_partitions, self.num_groups))
        if isinstance(output, Tensor) or not _is_model_output(output):
            if own_loss:
                raise RuntimeError(
                    f"Expected the backbone to return a ModelOutput, where the loss goes, but "
                    f"it returned {describe(output)}; do not pass `return_dict=False`."
                )
            return AuxOutput(logits, aux_logits)
        loss = None
        if own_loss:
            assert labels is not None and self.aux_weight is not None
            loss = self._loss(logits, aux_logits, labels, num_items)
        elif self.aux_weight is not None and getattr(output, "loss", None) is not None:
            raise ValueError(
                "Expected the labels as `labels=` with `aux_weight` set, but the backbone got "
                "labels another way (as a positional argument?) and computed its own loss, "
                "which has no auxiliary term."
            )
        return _with_aux_logits(output, aux_logits, loss)

    def _loss(self, logits: Tensor, aux_logits: Tensor, labels: Tensor, num_items: Any) -> Tensor:
        """The combined loss of ``aux_weight``, averaged over the batch or the count given."""
        assert self.aux_weight is not None
        output = (logits, aux_logits)
        if num_items is None:
            return combined_loss(output, labels, self.relabel(labels), self.aux_weight)
        total = combined_loss(
            output, labels, self.relabel(labels), self.aux_weight, reduction="sum"
        )
        # Trainer counts label entries: C of them for each row of class probabilities.
        per_sample = labels[0].numel() if labels.dim() > 0 and len(labels) else 1
        return total * per_sample / num_items

    def _verify(self, features: Tensor, produced: Any, logits: Tensor) -> None:
        """Check, once, that the wrapped classifier is the layer that makes the logits."""
        name = self.classifier_name
        hint = "pass the layer that outputs the final logits as `classifier=`"
        if not isinstance(produced, Tensor):
            raise RuntimeError(
                f"Expected the classifier `{name}` to output a logits tensor, but it output "
                f"{describe(produced)}; {hint}."
            )
        batch, classes = logits.shape
        class_dim = 1 if self._reads_map else -1
        if produced.dim() < 2 or produced.shape[0] != batch or produced.shape[class_dim] != classes:
            raise RuntimeError(
                f"Expected the classifier `{name}` to output the model's logits, of shape "
                f"[{batch}, {classes}], but it output shape {tuple(produced.shape)}; {hint}."
            )
        if features.dim() > 2 and not self._reads_map and self.pooling_head_name is None:
            raise RuntimeError(
                f"Expected the classifier `{name}` to read pooled features [B, D], but it "
                f"reads {tuple(features.shape)}, one vector per token or position: the binary "
                f"head cannot tell which dimension to pool. {hint[0].upper()}{hint[1:]} after "
                f"the pooling, or wrap a model whose classifier reads pooled features."
            )
        # A layer named by `classifier=` or by timm's own get_classifier() is trusted
        # (distilled models average two heads; a model may scale its logits); a layer found
        # by attribute name must give the logits themselves.
        trusted = self._explicit or callable(getattr(self.backbone, "get_classifier", None))
        if (
            produced.dim() == 2
            and not trusted
            and produced is not logits
            and not torch.equal(produced, logits)
        ):
            raise RuntimeError(
                f"Expected the classifier `{name}` to output the model's logits, but the model "
                f"returns other values: `{name}` is not its last layer; {hint}."
            )
        self._verified = True

    # timm's model protocol, passed through so timm's helpers see the backbone's settings.
    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The backbone's timm ``pretrained_cfg`` (empty for other models)."""
        return dict(getattr(self.backbone, "pretrained_cfg", None) or {})

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Alias of [`pretrained_cfg`][auxtransfer.RandomPartitionHead.pretrained_cfg], as timm keeps one."""
        return self.pretrained_cfg

    def get_classifier(self) -> nn.Module:
        """The backbone's classifier layer (the one the binary head sits beside)."""
        return self.backbone.get_submodule(self.classifier_name)

    def group_matcher(self, coarse: bool = False) -> SubmoduleMatcher:
        """The backbone's layer map under ``backbone.``; the binary head goes with ``"head"``.

        A timm-style callable matcher: a parameter name maps to the index of its address in
        [`layer_names`][auxtransfer.layer_names] of the backbone. ``coarse`` is accepted
        for timm's signature; the map is always the fine one.
        """
        return SubmoduleMatcher("backbone", layer_map(self.backbone).groups)

    def no_weight_decay(self) -> set[str]:
        """The backbone's ``no_weight_decay()`` names, prefixed with ``backbone.``."""
        names = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in names()} if callable(names) else set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Forward timm's gradient checkpointing switch to the backbone."""
        switch = getattr(self.backbone, "set_grad_checkpointing", None)
        if not callable(switch):
            raise AttributeError(
                f"Expected the backbone to have set_grad_checkpointing(), as timm models do, but "
                f"{type(self.backbone).__name__} has none."
            )
        switch(enable)

    def relabel(self, target: Tensor) -> Tensor:
        """Map class labels to their group in every partition.

        Hard labels (class indices, any integer shape ``S``) give group ids of shape
        ``S + (n,)``. Soft labels (class probabilities ``[..., C]``, floating point, as mixup,
        cutmix or label smoothing make them) give group probabilities ``[..., n, K]``, the
        probability mass of each group of every partition: ``target @ one_hot(partition)``.
        Both go straight into [`CombinedLoss`][auxtransfer.CombinedLoss].

        Args:
            target: Class indices in ``[0, C)``, or class probabilities ``[..., C]``.

        Returns:
            Group ids ``S + (n,)`` (long), or group probabilities ``[..., n, K]`` in
            ``target``'s dtype; on ``target``'s device.

        Examples:
            >>> import torch, torchvision
            >>> net = RandomPartitionHead(torchvision.models.resnet18(num_classes=4),
            ...                           partition=torch.tensor([0, 0, 1, 1]))
            >>> net.relabel(torch.tensor([0, 3]))
            tensor([[0],
                    [1]])
            >>> net.relabel(torch.tensor([[0.5, 0.0, 0.3, 0.2]]))
            tensor([[[0.5000, 0.5000]]])
        """
        if not isinstance(target, Tensor):
            raise TypeError(
                f"Expected `target` to be a tensor of class indices or class probabilities, "
                f"but got {describe(target)}."
            )
        if target.dtype.is_floating_point:
            if target.dim() < 1 or target.shape[-1] != self.num_classes:
                raise ValueError(
                    f"Expected `target` of class probabilities to have shape [..., "
                    f"{self.num_classes}], but got shape {tuple(target.shape)}."
                )
            sides = F.one_hot(self.partition.to(target.device), self.num_groups).to(target.dtype)
            return torch.einsum("...c,nck->...nk", target, sides)
        check_labels("target", target, self.num_classes)
        return self.partition.to(target.device).t()[target]

    # Hugging Face's model protocol: what Trainer, Accelerate and scripts read or call.
    @property
    def config(self) -> Any:
        """The backbone's Hugging Face ``config`` (an AttributeError for other backbones)."""
        config = getattr(self.backbone, "config", None)
        if config is None:
            raise AttributeError(
                f"Expected a backbone with a `config`, as Hugging Face models have, but "
                f"{type(self.backbone).__name__} has none."
            )
        return config

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Whether ``forward`` takes ``num_items_in_batch`` for its loss, as Trainer asks.

        True with ``aux_weight`` (the wrapper scales its loss by it); otherwise the
        backbone's own answer, which gets the count with the labels.
        """
        if self.aux_weight is not None:
            return True
        accepts = getattr(self.backbone, "accepts_loss_kwargs", None)
        if isinstance(accepts, bool):
            return accepts
        parameters = inspect.signature(self.backbone.forward).parameters.values()
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> None:
        """Save a Hugging Face backbone as it saves itself, and the auxiliary head beside it.

        The folder is the backbone's own ``save_pretrained`` folder (``config.json``, its
        weights; ``kwargs`` such as ``is_main_process`` and ``save_function`` go to it),
        plus ``auxtransfer.safetensors``: the auxiliary head's weights, the partition,
        ``seed``, ``aux_weight`` and the classifier's name. So
        [`from_pretrained`][auxtransfer.RandomPartitionHead.from_pretrained] restores the
        wrapper, and the backbone's class alone loads the folder for the transfer step
        (``AutoModelForImageClassification.from_pretrained(folder)``). The backbone's
        config is not changed.

        Args:
            save_directory: The folder to write, as the backbone's ``save_pretrained``
                takes it.
            **kwargs: Passed to the backbone's ``save_pretrained``; ``push_to_hub`` is
                refused (upload the folder with ``huggingface_hub.upload_folder``).

        Raises:
            TypeError: If the backbone has no ``save_pretrained`` (save ``state_dict()``).
        """
        save = getattr(self.backbone, "save_pretrained", None)
        if not callable(save):
            raise TypeError(
                f"Expected a backbone with save_pretrained(), as Hugging Face models have, but "
                f"{type(self.backbone).__name__} has none; save the wrapper's state_dict() "
                f"with torch.save instead."
            )
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "Expected `push_to_hub` to be False: the backbone would upload its files "
                f"without {AUX_WEIGHTS_NAME}. Save to a folder, then upload the whole folder "
                "with huggingface_hub.upload_folder."
            )
        save(save_directory, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        from safetensors.torch import save_file

        tensors = {
            "partition": self.partition,
            "aux_head.weight": self.aux_head.weight,
            "aux_head.bias": self.aux_head.bias,
        }
        settings = {
            "format": 1,
            "backbone": type(self.backbone).__name__,
            "classifier": self.classifier_name,
            "explicit_classifier": self._explicit,
            "seed": self.seed,
            "aux_weight": self.aux_weight,
        }
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            str(Path(save_directory) / AUX_WEIGHTS_NAME),
            metadata={"format": "pt", "auxtransfer": json.dumps(settings)},
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *model_args: Any,
        backbone_class: type[nn.Module] | None = None,
        **kwargs: Any,
    ) -> RandomPartitionHead:
        """Load what [`save_pretrained`][auxtransfer.RandomPartitionHead.save_pretrained] saved.

        The backbone loads with its class's own ``from_pretrained`` (``model_args`` and
        ``kwargs`` go to it: ``dtype``, ``device_map``, ...), then the auxiliary head,
        the partition, ``seed`` and ``aux_weight`` come from ``auxtransfer.safetensors``.

        Args:
            pretrained_model_name_or_path: A folder that ``save_pretrained`` wrote, or a
                Hub repository holding one.
            backbone_class: The backbone's class, where it is not a class of
                ``transformers`` (whose name the file records).
            *model_args: Passed to the backbone's ``from_pretrained``.
            **kwargs: Passed to the backbone's ``from_pretrained``.

        Returns:
            The wrapper, on the backbone's device and in its dtype.

        Examples:
            >>> import tempfile, transformers
            >>> config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16],
            ...                                    depths=[1, 1], num_labels=10)
            >>> net = RandomPartitionHead(transformers.ResNetForImageClassification(config))
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     net.save_pretrained(folder)
            ...     loaded = RandomPartitionHead.from_pretrained(folder)
            >>> torch.equal(loaded.partition, net.partition)
            True
        """
        from safetensors import safe_open

        path = _head_file(pretrained_model_name_or_path, kwargs)
        with safe_open(path, framework="pt") as stored:
            metadata = stored.metadata() or {}
            state = {key: stored.get_tensor(key) for key in stored.keys()}  # noqa: SIM118
        settings = json.loads(metadata.get("auxtransfer", "{}"))
        if backbone_class is None:
            import transformers

            backbone_class = getattr(transformers, str(settings.get("backbone")), None)
            if backbone_class is None:
                raise ValueError(
                    f"Expected `backbone_class` for a backbone that is not a class of "
                    f"transformers, but {path} names {settings.get('backbone')!r}."
                )
        load = getattr(backbone_class, "from_pretrained", None)
        if not callable(load):
            raise TypeError(
                f"Expected `backbone_class` to have from_pretrained(), but got "
                f"{describe(backbone_class)}."
            )
        backbone = load(pretrained_model_name_or_path, *model_args, **kwargs)
        net = cls(
            backbone,
            partition=state["partition"],
            seed=settings.get("seed", 0),
            classifier=settings["classifier"] if settings.get("explicit_classifier") else None,
            aux_weight=settings.get("aux_weight"),
        )
        net.aux_head.load_state_dict(
            {"weight": state["aux_head.weight"], "bias": state["aux_head.bias"]}
        )
        return net

    def unwrap(self) -> nn.Module:
        """Remove the hook from the classifier and return the plain backbone.

        The backbone keeps its own classifier and every weight it learned; this wrapper
        can no longer be called afterwards.
        """
        _remove_hooks(self._hooks or [])
        self._hooks = None
        return self.backbone

    def extra_repr(self) -> str:
        return (
            f"classifier={self.classifier_name!r}, num_classes={self.num_classes}, "
            f"num_partitions={self.num_partitions}"
            + (f", num_groups={self.num_groups}" if self.num_groups != 2 else "")
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


def _check_aux_weight(backbone: nn.Module, aux_weight: Any) -> float:
    weight = check_unit_float("aux_weight", aux_weight)
    if not is_transformers_model(backbone):
        raise ValueError(
            f"Expected `aux_weight` only with a Hugging Face backbone, whose output carries "
            f"the loss, but the backbone is a {type(backbone).__name__}; compute the loss with "
            f"CombinedLoss({weight}) instead."
        )
    problem = getattr(getattr(backbone, "config", None), "problem_type", None)
    if problem not in (None, "single_label_classification"):
        raise ValueError(
            f"Expected a backbone whose config.problem_type is single_label_classification "
            f"(or unset) for `aux_weight`, as the combined loss is a cross entropy, but it is "
            f"{problem!r}."
        )
    return weight


def _is_model_output(output: Any) -> bool:
    """Whether ``output`` is a ``transformers`` ``ModelOutput`` (without importing it)."""
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(output, transformers.utils.ModelOutput)


# ModelOutput class -> the same with aux_logits, made once per class.
_AUX_OUTPUTS: dict[type, type] = {}


def _aux_output_class(base: type) -> type:
    """``base`` (a ModelOutput dataclass) with an ``aux_logits`` field after its own."""
    made = _AUX_OUTPUTS.get(base)
    if made is None:
        made = _AUX_OUTPUTS[base] = _make_aux_output_class(base)
    return made


@torch.compiler.disable
def _make_aux_output_class(base: type) -> type:
    # Never traced: a class is made once, outside any compiled graph.
    name = base.__name__
    cls = dataclasses.make_dataclass(
        name,
        [("aux_logits", "torch.FloatTensor | None", dataclasses.field(default=None))],
        bases=(base,),
        namespace={
            "__reduce__": _reduce_aux_output,
            "__doc__": f"{name} with the auxiliary heads' logits ``aux_logits`` added.",
        },
    )
    cls.__module__ = __name__
    cls.__qualname__ = base.__qualname__
    return cls


def _reduce_aux_output(output: Any) -> tuple[Any, ...]:
    # Pickles by its base class, which is importable where the made class is not.
    base = type(output).__mro__[1]
    return _make_aux_output, (
        base,
        {f.name: getattr(output, f.name) for f in dataclasses.fields(output)},
    )


def _make_aux_output(base: type, values: dict[str, Any]) -> Any:
    return _aux_output_class(base)(**values)


def _with_aux_logits(output: Any, aux_logits: Tensor, loss: Tensor | None) -> Any:
    """The backbone's ``ModelOutput`` with ``aux_logits`` (and the wrapper's ``loss``)."""
    values = {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if loss is not None:
        if "loss" not in values:
            raise RuntimeError(
                f"Expected the backbone's output to have a `loss` field, but "
                f"{type(output).__name__} has none; leave `aux_weight` unset and compute the "
                f"loss with CombinedLoss."
            )
        values["loss"] = loss
    base: Any = type(output)
    return _aux_output_class(base)(**values, aux_logits=aux_logits)


def _head_file(path: str | os.PathLike[str], kwargs: dict[str, Any]) -> str:
    """The path of ``auxtransfer.safetensors`` in a folder, or in a Hub repository."""
    folder = Path(path) / kwargs.get("subfolder", "")
    if folder.is_dir():
        found = folder / AUX_WEIGHTS_NAME
        if not found.is_file():
            raise ValueError(
                f"Expected `pretrained_model_name_or_path` to hold {AUX_WEIGHTS_NAME}, as "
                f"RandomPartitionHead.save_pretrained writes it, but {folder} has none; load "
                f"a plain backbone with its own from_pretrained and wrap it."
            )
        return str(found)
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in _HUB_ARGUMENTS if k in kwargs}
    found_file = cached_file(str(path), AUX_WEIGHTS_NAME, **hub)
    if found_file is None:  # pragma: no cover - cached_file raises by default
        raise ValueError(f"Expected {path} to hold {AUX_WEIGHTS_NAME}, but found none.")
    return str(found_file)
