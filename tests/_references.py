"""References computed another way, in numpy, shared by the tests."""

import numpy as np


def cka_reference(x, y, debiased=False):
    """From Gram matrices: HSIC with the centring matrix, or U-centred for the debiased."""
    k, l = x @ x.T, y @ y.T  # noqa: E741
    n = len(k)

    def centred(gram):
        if not debiased:
            h = np.eye(n) - 1 / n
            return h @ gram @ h
        gram = gram.copy()
        np.fill_diagonal(gram, 0)
        means = gram.sum(0) / (n - 2)
        gram -= means[:, None] + means[None, :] - gram.sum() / ((n - 1) * (n - 2))
        np.fill_diagonal(gram, 0)
        return gram

    kc, lc = centred(k), centred(l)
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))
