"""An independent float64 numpy LogME: what ``benchmarks/run.py`` times
``auxtransfer.probe.logme`` against, and what ``tests/test_probe.py`` checks it against."""

from __future__ import annotations

from typing import Any

import numpy as np


def logme_numpy(f: Any, y: Any) -> float:
    """LogME's fixed-point algorithm (arXiv 2110.10545) in float64 numpy, class by class,
    written from the paper's update equations as its authors' code runs them: the SVD of
    ``f`` (for N > D through ``f^T f``, keeping singular values above 1e-10), then at most
    11 updates of alpha and beta per class, until ``alpha / beta`` moves by at most 0.1 %."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    if n > d:
        _, sv2, vt = np.linalg.svd(f.T @ f)
        sv = np.sqrt(sv2)
        k = int((sv > 1e-10).sum())
        sv, vt = sv[:k], vt[:k]
        u = (f @ vt.T) / sv
    else:
        u, sv, _ = np.linalg.svd(f, full_matrices=False)
    sigma = sv**2
    scores = []
    for c in range(int(y.max()) + 1):
        target = (y == c).astype(np.float64)
        x2 = (u.T @ target) ** 2
        rest = target @ target - x2.sum()
        alpha = beta = 1.0
        for _ in range(11):
            t = alpha / beta
            gamma = np.sum(sigma / (sigma + t))
            m2 = np.sum(sigma * x2 / (t + sigma) ** 2)
            res2 = np.sum(x2 / (1 + sigma / t) ** 2) + rest
            alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            if abs(alpha / beta - t) / t <= 1e-3:
                break
        scores.append(
            (d / 2 * np.log(alpha) + n / 2 * np.log(beta)
             - 0.5 * np.sum(np.log(alpha + beta * sigma)) - beta / 2 * res2 - alpha / 2 * m2
             - n / 2 * np.log(2 * np.pi)) / n
        )  # fmt: skip
    return float(np.mean(scores))
