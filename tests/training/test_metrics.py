"""HR@K, NDCG@K, MRR@K against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    hit_matrix,
    hit_ratio,
    metric_keys,
    mrr,
    ndcg,
    ranking_metrics,
)


def test_hit_matrix_marks_the_rank_column() -> None:
    hits = hit_matrix(np.array([1, 3, 7]), k=5)
    assert hits.tolist() == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]


def test_metrics_of_a_hand_built_hit_matrix() -> None:
    # user 0 hit at rank 2, user 1 missed, user 2 hit at rank 1
    hits = np.array([[0, 1, 0], [0, 0, 0], [1, 0, 0]])
    assert hit_ratio(hits) == pytest.approx(2 / 3)
    assert ndcg(hits) == pytest.approx((1 / math.log2(3) + 1.0) / 3)
    assert mrr(hits) == pytest.approx((1 / 2 + 1.0) / 3)


def test_ranking_metrics_from_ranks_by_hand() -> None:
    metrics = ranking_metrics(np.array([1, 3, 11, 6]), cutoffs=(5, 10))
    assert metrics["hr@5"] == pytest.approx(2 / 4)
    assert metrics["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)  # = 0.375
    assert metrics["ndcg@5"] == pytest.approx(0.375)
    assert metrics["mrr@5"] == pytest.approx((1.0 + 1 / 3) / 4)
    assert metrics["hr@10"] == pytest.approx(3 / 4)
    assert metrics["ndcg@10"] == pytest.approx((1.0 + 0.5 + 1 / math.log2(7)) / 4)
    assert metrics["mrr@10"] == pytest.approx((1.0 + 1 / 3 + 1 / 6) / 4)


def test_perfect_and_hopeless_rankings() -> None:
    assert set(ranking_metrics(np.ones(7, dtype=int)).values()) == {1.0}
    assert set(ranking_metrics(np.full(7, 21)).values()) == {0.0}


def test_rank_exactly_k_counts_and_k_plus_one_does_not() -> None:
    metrics = ranking_metrics(np.array([5, 6]), cutoffs=(5,))
    assert metrics["hr@5"] == pytest.approx(0.5)
    assert metrics["mrr@5"] == pytest.approx(0.2 / 2)
    assert metrics["ndcg@5"] == pytest.approx(1 / math.log2(6) / 2)


def test_no_users_gives_zeros_and_bad_ranks_are_rejected() -> None:
    assert ranking_metrics(np.array([], dtype=int)) == {key: 0.0 for key in metric_keys()}
    with pytest.raises(ValueError):
        hit_matrix(np.array([0, 1]), k=5)
    with pytest.raises(ValueError):
        hit_matrix(np.array([1]), k=0)


def test_metric_keys_are_the_nine_reported_ones() -> None:
    assert metric_keys() == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20",
                             "mrr@5", "mrr@10", "mrr@20"]
    assert set(ranking_metrics(np.array([2]))) == set(metric_keys())
