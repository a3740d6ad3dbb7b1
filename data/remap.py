"""Re-encoding a data set's items: onto another vocabulary, or without its rare items. Torch-free."""
from __future__ import annotations

import numpy as np

from data.dataset import PAD_ID, ItemVocab, SequenceDataset


def align_to_vocab(dataset: SequenceDataset, vocab: ItemVocab) -> SequenceDataset:
    """The data set re-encoded with `vocab` (a trained run's, say).

    Events of items that `vocab` does not hold are dropped, then users left without events.
    """
    if dataset.vocab.ids == vocab.ids:
        return dataset
    mapping = np.zeros(dataset.num_items, dtype=np.int64)  # dataset id -> vocab id (0: unknown)
    for index, item in enumerate(dataset.vocab.ids[1:], start=1):
        mapping[index] = vocab.encode(item) if item in vocab else PAD_ID
    users, sequences, times = [], [], []
    for u, seq in enumerate(dataset.sequences):
        mapped = mapping[seq]
        keep = mapped != PAD_ID
        if not keep.any():
            continue
        users.append(dataset.users[u])
        sequences.append(mapped[keep])
        if dataset.timestamps is not None:
            times.append(dataset.timestamps[u][keep])
    return SequenceDataset(name=dataset.name, users=users, sequences=sequences, vocab=vocab,
                           timestamps=times if dataset.timestamps is not None else None)


def filter_min_item_freq(dataset: SequenceDataset, min_item_freq: int) -> SequenceDataset:
    """Drop every event of an item with fewer than min_item_freq events, then users left empty.

    The kept items keep their relative order in the vocabulary.
    """
    counts = dataset.item_counts()
    kept = [item for index, item in enumerate(dataset.vocab.ids)
            if index != PAD_ID and counts[index] >= min_item_freq]
    if len(kept) == dataset.num_items - 1:
        return dataset
    if not kept:
        raise ValueError(f"min_item_freq: no item of {dataset.name} has {min_item_freq} events")
    kept_set = set(kept)
    titles = {item: title for item, title in dataset.vocab.titles.items() if item in kept_set}
    return align_to_vocab(dataset, ItemVocab.from_items(kept, titles))
