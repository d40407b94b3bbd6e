"""Measure what transfers before training on B: features at layer addresses, transferability
scores and representation similarity.

- [`features`][auxtransfer.probe.features]: a model's features at its layer addresses (or
  at full module names), one forward pass under ``torch.no_grad()``.
- [`logme`][auxtransfer.probe.logme] (You et al. 2021, the fixed-point algorithm of
  arXiv 2110.10545), [`hscore`][auxtransfer.probe.hscore] (Bao et al. 2019):
  how well features separate the target's classes.
- [`leep`][auxtransfer.probe.leep] (Nguyen et al. 2020), [`nce`][auxtransfer.probe.nce]
  (Tran et al. 2019): how well a source classifier's outputs predict the target's labels.
- [`linear_cka`][auxtransfer.probe.linear_cka] (Kornblith et al. 2019; debiased: Nguyen
  et al. 2021): how alike two representations of the same examples are.
- [`layer_scores`][auxtransfer.probe.layer_scores]: a score at every address.

Every score is a float computed in float64 on the tensors' device; numpy arrays are
accepted. Higher is better for every score (NCE and LEEP are at most 0).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ._checks import describe
from .layers import LayerMap, layer_map

__all__ = ["features", "hscore", "layer_scores", "leep", "linear_cka", "logme", "nce"]

Pool = str | Callable[[Tensor], Tensor]


def _as_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
    except ImportError:  # pragma: no cover - numpy ships with torch's wheels
        pass
    raise TypeError(
        f"Expected `{name}` to be a tensor or a numpy array, but got {describe(value)}."
    )


def _features_arg(name: str, value: Any) -> Tensor:
    f = _as_tensor(name, value)
    if f.dtype == torch.bool or f.is_complex():
        raise TypeError(f"Expected `{name}` to hold real numbers, but got {describe(f)}.")
    if f.dim() != 2:
        raise ValueError(f"Expected `{name}` to be a 2-D [N, D] array, but got {describe(f)}.")
    if f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(
            f"Expected `{name}` to hold at least 2 samples of 1 feature, but got shape {tuple(f.shape)}."
        )
    f = f.to(torch.float64)
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"Expected `{name}` to be finite, but it holds NaN or infinity.")
    return f


def _labels_arg(name: str, value: Any, n: int, device: torch.device) -> Tensor:
    y = _as_tensor(name, value)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(
            f"Expected `{name}` to be a 1-D array of integer class labels, but got {describe(y)}."
        )
    if len(y) != n:
        raise ValueError(f"Expected `{name}` to hold one label per sample ({n}), but got {len(y)}.")
    if len(y) and int(y.min()) < 0:
        raise ValueError(f"Expected `{name}` to be class indices >= 0, but got {int(y.min())}.")
    return y.to(device=device, dtype=torch.long)


def _classes(name: str, y: Tensor, *, minimum: int) -> Tensor:
    """The classes present, each with at least ``minimum`` samples."""
    classes, counts = torch.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"Expected `{name}` to hold at least 2 classes, but got {len(classes)}.")
    few = classes[counts < minimum]
    if len(few):
        raise ValueError(
            f"Expected every class of `{name}` to have at least {minimum} samples, but class "
            f"{int(few[0])} has {int(counts[counts < minimum][0])}."
        )
    return classes


def logme(features: Any, labels: Any) -> float:
    """LogME: the log maximum evidence of a Bayesian linear model from ``features`` to each
    class's one-hot target, per sample, averaged over the classes.

    The fixed-point algorithm of You et al. (arXiv 2110.10545) as their reference code runs
    it: from ``alpha = beta = 1``, at most 11 updates per class, until ``alpha / beta``
    changes by at most 0.1 %; for ``N > D`` the singular values above 1e-10 of the
    features, else all ``min(N, D)`` of them. The classes are solved together.

    Args:
        features: ``[N, D]`` features of the target's samples.
        labels: ``[N]`` their classes, indices from 0 (classes with no sample count as
            classes whose target is all zeros, as the reference code counts them).

    Returns:
        The score (higher: the features predict the labels better).
    """
    f = _features_arg("features", features)
    y = _labels_arg("labels", labels, f.shape[0], f.device)
    _classes("labels", y, minimum=1)
    n, d = f.shape
    if n > d:
        sigma, v = torch.linalg.eigh(f.T @ f)  # ascending; the SVD of f^T f
        s = sigma.clamp(min=0).sqrt()
        kept = s > 1e-10
        s, v, sigma = s[kept], v[:, kept], s[kept] ** 2
        u_s = f @ v  # u * s
        onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).to(f.dtype)
        x = (u_s.T @ onehot) / s[:, None]  # [k, C]
    else:
        u, s, _ = torch.linalg.svd(f, full_matrices=False)
        sigma = s**2
        onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).to(f.dtype)
        x = u.T @ onehot
    x2 = x**2
    res_x2 = onehot.sum(0) - x2.sum(0)  # [C]: y's squared norm outside the features' span
    sig = sigma[:, None]
    classes = onehot.shape[1]
    alpha = torch.ones(classes, dtype=f.dtype, device=f.device)
    beta = torch.ones_like(alpha)
    m2 = torch.zeros_like(alpha)
    res2 = torch.zeros_like(alpha)
    active = torch.ones(classes, dtype=torch.bool, device=f.device)
    for _ in range(11):
        t = alpha / beta
        gamma = (sig / (sig + t)).sum(0)
        new_m2 = (sig * x2 / (t + sig) ** 2).sum(0)
        new_res2 = (x2 / (1 + sig / t) ** 2).sum(0) + res_x2
        new_alpha = gamma / (new_m2 + 1e-5)
        new_beta = (n - gamma) / (new_res2 + 1e-5)
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        m2 = torch.where(active, new_m2, m2)
        res2 = torch.where(active, new_res2, res2)
        active = active & ((new_alpha / new_beta - t).abs() / t > 1e-3)
        if not bool(active.any()):
            break
    evidence = (
        d / 2.0 * alpha.log()
        + n / 2.0 * beta.log()
        - 0.5 * (alpha + beta * sig).log().sum(0)
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * math.log(2 * math.pi)
    ) / n
    return float(evidence.mean())


def hscore(features: Any, labels: Any, *, rtol: float = 1e-10) -> float:
    """H-score: ``tr(cov(f)^+ cov(E[f | y]))``, the features' between-class covariance
    measured in units of their own covariance (Bao et al. 2019).

    Args:
        features: ``[N, D]`` features.
        labels: ``[N]`` classes; every class needs 2 samples.
        rtol: Eigenvalues of ``cov(f)`` below ``rtol`` times the largest count as 0 in the
            pseudo-inverse (features of fewer samples than dimensions have a null space).

    Returns:
        The score, from 0 to the number of classes minus 1.
    """
    f = _features_arg("features", features)
    y = _labels_arg("labels", labels, f.shape[0], f.device)
    classes = _classes("labels", y, minimum=2)
    centred = f - f.mean(0)
    means = torch.zeros_like(f)
    for c in classes:
        means[y == c] = centred[y == c].mean(0)
    cov = centred.T @ centred / (len(f) - 1)
    between = means.T @ means / (len(f) - 1)
    values, vectors = torch.linalg.eigh(cov)
    kept = values > rtol * values.max().clamp(min=0)
    inverse = (vectors[:, kept] / values[kept]) @ vectors[:, kept].T
    return float(torch.trace(inverse @ between))


def leep(probs: Any, labels: Any) -> float:
    """LEEP: the mean log-likelihood of the target labels under the empirical predictor
    ``P(y | x) = sum_z P(y | z) probs[x, z]`` (Nguyen et al. 2020), ``P(y | z)`` from the
    joint of the target labels and the source classifier's outputs.

    Args:
        probs: ``[N, C_source]`` rows of a source model's softmax on the target's samples.
        labels: ``[N]`` the target's classes.

    Returns:
        The score, at most 0 (0: the source's outputs name the target's labels).
    """
    p = _features_arg("probs", probs)
    y = _labels_arg("labels", labels, p.shape[0], p.device)
    _classes("labels", y, minimum=1)
    if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-4):
        raise ValueError(
            "Expected `probs` to hold probabilities, rows >= 0 that sum to 1 (a softmax), "
            f"but a row sums to {float(p.sum(1)[(p.sum(1) - 1).abs().argmax()]):g}."
        )
    onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1).to(p.dtype)
    joint = onehot.T @ p / len(p)  # [C_target, C_source]
    mass = joint.sum(0, keepdim=True)
    given = torch.where(mass > 0, joint / mass.clamp(min=torch.finfo(p.dtype).tiny), 0.0)
    predicted = (p @ given.T).gather(1, y[:, None]).squeeze(1)
    return float(predicted.log().mean())


def nce(source_labels: Any, labels: Any) -> float:
    """NCE: the negative conditional entropy ``-H(Y | Z)`` of the target labels ``Y`` given
    the source labels ``Z`` of the same samples (Tran et al. 2019), with ``0 log 0 = 0``.

    Args:
        source_labels: ``[N]`` each sample's source label (e.g. the source classifier's
            argmax).
        labels: ``[N]`` the target's classes.

    Returns:
        The score, at most 0 (0: the source labels determine the target's).
    """
    z = _as_tensor("source_labels", source_labels)
    z = _labels_arg("source_labels", z, len(z), z.device)
    y = _labels_arg("labels", labels, len(z), z.device)
    if len(z) < 1:
        raise ValueError("Expected `labels` to hold at least one sample, but got none.")
    joint = torch.zeros(int(y.max()) + 1, int(z.max()) + 1, dtype=torch.float64, device=z.device)
    joint.index_put_(
        (y, z), torch.ones(len(z), dtype=torch.float64, device=z.device), accumulate=True
    )
    joint /= len(z)
    mass = joint.sum(0, keepdim=True)
    given = torch.where(joint > 0, joint / mass.clamp(min=torch.finfo(joint.dtype).tiny), 1.0)
    return float((joint * given.log()).sum())


def linear_cka(x: Any, y: Any, *, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same ``N`` examples (Kornblith et al.
    2019): ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` of the centred features; with
    ``debiased``, from the unbiased HSIC estimator (Song et al. 2012; Nguyen et al. 2021),
    which needs ``N >= 4``.

    Args:
        x: ``[N, D1]`` features.
        y: ``[N, D2]`` features of the same examples, in the same order.

    Returns:
        The similarity, 1 for representations equal up to rotation and scale.
    """
    a = _features_arg("x", x)
    b = _features_arg("y", y).to(a.device)
    if len(a) != len(b):
        raise ValueError(
            f"Expected `x` and `y` to hold the same examples, but they hold {len(a)} and {len(b)}."
        )
    a, b = a - a.mean(0), b - b.mean(0)
    if not debiased:
        cross = (b.T @ a).square().sum()
        return float(cross / ((a.T @ a).norm() * (b.T @ b).norm()))
    if len(a) < 4:
        raise ValueError(f"Expected at least 4 examples for the debiased CKA, but got {len(a)}.")
    return float(_hsic1(a, b) / (_hsic1(a, a) * _hsic1(b, b)).sqrt())


def _hsic1(a: Tensor, b: Tensor) -> Tensor:
    """The unbiased HSIC estimator (Song et al. 2012) of the linear kernels of centred
    features ``a`` and ``b``, in their own space: ``O(N D1 D2)``, never the ``N x N`` Gram
    matrices. With ``K = a a^T`` and ``L = b b^T`` zero on their diagonals, and centred rows
    (``K 1 = -diag``), ``tr(KL) = ||b^T a||^2 - sum(|a_i|^2 |b_i|^2)``, ``1^T K 1 =
    -sum |a_i|^2`` and ``1^T K L 1 = sum |a_i|^2 |b_i|^2``."""
    n = len(a)
    sa, sb = a.square().sum(1), b.square().sum(1)
    both = (sa * sb).sum()
    trace = (b.T @ a).square().sum() - both
    return (trace + sa.sum() * sb.sum() / ((n - 1) * (n - 2)) - 2 * both / (n - 2)) / (n * (n - 3))


def _pooled(output: Any, pool: Pool, where: str) -> Tensor:
    """A module's output as ``[N, D]``."""
    if isinstance(output, Mapping):  # a Hugging Face ModelOutput
        output = next(v for v in output.values() if isinstance(v, Tensor))
    if isinstance(output, tuple | list):  # Hugging Face layers return tuples
        output = next(v for v in output if isinstance(v, Tensor))
    if not isinstance(output, Tensor):
        raise TypeError(f"Expected {where} to output a tensor, but it gave {describe(output)}.")
    if callable(pool):
        return pool(output)
    if pool == "flatten" or output.dim() == 2:
        return output.flatten(1)
    if pool == "first":
        if output.dim() != 3:
            raise ValueError(
                f"Expected {where} to output tokens [N, T, C] for pool='first', but got shape {tuple(output.shape)}."
            )
        return output[:, 0]
    if output.dim() == 3:  # tokens [N, T, C]
        return output.mean(1)
    return output.flatten(2).mean(2)  # maps [N, C, ...]


def _inputs(batch: Any, device: torch.device, rows: int | None = None) -> Any:
    """A batch's inputs on ``device``: ``x``, the first of ``(x, y, ...)``, or a dict of
    keyword inputs; its first ``rows`` where given."""
    if isinstance(batch, Mapping):
        return {k: v[:rows].to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
    x = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(x, Tensor):
        raise TypeError(
            f"Expected each batch of `data` to be a tensor of inputs, but got {describe(x)}."
        )
    return x[:rows].to(device)


def _ends(layers: LayerMap, addresses: Sequence[str]) -> dict[str, str]:
    found = {}
    for address in addresses:
        if not isinstance(address, str):
            raise TypeError(f"Expected `at` to hold addresses (str), but got {describe(address)}.")
        found[address] = layers.output_module(address)
    return found


def _batches(data: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(data, Tensor):
        return data.split(batch_size)
    try:
        import numpy as np

        if isinstance(data, np.ndarray):
            return torch.from_numpy(data).split(batch_size)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(data, Iterable):
        return data
    raise TypeError(
        f"Expected `data` to be a tensor of inputs or an iterable of batches (a DataLoader), "
        f"but got {describe(data)}."
    )


def features(
    model: nn.Module,
    data: Any,
    at: str | Sequence[str] | None = None,
    *,
    pool: Pool = "mean",
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """The features of ``data`` at layer addresses of ``model``, in data order.

    Each address's features are the output of the module that ends it: of the outermost
    modules whose tensors all lie in the address, the one the forward pass uses last (a
    full module name: that module). They are taken by forward hooks in one pass per batch
    under ``torch.no_grad()``, with the model in eval mode on its device (every module's
    mode is restored after), and gathered on the CPU in float32.

    Args:
        model: Any model ``layer_map`` maps.
        data: A tensor of inputs (cut into batches of ``batch_size``), or an iterable of
            batches: ``x``, ``(x, y, ...)`` (the first element is the input), or a dict of
            keyword inputs (Hugging Face); a ``DataLoader``.
        at: An address or full module name, or several (default: every address but the
            head).
        pool: How an output becomes ``[N, D]``: ``"mean"`` (default) averages a map
            ``[N, C, H, W]`` over its positions and tokens ``[N, T, C]`` over the tokens;
            ``"first"`` takes the first token (a class token); ``"flatten"`` keeps every
            value; or a function of the output tensor. Outputs ``[N, D]`` are kept.
        batch_size: Inputs per forward pass when ``data`` is a tensor.

    Returns:
        ``{address: [N, D] tensor}``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be an nn.Module, but got {describe(model)}.")
    if isinstance(pool, str) and pool not in ("mean", "first", "flatten"):
        raise ValueError(
            f"Expected `pool` to be 'mean', 'first', 'flatten' or a function, but got {pool!r}."
        )
    batches = iter(_batches(data, batch_size))
    first = next(batches, None)
    if first is None:
        raise ValueError("Expected `data` to hold at least one batch, but it is empty.")
    try:
        layers = layer_map(model)
    except ValueError:  # no input the model states: map it on the data itself
        layers = layer_map(model, example_input=_inputs(first, torch.device("cpu"), rows=1))
    addresses = layers.names[:-1] if at is None else [at] if isinstance(at, str) else list(at)
    ends = _ends(layers, addresses)
    modules = dict(model.named_modules())
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    taken: dict[str, list[Tensor]] = {a: [] for a in addresses}
    seen: dict[str, Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            seen[name] = _pooled(output, pool, f"module {name!r}")

        return record

    handles = [modules[m].register_forward_hook(hook(m)) for m in set(ends.values())]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            for batch in itertools.chain([first], batches):
                seen.clear()
                inputs = _inputs(batch, device)
                model(**inputs) if isinstance(inputs, dict) else model(inputs)
                for address in addresses:
                    taken[address].append(seen[ends[address]].float().cpu())
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    return {address: torch.cat(parts) for address, parts in taken.items()}


#: The scores ``layer_scores`` computes, by name.
SCORES: dict[str, Callable[[Any, Any], float]] = {"logme": logme, "hscore": hscore}


def layer_scores(
    model: nn.Module,
    data: Any,
    labels: Any,
    *,
    at: str | Sequence[str] | None = None,
    score: str = "logme",
    pool: Pool = "mean",
) -> dict[str, float]:
    """A score of the features at every address but the head (or those ``at``): where
    along the network the features already separate ``labels``' classes.

    Args:
        model: The model.
        data: Its inputs, as ``features`` takes them.
        labels: ``[N]`` the inputs' classes, in data order.
        at: Addresses or full module names (default: every address but the head).
        score: ``"logme"`` or ``"hscore"``.
        pool: As ``features`` takes it.

    Returns:
        ``{address: score}``.
    """
    if score not in SCORES:
        raise ValueError(f"Expected `score` to be one of {', '.join(SCORES)}, but got {score!r}.")
    found = features(model, data, at, pool=pool)
    return {address: SCORES[score](f, labels) for address, f in found.items()}
