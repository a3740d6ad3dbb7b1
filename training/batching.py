"""Grouping users into batches of similar sequence length and right-padding them. Torch-free."""
from __future__ import annotations

import numpy as np

from data.dataset import PAD_ID


def pad_right(sequences: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """Stack sequences into [B, L] int64, each left-aligned and padded on the right with PAD_ID (0).

    length: L; defaults to the longest sequence. Longer sequences are an error, not truncated.
    """
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"pad_right: a sequence of {longest} events does not fit in {length}")
    out = np.full((len(sequences), length), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int,
                          rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Split row indices into batches of at most batch_size rows with similar lengths.

    Inside each batch the rows are sorted by length, longest first, so the rows still running at
    any time step form a prefix of the batch. With rng, rows of equal length are shuffled and the
    batch order is shuffled; without it, everything is deterministic (longest batch first).
    lengths: [U]. Returns a list of int64 index arrays.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    candidates = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    order = candidates[np.argsort(-lengths[candidates], kind="stable")]
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
