"""Small hand-made data sets for the training tests (built directly as SequenceDataset)."""
from __future__ import annotations

import numpy as np

from data.dataset import ItemVocab, SequenceDataset


def cyclic_dataset(users: int = 120, items: int = 40, min_len: int = 3, max_len: int = 60,
                   seed: int = 0) -> SequenceDataset:
    """Each user walks the item circle 1..items with a personal stride in {1, 2, 3}.

    The next item is fully determined by the last one and the stride, which a sequential model
    learns from the first few events; popularity cannot tell users apart.
    """
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(users):
        stride = int(rng.integers(1, 4))
        start = int(rng.integers(0, items))
        length = int(rng.integers(min_len, max_len + 1))
        sequences.append(((start + stride * np.arange(length)) % items + 1).astype(np.int64))
    vocab = ItemVocab.from_items([f"i{i}" for i in range(1, items + 1)],
                                 titles={"i1": "Item One"})
    return SequenceDataset(name="cyclic", users=[f"u{u}" for u in range(users)],
                           sequences=sequences, vocab=vocab)


def counting_dataset(lengths: list[int]) -> SequenceDataset:
    """User u's sequence is 1, 2, ..., lengths[u]: the item id equals the event's 1-based position."""
    items = max(lengths)
    vocab = ItemVocab.from_items([str(i) for i in range(1, items + 1)])
    sequences = [np.arange(1, n + 1, dtype=np.int64) for n in lengths]
    return SequenceDataset(name="counting", users=[str(u) for u in range(len(lengths))],
                           sequences=sequences, vocab=vocab)
