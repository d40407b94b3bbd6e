"""What a transfer run could be expected to reach, measured before its first epoch on B.

``transfer_scores`` takes one pass over B's training images, unaugmented, through the
transferred network (its classifier's input: the penultimate features) and through A's own
network (its softmax), and gives LogME and H-score of those features and LEEP and NCE of
A's classifier ([`auxtransfer.probe`][auxtransfer.probe]). ``train_run`` writes them to
``scores.json`` in the run directory when the run starts, with LogME at every address of
A's network (``layers``); the report sets them beside the run's error on B.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..classifier import find_classifier
from ..probe import features, hscore, leep, logme, nce
from .rundir import replace_atomically

__all__ = ["SCORES_FILE", "transfer_scores", "write_scores"]

#: The file of a transfer run's scores, beside its ``results.json``.
SCORES_FILE = "scores.json"


def transfer_scores(net: nn.Module, source: nn.Module, batches: Iterable[Any]) -> dict[str, Any]:
    """LogME and H-score of ``net``'s penultimate features, LEEP and NCE of ``source``'s
    classifier, on the ``(x, y, ...)`` ``batches`` of B's training images (iterated twice),
    and ``layers``: LogME of ``source``'s features at each address but the head. A score
    the data cannot give (H-score with a class of one sample) is None. Every module's mode
    is restored."""
    inputs: list[Tensor] = []
    module = net.get_submodule(find_classifier(net))
    handle = module.register_forward_pre_hook(
        lambda _, args: inputs.append(args[0].detach().flatten(1).double().cpu())
    )
    modes = {m: m.training for m in [*net.modules(), *source.modules()]}
    probs, labels = [], []
    try:
        net.eval()
        source.eval()
        with torch.no_grad():
            for batch in batches:
                x, y = batch[0], batch[1]
                net(x)
                probs.append(source(x).double().softmax(-1).cpu())
                labels.append(y.cpu())
    finally:
        handle.remove()
        for m, training in modes.items():
            m.train(training)
    f, p, y = torch.cat(inputs), torch.cat(probs), torch.cat(labels)
    found: dict[str, Any] = {"samples": len(y)}
    try:  # where along A's network the features already separate B's classes
        at_layers = features(source, batches)
        found["layers"] = {address: logme(f_at, y) for address, f_at in at_layers.items()}
    except ValueError:
        found["layers"] = None
    for name, score in (("logme", lambda: logme(f, y)), ("hscore", lambda: hscore(f, y)),
                        ("leep", lambda: leep(p, y)), ("nce", lambda: nce(p.argmax(1), y))):  # fmt: skip
        try:
            found[name] = score()
        except ValueError:
            found[name] = None
    return found


def write_scores(run_dir: str | Path, scores: dict[str, Any]) -> None:
    """``scores.json`` in ``run_dir``, written atomically."""
    text = json.dumps(scores, indent=2) + "\n"
    replace_atomically(Path(run_dir) / SCORES_FILE, lambda tmp: tmp.write_text(text))
