"""What a transfer run could be expected to reach, measured before its first epoch on B.

``transfer_scores`` takes one pass over B's training images, unaugmented, through the
transferred network (its classifier's input: the penultimate features) and one through A's
own network (its features at every address, and its softmax), and gives LogME and H-score
of those features and LEEP and NCE of A's classifier
([`auxtransfer.probe`][auxtransfer.probe]). ``train_run`` writes them to ``scores.json`` in
the run directory when the run starts, with LogME at every address of A's network
(``layers``); the report sets them beside the run's error on B.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ..classifier import find_classifier
from ..layers import layer_map
from ..probe import features, hscore, leep, logme, nce
from .rundir import SCORES_FILE

__all__ = ["SCORES_FILE", "transfer_scores"]


def transfer_scores(net: nn.Module, source: nn.Module, batches: Iterable[Any]) -> dict[str, Any]:
    """LogME and H-score of ``net``'s penultimate features, LEEP and NCE of ``source``'s
    classifier, on the ``(x, y, ...)`` ``batches`` of B's training images (iterated twice:
    once through each network), and ``layers``: LogME of ``source``'s features at each
    address but the head. A score the data cannot give (H-score with a class of one
    sample) is None. Every module's mode is restored."""
    inputs: list[Tensor] = []
    labels: list[Tensor] = []
    handle = net.get_submodule(find_classifier(net)).register_forward_pre_hook(
        lambda _, args: inputs.append(args[0].detach().flatten(1).double().cpu())
    )
    modes = {m: m.training for m in net.modules()}
    try:
        net.eval()
        with torch.no_grad():
            for batch in batches:
                net(batch[0])
                labels.append(batch[1].cpu())
    finally:
        handle.remove()
        for m, training in modes.items():
            m.train(training)
    f, y = torch.cat(inputs), torch.cat(labels)
    # One pass through A's network: its features at every address and its logits.
    head = find_classifier(source)
    try:
        taken = features(source, batches, [*layer_map(source).names[:-1], head])
    except ValueError:  # an address that ends in no whole module: the logits alone
        taken = features(source, batches, head)
    p = taken.pop(head).double().softmax(-1)
    found: dict[str, Any] = {
        "samples": len(y),
        "layers": {address: logme(f_at, y) for address, f_at in taken.items()} or None,
    }
    for name, score in (("logme", lambda: logme(f, y)), ("hscore", lambda: hscore(f, y)),
                        ("leep", lambda: leep(p, y)), ("nce", lambda: nce(p.argmax(1), y))):  # fmt: skip
        try:
            found[name] = score()
        except ValueError:
            found[name] = None
    return found
