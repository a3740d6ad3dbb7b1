"""Interaction data as chronological per-user item sequences with a stable item-id mapping.

The loaders (MovieLens-100k from the recbole wheel, u.data, ratings.dat, ratings.csv, generic CSV)
live in data/loaders.py; the synthetic generator in data/synthetic.py. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAD_ID = 0
PAD_TOKEN = "<pad>"


@dataclass
class ItemVocab:
    """External item id (str) <-> internal index; index 0 is padding and never a real item."""

    ids: list[str]  # ids[i] is the external id of internal index i; ids[0] == PAD_TOKEN
    titles: dict[str, str] = field(default_factory=dict)  # external id -> title, when known

    def __post_init__(self) -> None:
        if not self.ids or self.ids[0] != PAD_TOKEN:
            raise ValueError("ItemVocab.ids must start with the padding token")
        self._index = {item: i for i, item in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            raise ValueError("ItemVocab.ids holds a duplicate item id")

    def __len__(self) -> int:
        """Catalogue size I including padding."""
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index and item_id != PAD_TOKEN

    def encode(self, item_id: str) -> int:
        """Internal index of an external id; KeyError for an unknown item."""
        index = self._index.get(str(item_id), PAD_ID)
        if index == PAD_ID:
            raise KeyError(item_id)
        return index

    def decode(self, index: int) -> str:
        return self.ids[index]

    def title(self, item_id: str) -> str | None:
        return self.titles.get(item_id)

    def to_dict(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "titles": dict(self.titles)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ItemVocab":
        return cls(ids=list(data["ids"]), titles=dict(data.get("titles") or {}))

    @classmethod
    def from_items(cls, items: list[str], titles: dict[str, str] | None = None) -> "ItemVocab":
        """A vocabulary over the given external ids in the given order (first id -> index 1)."""
        return cls(ids=[PAD_TOKEN, *items], titles=dict(titles or {}))


@dataclass
class SequenceDataset:
    """Per-user chronological sequences of internal item ids (int64 arrays, no padding)."""

    name: str
    users: list[str]  # external user ids, aligned with sequences
    sequences: list[np.ndarray]  # sequences[u]: [n_u] int64 internal item ids in time order
    vocab: ItemVocab
    timestamps: list[np.ndarray] | None = None  # aligned float64 timestamps, when known

    @property
    def num_items(self) -> int:
        """Catalogue size I including padding."""
        return len(self.vocab)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def item_counts(self) -> np.ndarray:
        """[I] number of interactions per internal item id (index 0 stays 0)."""
        counts = np.zeros(self.num_items, dtype=np.int64)
        for seq in self.sequences:
            np.add.at(counts, seq, 1)
        counts[PAD_ID] = 0
        return counts
