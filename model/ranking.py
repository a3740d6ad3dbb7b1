"""The one top-N: used by the serving engine and by `cmnrec predict`, so both rank alike."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from data.dataset import PAD_ID


def top_n(scores: np.ndarray, n: int,
          exclude: Sequence[Iterable[int]] | None = None) -> list[list[tuple[int, float]]]:
    """Per row, the n best (internal item id, score): score descending, ties by lower id.

    scores: [B, I] (or [I]). The padding id 0 and each row's excluded ids never appear; a row
    gets fewer than n items only when fewer are left.
    """
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 1:
        scores = scores[None]
    rows, num_items = scores.shape
    if exclude is not None and len(exclude) != rows:
        raise ValueError(f"exclude: {len(exclude)} lists for {rows} score rows")
    if n == 0:
        return [[] for _ in range(rows)]
    masked = scores.copy()
    masked[:, PAD_ID] = -np.inf
    if exclude is not None:
        for row, ids in enumerate(exclude):
            ids = np.fromiter(ids, dtype=np.int64)
            masked[row, ids[(ids > 0) & (ids < num_items)]] = -np.inf
    return [_top_row(masked[row], n) for row in range(rows)]


def _top_row(row: np.ndarray, n: int) -> list[tuple[int, float]]:
    allowed = np.count_nonzero(row > -np.inf)
    k = min(n, allowed)
    if k == 0:
        return []
    if k < allowed:
        best = np.argpartition(row, row.size - k)[row.size - k:]
        candidates = np.flatnonzero(row >= row[best].min())  # every id tied at the cut-off
    else:
        candidates = np.flatnonzero(row > -np.inf)
    order = np.lexsort((candidates, -row[candidates]))[:k]
    chosen = candidates[order]
    return list(zip(chosen.tolist(), row[chosen].tolist()))
