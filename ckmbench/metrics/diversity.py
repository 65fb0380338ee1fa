"""Diversity of a set of generated maps: their mean pairwise RMSE.

For unconditional generation a pixel error against a paired test map means nothing (the
pairing is arbitrary), so `generate` is scored by FID and by this: the mean RMSE (normalized
map units) over all pairs of predicted maps. The same figure over the test maps, the data's
own diversity, goes to the notes as ``diversity_data``: a generator near it covers the data's
variety; one far below it has collapsed to a few modes (0 = every map the same).
"""

from __future__ import annotations

import torch


def mean_pairwise_rmse(maps: torch.Tensor, chunk: int = 256) -> float | None:
    """Mean over pairs i < j of sqrt(mean((m_i − m_j)²)) for maps (N, 1, H, W); None if N < 2."""
    n = int(maps.shape[0])
    if n < 2:
        return None
    flat = maps.reshape(n, -1).double()
    pixels = flat.shape[1]
    total = 0.0
    for start in range(0, n, chunk):
        d = torch.cdist(flat[start:start + chunk], flat) / pixels ** 0.5  # (c, n) pairwise RMSE
        rows = torch.arange(start, min(n, start + chunk))[:, None]
        total += float(d[torch.arange(n)[None, :] > rows].sum())  # each pair once (j > i)
    return total / (n * (n - 1) / 2)


def diversity(preds: torch.Tensor, targets: torch.Tensor) -> dict:
    value = mean_pairwise_rmse(preds)
    return {"value": value, "notes": {"diversity_data": mean_pairwise_rmse(targets), "diversity_n": int(preds.shape[0])}}
