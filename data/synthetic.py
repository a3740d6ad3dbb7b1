"""Synthetic interaction logs with a known sequential structure, for fast tests of the models.

The structure is a hidden successor map s: one random cycle through all n = num_items items, so that
s(x) != x and following s from any item visits every item. Each user starts at a uniformly random item,
and each next event is

    x_{t+1} = s(x_t)                with probability 1 - noise,
    x_{t+1} ~ Uniform{1..n}         with probability noise (which may also hit s(x_t)).

Every item is equally likely at every position (the uniform distribution is stationary for this chain),
so popularity carries no signal: HR@K of a popularity ranking is about K/n. The next item is, however,
predictable from the last one: the Bayes-optimal ranking puts s(x_t) first, so

    Bayes-optimal HR@1 = (1 - noise) + noise / n,
    Bayes-optimal HR@K = (1 - noise) + noise * K / n   (K <= n; the other K - 1 slots are a tie),

e.g. 0.9025 for noise=0.1, n=40. A sequence model learns s from the transitions; a model that only
sees item counts cannot. Deterministic given the seed; external ids are "1".."n" for items (internal id
= external id) and "u1".."u<num_users>" for users; timestamps strictly increase within each user.
Torch-free.
"""
from __future__ import annotations

import numpy as np

from data.dataset import ItemVocab, SequenceDataset

START_TIME = 1_600_000_000.0  # POSIX seconds of the earliest possible first event
MAX_GAP_S = 3_600  # seconds between a user's consecutive events: uniform on 1..MAX_GAP_S


def synthetic_successor(num_items: int, seed: int = 0) -> np.ndarray:
    """[num_items + 1] int64: successor[x] = s(x) for internal ids x in 1..num_items; successor[0] = 0.

    One random cycle through all items (no fixed point), the same for a given (num_items, seed).
    """
    if num_items < 2:
        raise ValueError(f"num_items must be >= 2, got {num_items}")
    cycle = np.random.default_rng([seed, 0]).permutation(num_items) + 1  # internal ids in cycle order
    successor = np.zeros(num_items + 1, dtype=np.int64)
    successor[cycle] = np.roll(cycle, -1)
    return successor


def bayes_optimal_hit_rate(num_items: int, noise: float, k: int = 1) -> float:
    """HR@k of the ideal next-item predictor on synthetic_dataset data: (1 - noise) + noise * k / n."""
    return (1.0 - noise) + noise * min(k, num_items) / num_items


def synthetic_dataset(num_users: int = 200, num_items: int = 40, min_len: int = 20, max_len: int = 60,
                      noise: float = 0.1, seed: int = 0) -> SequenceDataset:
    """Generate the logs described in the module docstring; name "synthetic".

    num_items: n real items (the vocabulary has n + 1 entries with padding).
    min_len, max_len: each user's sequence length is uniform on min_len..max_len (inclusive).
    noise: probability that an event ignores the successor map and picks a uniformly random item.
    """
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    successor = synthetic_successor(num_items, seed)
    rng = np.random.default_rng([seed, 1])
    sequences: list[np.ndarray] = []
    timestamps: list[np.ndarray] = []
    for _ in range(num_users):
        length = int(rng.integers(min_len, max_len + 1))
        jumps = rng.random(length) < noise  # events drawn uniformly instead of following s
        random_items = rng.integers(1, num_items + 1, size=length)
        items = np.empty(length, dtype=np.int64)
        items[0] = random_items[0]
        for t in range(1, length):
            items[t] = random_items[t] if jumps[t] else successor[items[t - 1]]
        start = START_TIME + float(rng.integers(0, 86_400 * 365))
        gaps = rng.integers(1, MAX_GAP_S + 1, size=length - 1)
        sequences.append(items)
        timestamps.append(start + np.concatenate([[0.0], np.cumsum(gaps, dtype=np.float64)]))
    vocab = ItemVocab.from_items([str(x) for x in range(1, num_items + 1)])
    users = [f"u{u}" for u in range(1, num_users + 1)]
    return SequenceDataset(name="synthetic", users=users, sequences=sequences, vocab=vocab, timestamps=timestamps)
