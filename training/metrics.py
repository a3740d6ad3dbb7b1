"""Top-K ranking metrics for leave-one-out evaluation (one target item per user).

Everything is vectorised over a users x K hit matrix: hits[u, j] = 1 iff the item ranked j+1 for
user u is that user's target. With one target per user a row holds at most one 1, so every metric
below can also be read off the target's 1-based rank r_u (r_u > K means a miss):

    HR@K   = mean_u [r_u <= K]
    NDCG@K = mean_u [r_u <= K] / log2(r_u + 1)     (the ideal DCG of one relevant item is 1)
    MRR@K  = mean_u [r_u <= K] / r_u

Torch-free (numpy only).
"""
from __future__ import annotations

import numpy as np

CUTOFFS = (5, 10, 20)  # the K of HR@K, NDCG@K, MRR@K reported everywhere
METRIC_NAMES = ("hr", "ndcg", "mrr")


def hit_matrix(ranks: np.ndarray, k: int) -> np.ndarray:
    """hits[u, j] = 1.0 iff ranks[u] == j + 1.

    ranks: [U] 1-based rank of each user's target among all candidate items. Returns [U, K] float64.
    """
    ranks = np.asarray(ranks)
    if k < 1:
        raise ValueError(f"k: must be >= 1, got {k}")
    if ranks.size and ranks.min() < 1:
        raise ValueError("ranks: must be 1-based (>= 1)")
    return (ranks.reshape(-1, 1) == np.arange(1, k + 1).reshape(1, -1)).astype(np.float64)


def hit_ratio(hits: np.ndarray) -> float:
    """HR@K = (1/U) sum_u max_j hits[u, j]. hits: [U, K] 0/1. 0.0 for no users."""
    hits = np.asarray(hits, dtype=np.float64)
    if hits.shape[0] == 0:
        return 0.0
    return float(hits.max(axis=1, initial=0.0).mean())


def ndcg(hits: np.ndarray) -> float:
    """NDCG@K = (1/U) sum_u sum_j hits[u, j] / log2(j + 2), with one relevant item per user (IDCG = 1).

    hits: [U, K] 0/1 (j is 0-based, so rank j+1 earns 1/log2(rank+1)). 0.0 for no users.
    """
    hits = np.asarray(hits, dtype=np.float64)
    if hits.shape[0] == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))  # [K]
    return float((hits * discounts).sum(axis=1).mean())


def mrr(hits: np.ndarray) -> float:
    """MRR@K = (1/U) sum_u sum_j hits[u, j] / (j + 1): the reciprocal rank, 0 beyond K.

    hits: [U, K] 0/1. 0.0 for no users.
    """
    hits = np.asarray(hits, dtype=np.float64)
    if hits.shape[0] == 0:
        return 0.0
    reciprocal = 1.0 / np.arange(1, hits.shape[1] + 1)  # [K]
    return float((hits * reciprocal).sum(axis=1).mean())


def ranking_metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """All of HR, NDCG, MRR at every cutoff from the targets' 1-based ranks.

    ranks: [U] 1-based target ranks. Returns {"hr@5": ..., "ndcg@5": ..., "mrr@5": ..., "hr@10": ...}.
    """
    result: dict[str, float] = {}
    for k in cutoffs:
        hits = hit_matrix(ranks, k)
        result[f"hr@{k}"] = hit_ratio(hits)
        result[f"ndcg@{k}"] = ndcg(hits)
        result[f"mrr@{k}"] = mrr(hits)
    return result


def metric_keys(cutoffs: tuple[int, ...] = CUTOFFS) -> list[str]:
    """The keys ranking_metrics returns, grouped by metric: hr@5, hr@10, ..., mrr@20."""
    return [f"{name}@{k}" for name in METRIC_NAMES for k in cutoffs]
