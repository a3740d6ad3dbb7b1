"""Synthetic logs: deterministic, well-shaped, and following the documented successor structure."""
from __future__ import annotations

import numpy as np
import pytest

from data.synthetic import (
    bayes_optimal_hit_rate,
    synthetic_dataset,
    synthetic_successor,
)


def transitions(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, next item) over every consecutive pair of every user."""
    previous = np.concatenate([s[:-1] for s in dataset.sequences])
    following = np.concatenate([s[1:] for s in dataset.sequences])
    return previous, following


def test_same_seed_same_data_other_seed_other_data():
    a, b = synthetic_dataset(seed=7), synthetic_dataset(seed=7)
    assert a.users == b.users and a.vocab.ids == b.vocab.ids
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert all(np.array_equal(x, y) for x, y in zip(a.timestamps, b.timestamps))
    c = synthetic_dataset(seed=8)
    assert not all(len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))


def test_shapes_ids_and_timestamps():
    dataset = synthetic_dataset(num_users=50, num_items=12, min_len=5, max_len=9, seed=1)
    assert dataset.name == "synthetic"
    assert len(dataset.users) == len(dataset.sequences) == len(dataset.timestamps) == 50
    assert dataset.users[:3] == ["u1", "u2", "u3"]
    assert dataset.num_items == 13 and dataset.vocab.ids == ["<pad>", *map(str, range(1, 13))]
    lengths = [len(s) for s in dataset.sequences]
    assert min(lengths) >= 5 and max(lengths) <= 9 and len(set(lengths)) > 1
    for seq, times in zip(dataset.sequences, dataset.timestamps):
        assert seq.dtype == np.int64 and times.dtype == np.float64 and len(seq) == len(times)
        assert seq.min() >= 1 and seq.max() <= 12
        assert np.all(np.diff(times) > 0)
    assert dataset.vocab.encode("7") == 7


def test_successor_is_one_cycle_through_all_items():
    successor = synthetic_successor(40, seed=3)
    assert successor[0] == 0 and np.array_equal(np.sort(successor[1:]), np.arange(1, 41))
    item, visited = 1, []
    for _ in range(40):
        visited.append(item)
        item = successor[item]
    assert item == 1 and sorted(visited) == list(range(1, 41))
    assert np.all(successor[1:] != np.arange(1, 41))


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.5])
def test_transitions_follow_the_successor_at_the_documented_rate(noise):
    dataset = synthetic_dataset(num_users=200, num_items=40, noise=noise, seed=2)
    previous, following = transitions(dataset)
    followed = np.mean(following == synthetic_successor(40, seed=2)[previous])
    expected = bayes_optimal_hit_rate(40, noise, k=1)
    assert expected == pytest.approx((1 - noise) + noise / 40)
    assert abs(followed - expected) < 0.02  # ~8,000 transitions: the standard error is below 0.006


def test_popularity_is_nearly_uniform_so_it_cannot_predict():
    dataset = synthetic_dataset(num_users=200, num_items=40, noise=0.1, seed=5)
    counts = dataset.item_counts()[1:]
    assert counts.max() / counts.mean() < 1.35 and counts.min() / counts.mean() > 0.65
    # the most popular item as the prediction for every next event: about 1/n of them
    previous, following = transitions(dataset)
    popular_hit_rate = np.mean(following == np.argmax(dataset.item_counts()))
    assert popular_hit_rate < 0.06


def test_bayes_optimal_hit_rate_values():
    assert bayes_optimal_hit_rate(40, 0.1) == pytest.approx(0.9025)
    assert bayes_optimal_hit_rate(40, 0.1, k=10) == pytest.approx(0.925)
    assert bayes_optimal_hit_rate(10, 1.0, k=20) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs", [dict(num_items=1), dict(num_users=0), dict(min_len=0),
                                    dict(min_len=10, max_len=5), dict(noise=1.5), dict(noise=-0.1)])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        synthetic_dataset(**kwargs)
