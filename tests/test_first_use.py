"""Every parameter belongs to the address of its first use: checked on every model zoo.

The layer map, ``freeze_until``, ``layerwise_lr`` and ``reset_after`` promise one rule: a
parameter belongs to the address where the forward pass first reads it, so an address (or
a full module name) means "this and everything that runs before it". This module checks
that rule against its own ground truth, independent of auxtransfer's code: a
``TorchDispatchMode`` records, over one forward pass in eval mode, the index of the first
aten op that reads each parameter (by identity, so a shared or tied tensor is one
parameter under all its names). Nothing private of auxtransfer is imported.

For each model, with ``pos(p)`` the first-use position of each parameter the forward reads:

1. ``prefix``: ``freeze_until`` each address freezes a prefix of first-use order, exactly
   the parameters ``layer_groups`` puts up to that address, and more for later addresses.
2. ``modules``: ``freeze_until`` a full module name freezes exactly the parameters first
   read up to that module's last first read, and all of the module's own.
3. ``lr``: ``layerwise_lr(until=A)`` gives ``lr`` to exactly what ``freeze_until(A)`` freezes.
4. ``reset``: ``reset_after(A)`` resets nothing that ``freeze_until(A)`` would freeze.
5. ``order``: ``layer_names`` lists the groups in first-use order.

Models: every torchvision classifier and a sample of timm (one per family, and the
families known to be hard) on the meta device, every Hugging Face image classifier from a
tiny config (``_tiny_hf.py``), and small hand-written models with the shapes that trip a
registration-order map. ``--run-slow`` adds every timm model.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import itertools
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from auxtransfer import freeze_until, layer_groups, layer_names, layerwise_lr, reset_after, unfreeze


def _sibling(name: str) -> Any:
    """Import ``tests/<name>.py`` (the tests run with --import-mode=importlib)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


tiny_hf = _sibling("_tiny_hf")

CHECKS = ("prefix", "modules", "lr", "reset", "order")
LOW, HIGH = 0.01, 0.1  # layerwise_lr's rates: LOW marks the transferred parameters

# Models the library may refuse with a ValueError, and what its message must say.
REFUSED: dict[str, str] = {}


# ---------------------------------------------------------------------------------------
# Ground truth: first use of each parameter in one forward pass.


class _FirstUse(TorchDispatchMode):
    """Index of the first aten op that reads each watched tensor, by ``id``."""

    def __init__(self, watched: set[int]) -> None:
        super().__init__()
        self.watched = watched
        self.first: dict[int, int] = {}
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for arg in tree_leaves((args, kwargs)):
            if isinstance(arg, torch.Tensor) and id(arg) in self.watched:
                self.first.setdefault(id(arg), self.ops)
        self.ops += 1
        return func(*args, **kwargs)


@dataclass
class Truth:
    """A built model and the first use of its parameters.

    ``params`` and ``names`` are keyed by ``id`` of the parameter, ``names`` holding every
    name of a shared tensor; ``pos`` holds the parameters the forward reads; ``fixed`` the
    ones frozen before any test (left alone by the library, so out of every comparison).
    """

    label: str
    model: nn.Module
    hints: dict[str, Any]
    params: dict[int, nn.Parameter]
    names: dict[int, list[str]]
    pos: dict[int, int]
    fixed: set[int]
    on_meta: bool
    init: Callable[[], nn.Module] | None
    frozen_memo: dict[str, set[int]] = field(default_factory=dict)

    def by_name(self, names: Iterable[str]) -> set[int]:
        """The parameters among ``names`` (state_dict-style; buffers are dropped)."""
        index = {name: key for key, all_names in self.names.items() for name in all_names}
        return {index[n] for n in names if n in index} - self.fixed

    def show(self, keys: Iterable[int], limit: int = 6) -> str:
        """Readable names of ``keys``, in first-use order (unused last)."""
        ordered = sorted(keys, key=lambda k: (self.pos.get(k, 1 << 60), self.names[k][0]))
        shown = [" = ".join(self.names[k]) for k in ordered[:limit]]
        return ", ".join(shown) + (f", ... ({len(ordered)} in all)" if len(ordered) > limit else "")


def record_first_use(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[int, int]:
    """Position of the first read of each parameter of ``model`` over ``model(*inputs)``."""
    watched = {id(p) for p in model.parameters()}
    recorder = _FirstUse(watched)
    with torch.no_grad(), recorder:
        model.eval()(*inputs)
    return recorder.first


@dataclass(frozen=True)
class Case:
    """How to build a model and run its forward pass.

    ``build`` builds it (on the meta device when ``on_meta``), ``inputs`` gives the
    positional arguments of one forward on a device, ``hints`` go to every auxtransfer call
    (``input_size=`` or ``example_input=``). ``reset_after`` gets ``init=`` a fresh meta
    model for meta models: as good as a CPU one to see which tensors are reset, and quick.
    """

    build: Callable[[], nn.Module]
    inputs: Callable[[str], tuple[torch.Tensor, ...]]
    hints: Callable[[], dict[str, Any]] = dict
    on_meta: bool = True


def _quietly(build: Callable[[], nn.Module], device: str) -> nn.Module:
    with torch.device(device), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build()


@functools.lru_cache(maxsize=1)
def truth_of(label: str) -> Truth:
    """Build the model of ``label`` and record its first use (cached: the checks of one
    model run one after another)."""
    case = CASES[label]
    device = "meta" if case.on_meta else "cpu"
    torch.manual_seed(0)
    model = _quietly(case.build, device)
    params: dict[int, nn.Parameter] = {}
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        params[id(param)] = param
        names.setdefault(id(param), []).append(name)
    # Recorded on a copy: a forward pass may fill caches (LeViT's attention biases in eval
    # mode) that a later pass would read instead of the parameters.
    twin = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin_pos = record_first_use(twin, case.inputs(device))
    twin_keys = {name: id(p) for name, p in twin.named_parameters(remove_duplicate=False)}
    pos = {
        key: twin_pos[twin_keys[all_names[0]]]
        for key, all_names in names.items()
        if twin_keys[all_names[0]] in twin_pos
    }
    assert pos, f"{label}: the forward pass read none of the parameters"
    fixed = {key for key, p in params.items() if not p.requires_grad}
    init = functools.partial(_quietly, case.build, "meta") if case.on_meta else None
    return Truth(label, model, case.hints(), params, names, pos, fixed, case.on_meta, init)


# ---------------------------------------------------------------------------------------
# The checks. Each raises AssertionError naming the model, the address and the parameters.


def frozen_by(truth: Truth, until: str) -> set[int]:
    """The parameters ``freeze_until(model, until)`` freezes (then undone)."""
    if until not in truth.frozen_memo:
        try:
            freeze_until(truth.model, until, **truth.hints)
            frozen = {k for k, p in truth.params.items() if not p.requires_grad} - truth.fixed
        finally:
            unfreeze(truth.model)
        truth.frozen_memo[until] = frozen
    return truth.frozen_memo[until]


def _not_a_prefix(truth: Truth, frozen: set[int]) -> str | None:
    """Where ``frozen`` is no prefix of first-use order: a trainable parameter read before
    a frozen one."""
    used_frozen = [k for k in frozen if k in truth.pos]
    if not used_frozen:
        return None
    last = max(truth.pos[k] for k in used_frozen)
    early = {k for k, p in truth.pos.items() if p < last and k not in frozen | truth.fixed}
    if not early:
        return None
    late = {k for k in used_frozen if truth.pos[k] > min(truth.pos[e] for e in early)}
    return f"trainable {truth.show(early)} run before frozen {truth.show(late)}"


def _difference(truth: Truth, got: set[int], expected: set[int], what: str) -> str | None:
    if got == expected:
        return None
    extra, missing = got - expected, expected - got
    parts = [
        f"{what} also {truth.show(extra)}" if extra else "",
        f"{what} not {truth.show(missing)}" if missing else "",
    ]
    return "; ".join(p for p in parts if p)


def _report(truth: Truth, problems: list[tuple[str, str]], check: str) -> None:
    if problems:
        shown = "\n".join(f"  at {address!r}: {problem}" for address, problem in problems[:5])
        more = f"\n  ... {len(problems)} addresses in all" if len(problems) > 5 else ""
        raise AssertionError(f"{truth.label} [{check}]:\n{shown}{more}")


def _covered(addresses: list[str], address: str) -> int:
    """Index of the last group ``address`` covers: itself and the groups below it."""
    return max(i for i, a in enumerate(addresses) if a == address or a.startswith(address + "."))


def check_prefix(truth: Truth) -> None:
    groups = layer_groups(truth.model, **truth.hints)
    addresses = [g.address for g in groups]
    problems = []
    previous: set[int] = set()
    for address in sample_addresses(addresses):
        frozen = frozen_by(truth, address)
        last = _covered(addresses, address)
        mapped = truth.by_name(t for g in groups[: last + 1] for t in g.tensors)
        for problem in (
            _not_a_prefix(truth, frozen),
            _difference(truth, frozen, mapped, "froze, beside the layer_groups up to it,"),
            f"unfroze {truth.show(previous - frozen)} frozen at the address before"
            if not previous <= frozen
            else None,
        ):
            if problem:
                problems.append((address, problem))
        previous = frozen
    _report(truth, problems, "prefix")


def sample_modules(truth: Truth, addresses: list[str], count: int = 5) -> list[str]:
    """A few full module names that are no address: the backbone (the root's largest child
    with children, when it is not everything), two blocks (numbered modules with children)
    and two leaf layers, all holding parameters the forward reads."""
    modules = [
        (name, module)
        for name, module in truth.model.named_modules()
        if name
        and name not in addresses
        and any(id(p) in truth.pos and id(p) not in truth.fixed for p in module.parameters())
    ]
    everything = len(truth.params)
    tops = [
        (len({id(p) for p in m.parameters()}), n)
        for n, m in modules
        if "." not in n and any(m.children())
    ]
    chosen = [max(tops)[1]] if tops and max(tops)[0] < everything else []
    blocks = [n for n, m in modules if n.rpartition(".")[2].isdigit() and any(m.children())]
    leaves = [n for n, m in modules if not any(m.children())]
    for pool, share in ((blocks, (1 / 3, 2 / 3)), (leaves, (1 / 4, 3 / 4))):
        chosen += [pool[int(len(pool) * s)] for s in share if pool]
    return list(dict.fromkeys(chosen))[:count]


def sample_addresses(addresses: list[str], count: int = 16) -> list[str]:
    """``count`` addresses spread evenly over the map, the first and the last included
    (all of them in a small map): a sweep of ~100 models must stay quick."""
    if len(addresses) <= count:
        return addresses
    step = (len(addresses) - 1) / (count - 1)
    return [addresses[round(i * step)] for i in range(count)]


def check_modules(truth: Truth) -> None:
    addresses = layer_names(truth.model, **truth.hints)
    problems = []
    for name in sample_modules(truth, addresses):
        module = truth.model.get_submodule(name)
        own = {id(p) for p in module.parameters()} - truth.fixed
        last = max(truth.pos[k] for k in own if k in truth.pos)
        expected = {k for k, p in truth.pos.items() if p <= last} - truth.fixed | own
        frozen = frozen_by(truth, name)
        used = {k for k in frozen if k in truth.pos} | (frozen & own)
        problem = _difference(truth, used, expected, "froze")
        if problem:
            problems.append((name, problem))
    _report(truth, problems, "modules")


def check_lr(truth: Truth) -> None:
    addresses = layer_names(truth.model, **truth.hints)
    problems = []
    for until in sample_addresses(addresses) + sample_modules(truth, addresses):
        param_groups = layerwise_lr(truth.model, until=until, lr=LOW, new_lr=HIGH, **truth.hints)
        low = {id(p) for g in param_groups if g["lr"] == LOW for p in g["params"]}
        problem = _difference(
            truth, low, frozen_by(truth, until), "gave lr to, beside what freeze_until freezes,"
        )
        if problem:
            problems.append((until, problem))
    _report(truth, problems, "lr")


def check_reset(truth: Truth) -> None:
    addresses = layer_names(truth.model, **truth.hints)
    everything = set(truth.params) - truth.fixed
    # The middle address and, on real models (where values are compared too), one module
    # name; each must leave something to reset. A reset builds a fresh model: few per model.
    middle = [addresses[(len(addresses) - 1) // 2]]
    untils = [
        u for u in middle + sample_modules(truth, addresses) if frozen_by(truth, u) != everything
    ]
    problems = []
    for until in list(dict.fromkeys(untils))[: 1 if truth.on_meta else 2]:
        frozen = frozen_by(truth, until)
        before = {k: p.detach().clone() for k, p in truth.params.items() if not p.is_meta}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            init = {"init": truth.init} if truth.init is not None else {}
            summary = reset_after(truth.model, until, **init, **truth.hints)
        reset = truth.by_name(summary.tensors)
        changed = {k for k, value in before.items() if not torch.equal(truth.params[k], value)}
        if reset & frozen:
            problems.append((until, f"reset {truth.show(reset & frozen)}, which it would freeze"))
        if changed & frozen:
            problems.append(
                (until, f"changed {truth.show(changed & frozen)}, which it would freeze")
            )
    _report(truth, problems, "reset")


def check_order(truth: Truth) -> None:
    groups = layer_groups(truth.model, **truth.hints)
    firsts = []
    for group in groups:
        keys = {k for k in truth.by_name(group.tensors) if k in truth.pos}
        if keys:
            first = min(keys, key=truth.pos.__getitem__)
            firsts.append((group.address, truth.pos[first], first))
    problems = [
        (b, f"its first parameter {truth.show([kb])} runs before {a!r}'s first, {truth.show([ka])}")
        for (a, pa, ka), (b, pb, kb) in itertools.pairwise(firsts)
        if pb <= pa
    ]
    _report(truth, problems, "order")


CHECK_FUNCTIONS = {
    "prefix": check_prefix,
    "modules": check_modules,
    "lr": check_lr,
    "reset": check_reset,
    "order": check_order,
}


def run_check(label: str, check: str) -> None:
    truth = truth_of(label)
    refusal = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-group and reset warnings
            CHECK_FUNCTIONS[check](truth)
    except ValueError as error:
        if label not in REFUSED:
            raise
        refusal = str(error)
    if refusal is not None:
        assert re.search(REFUSED[label], refusal), f"{label}: refused without saying why: {refusal}"


def params_for(labels: Iterable[str]) -> list[Any]:
    """(label, check) pairs, model by model (so each model is built once), with short ids."""
    return [
        pytest.param(label, check, id=f"{label.partition('/')[2]}-{check}")
        for label in labels
        for check in CHECKS
    ]


# ---------------------------------------------------------------------------------------
# Plain, user-written models: the shapes a registration-order map gets wrong.


def _images(*size: int) -> Callable[[str], tuple[torch.Tensor, ...]]:
    return lambda device: (torch.randn(2, *size, device=device),)


def _image_hints(*size: int) -> Callable[[], dict[str, Any]]:
    return lambda: {"input_size": size}


def _block(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())


class LeNet(nn.Module):
    """Layers registered fc, conv2, conv1; run conv1, conv2, fc (1x28x28 input)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16 * 4 * 4, 10)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv1 = nn.Conv2d(1, 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class Interleaved(nn.Module):
    """``stages`` and ``downs`` registered as two lists, run interleaved."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(_block(8) for _ in range(3))
        self.downs = nn.ModuleList(nn.Conv2d(8, 8, 2, stride=2) for _ in range(2))
        self.embed = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages[0](self.embed(x))
        x = self.stages[1](self.downs[0](x))
        x = self.stages[2](self.downs[1](x))
        return self.head(x.mean((2, 3)))


class RootGamma(nn.Module):
    """A root ``gamma`` (registered first) scales the features just before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(8))
        self.embed = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(_block(8) for _ in range(3)))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x)).mean((2, 3))
        return self.head(x * self.gamma)


class _Tokens(nn.Module):
    """Patches of a 3x32x32 image as 16 tokens of width 16."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x).flatten(2).transpose(1, 2)


class LateClassToken(nn.Module):
    """A root class token joins the tokens only after the second of four blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 16))
        self.tokens = _Tokens()
        self.blocks = nn.ModuleList(_mlp(16) for _ in range(4))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for i, block in enumerate(self.blocks):
            if i == 2:
                x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
            x = block(x)
        return self.head(x[:, 0])


class _TableBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = _mlp(16)

    def forward(self, x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return self.mlp(x + table)


class SharedTable(nn.Module):
    """A root position table (registered last) that every block reads."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = _Tokens()
        self.blocks = nn.ModuleList(_TableBlock() for _ in range(3))
        self.head = nn.Linear(16, 10)
        self.rope = nn.Parameter(torch.zeros(16, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        for block in self.blocks:
            x = block(x, self.rope)
        return self.head(x.mean(1))


class TiedEmbedding(nn.Module):
    """Token input; ``head.weight`` (registered first) is ``embed.weight``."""

    def __init__(self, vocab: int = 32, width: int = 16) -> None:
        super().__init__()
        self.head = nn.Linear(width, vocab, bias=False)
        self.embed = nn.Embedding(vocab, width)
        self.head.weight = self.embed.weight
        self.blocks = nn.ModuleList(_mlp(width) for _ in range(2))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


class NormClassifier(nn.Module):
    """``classifier = nn.Sequential(BatchNorm1d, Linear)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *(_block(8) for _ in range(3)))
        self.classifier = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = _Tokens()
        self.layers = nn.ModuleList(_mlp(16) for _ in range(3))
        self.norm = nn.LayerNorm(16)


class SplitEncoder(nn.Module):
    """The forward runs ``encoder.embed``, ``encoder.layers``, ``extra``, ``encoder.norm``."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.extra = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.embed(x)
        for layer in self.encoder.layers:
            x = layer(x)
        x = self.encoder.norm(self.extra(x))
        return self.head(x.mean(1))


class LateStem(nn.Module):
    """A module named ``stem`` that runs after the blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(_block(8) for _ in range(3)))
        self.stem = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(self.blocks(self.embed(x))).mean((2, 3)))


class DistilledHeads(nn.Module):
    """``head_dist`` registered before ``head``, run after it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*(_block(8) for _ in range(3)))
        self.head_dist = nn.Linear(8, 10)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x)).mean((2, 3))
        return (self.head(x) + self.head_dist(x)) / 2


def _plain_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        *(_block(8) for _ in range(3)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


def _plain_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)
    )


def _tokens(device: str) -> tuple[torch.Tensor, ...]:
    return (torch.arange(16, device=device).view(2, 8),)


PLAIN_IMAGES = {
    "interleaved_stages": Interleaved,
    "root_gamma": RootGamma,
    "late_class_token": LateClassToken,
    "shared_table": SharedTable,
    "norm_classifier": NormClassifier,
    "split_encoder": SplitEncoder,
    "late_stem": LateStem,
    "distilled_heads": DistilledHeads,
    "plain_cnn": _plain_cnn,
}
PLAIN_CASES = {
    "plain/lenet": Case(LeNet, _images(1, 28, 28), _image_hints(1, 28, 28), on_meta=False),
    **{
        f"plain/{name}": Case(build, _images(3, 32, 32), _image_hints(3, 32, 32), on_meta=False)
        for name, build in PLAIN_IMAGES.items()
    },
    "plain/mlp": Case(_plain_mlp, _images(1, 8, 8), _image_hints(1, 8, 8), on_meta=False),
    "plain/tied_embedding": Case(
        TiedEmbedding, _tokens, lambda: {"example_input": _tokens("cpu")[0]}, on_meta=False
    ),
}


# ---------------------------------------------------------------------------------------
# torchvision: every classification model, on the meta device.

TORCHVISION_MODELS = torchvision.models.list_models(module=torchvision.models)


def _torchvision_case(name: str) -> Case:
    size = 299 if name == "inception_v3" else 224
    build = functools.partial(torchvision.models.get_model, name, weights=None, num_classes=10)
    return Case(build, _images(3, size, size))


# ---------------------------------------------------------------------------------------
# Hugging Face: every image-classification class, from a tiny config.

HF_CLASSES = [
    name
    for names in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values()
    for name in ((names,) if isinstance(names, str) else names)
]


def _hf_case(name: str) -> Case:
    tiny = tiny_hf.TINY_HF[name]

    def hints() -> dict[str, Any]:
        # What the library asks for where it cannot run the model on an image of the
        # config's size on the meta device: a batch the model takes.
        if tiny.tokens or tiny.patches or not tiny.on_meta:
            inputs = tiny_hf.example_inputs(name, "cpu")
            return {"example_input": inputs if len(inputs) > 1 else inputs[0]}
        return {}

    return Case(
        functools.partial(tiny_hf.build, name),
        functools.partial(tiny_hf.example_inputs, name),
        hints,
        on_meta=tiny.on_meta,
    )


# ---------------------------------------------------------------------------------------
# timm: one model per family, and one of each family known to be hard; all with --run-slow.

# Families whose first model is slow on the meta device (a large LSTM): take a small one.
_TIMM_REPRESENTATIVE = {"sequencer": "sequencer2d_s"}
TIMM_HARD = [
    "xcit_nano_12_p16_224",
    "volo_d1_224",
    "cait_xxs24_224",
    "coat_tiny",
    "convit_tiny",
    "efficientvim_m1",
    "vit_small_patch16_rope_mixed_224",
    "vit_srelpos_small_patch16_224",
    "pit_ti_distilled_224",
    "crossvit_tiny_240",
]


def _timm_sample() -> list[str]:
    chosen = []
    for module in timm.list_modules():
        models = timm.list_models(module=module)
        if models:
            chosen.append(_TIMM_REPRESENTATIVE.get(module, models[0]))
    return sorted(set(chosen) | set(TIMM_HARD))


def _timm_build(name: str) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10)


def _timm_inputs(name: str, device: str) -> tuple[torch.Tensor, ...]:
    cfg = timm.get_pretrained_cfg(name)
    size = tuple(getattr(cfg, "input_size", None) or (3, 224, 224))
    return (torch.empty(1, *size, device=device),)


def _timm_case(name: str) -> Case:
    return Case(functools.partial(_timm_build, name), functools.partial(_timm_inputs, name))


CASES: dict[str, Case] = {
    **PLAIN_CASES,
    **{f"torchvision/{name}": _torchvision_case(name) for name in TORCHVISION_MODELS},
    **{f"hf/{name}": _hf_case(name) for name in tiny_hf.TINY_HF},
    **{f"timm/{name}": _timm_case(name) for name in timm.list_models()},
}


# ---------------------------------------------------------------------------------------
# The tests.


def test_recorder_sees_parameters_by_identity():
    # The ground truth keys parameters by id(): the tensors the dispatch mode sees must be
    # the model's own objects, on the meta device too, and a tied weight must be one key.
    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    first = record_first_use(model, (torch.empty(1, 3, 224, 224, device="meta"),))
    assert set(first) == {id(p) for p in model.parameters()}
    assert min(first, key=first.__getitem__) == id(model.conv1.weight)
    assert max(first, key=first.__getitem__) in {id(model.fc.weight), id(model.fc.bias)}

    tied = TiedEmbedding()
    first = record_first_use(tied, _tokens("cpu"))
    assert tied.head.weight is tied.embed.weight
    assert min(first, key=first.__getitem__) == id(tied.embed.weight)


def test_hf_tiny_configs_cover_every_image_classifier():
    assert len(TORCHVISION_MODELS) >= 80
    missing = set(HF_CLASSES) - set(tiny_hf.TINY_HF) - set(tiny_hf.UNBUILT_HF)
    assert not missing, f"no tiny config and no reason for {sorted(missing)}"
    assert not set(REFUSED) - set(CASES)


@pytest.mark.parametrize(("label", "check"), params_for(PLAIN_CASES))
def test_plain(label, check):
    run_check(label, check)


@pytest.mark.parametrize(
    ("label", "check"), params_for(f"torchvision/{n}" for n in TORCHVISION_MODELS)
)
def test_torchvision(label, check, regnet_on_meta):
    run_check(label, check)


@pytest.mark.parametrize(("label", "check"), params_for(f"hf/{n}" for n in tiny_hf.TINY_HF))
def test_hf(label, check):
    run_check(label, check)


@pytest.mark.parametrize(("label", "check"), params_for(f"timm/{n}" for n in _timm_sample()))
def test_timm(label, check):
    run_check(label, check)


@pytest.mark.slow
@pytest.mark.parametrize(("label", "check"), params_for(f"timm/{n}" for n in timm.list_models()))
def test_every_timm_model(label, check):
    run_check(label, check)
