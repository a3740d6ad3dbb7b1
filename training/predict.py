"""Top-n next items after a sequence of external item ids: the reference answer of `cmnrec predict`.

The serving tests hold the HTTP service to this function: the scores are the raw logits of the
model's full-sequence forward from the initial state (in the model's float type, float32 for every
checkpoint), the padding id is never recommended, items are sorted by score descending with ties
broken by the lower internal id, and exclude_seen drops the items of the sequence.
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import torch

from data.dataset import ItemVocab
from model import ranking
from model.network import SequentialRecommender
from training.checkpoint import Run


class UnknownItemError(KeyError):
    """An external item id that the model's vocabulary does not hold."""

    def __init__(self, item_id: str) -> None:
        super().__init__(item_id)
        self.item_id = item_id

    def __str__(self) -> str:
        return f"unknown item id {self.item_id!r}"


def encode_items(vocab: ItemVocab, items: Sequence[str]) -> list[int]:
    """Internal ids of external item ids, in order; UnknownItemError names the first unknown one."""
    encoded = []
    for item in items:
        try:
            encoded.append(vocab.encode(str(item)))
        except KeyError:
            raise UnknownItemError(str(item)) from None
    return encoded


@torch.no_grad()
def next_item_scores(model: SequentialRecommender, item_ids: Sequence[int]) -> torch.Tensor:
    """Logits for the item after the sequence: forward from the initial state. Returns [I].

    item_ids: internal ids, at least one.
    """
    if not item_ids:
        raise ValueError("items: need at least one item")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        items = torch.tensor([list(item_ids)], dtype=torch.long, device=device)  # [1, L]
        logits, _ = model(items, model.initial_state(1, device=device))  # [1, L, I]
    finally:
        model.train(was_training)
    return logits[0, -1]


def top_items(scores: torch.Tensor, n: int, exclude: Sequence[int] = ()) -> list[tuple[int, float]]:
    """The n best (internal id, score) pairs of scores [I] (model.ranking.top_n, the ranking the
    service uses): padding and `exclude` never, score descending, ties by lower internal id."""
    row = scores.detach().to(torch.float32).cpu().numpy()
    return ranking.top_n(row, n, [list(exclude)])[0]


def recommend(run_or_model: Union[Run, SequentialRecommender], vocab: ItemVocab | None,
              items: Sequence[str], n: int = 10, exclude_seen: bool = False) -> list[dict[str, Any]]:
    """Top-n next items after `items` (external ids, oldest first).

    run_or_model: a loaded training.checkpoint.Run, or a model (then vocab is required);
    vocab: None to use the run's. Returns [{"item_id": str, "score": float, "title"?: str}, ...].
    Raises UnknownItemError for an item the vocabulary does not hold, ValueError for no items.
    """
    if isinstance(run_or_model, Run):
        model, vocab = run_or_model.model, vocab or run_or_model.vocab
    else:
        model = run_or_model
    if vocab is None:
        raise ValueError("vocab: required when a bare model is given")
    item_ids = encode_items(vocab, items)
    scores = next_item_scores(model, item_ids)
    result = []
    for index, score in top_items(scores, n, item_ids if exclude_seen else ()):
        item_id = vocab.decode(index)
        entry: dict[str, Any] = {"item_id": item_id, "score": score}
        title = vocab.title(item_id)
        if title is not None:
            entry["title"] = title
        result.append(entry)
    return result
