"""The leave-one-out split by time (DESIGN.md section 3), shared by training and evaluation.

A user with n >= 3 events: events 1..n-2 are training history, event n-1 is the validation target,
event n the test target. A user with fewer events is never evaluated; all of their events are
training history. Torch-free.
"""
from __future__ import annotations

import numpy as np

from data.dataset import SequenceDataset

MIN_EVALUATED_EVENTS = 3  # training history >= 1 event, then the validation and the test target


def is_evaluated(sequence: np.ndarray) -> bool:
    return len(sequence) >= MIN_EVALUATED_EVENTS


def evaluation_users(dataset: SequenceDataset) -> np.ndarray:
    """Indices (into dataset.sequences) of the users with a validation and a test target."""
    return np.array([u for u, seq in enumerate(dataset.sequences) if is_evaluated(seq)],
                    dtype=np.int64)


def training_sequence(sequence: np.ndarray) -> np.ndarray:
    """The part of one user's chronological sequence that training may see."""
    return sequence[:-2] if is_evaluated(sequence) else sequence


def training_sequences(dataset: SequenceDataset) -> list[np.ndarray]:
    """training_sequence of every user, aligned with dataset.users."""
    return [training_sequence(seq) for seq in dataset.sequences]


def training_item_counts(dataset: SequenceDataset) -> np.ndarray:
    """[I] interactions per internal item id in the training part only (index 0 stays 0)."""
    counts = np.zeros(dataset.num_items, dtype=np.int64)
    for seq in training_sequences(dataset):
        np.add.at(counts, seq, 1)
    counts[0] = 0
    return counts
