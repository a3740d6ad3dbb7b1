"""The reference top-n answer that `cmnrec predict` prints and the service is held to."""
from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.network import build_model
from tests.training.toy_data import cyclic_dataset
from training.checkpoint import load_run, save_run
from training.predict import UnknownItemError, recommend, top_items


@pytest.fixture(scope="module")
def model_and_vocab():
    torch.manual_seed(0)
    data = cyclic_dataset(users=5, items=30)
    model = build_model(ModelConfig(num_items=data.num_items, model="cmnrec", rule="pec",
                                    embed_dim=6, hidden_dim=8, mem_width=4, attn_dim=4,
                                    block_len=4, slots=2)).eval()
    return model, data.vocab


def test_recommend_equals_the_step_by_step_logits_sorted(model_and_vocab) -> None:
    model, vocab = model_and_vocab
    items = ["i3", "i7", "i7", "i12", "i1", "i30", "i2", "i9", "i4"]  # crosses two blocks of T=4
    state = model.initial_state(1)
    with torch.no_grad():
        for item in items:
            logits, state = model.step(torch.tensor([vocab.encode(item)]), state)
    scores = logits[0].tolist()
    expected = sorted(range(1, len(scores)), key=lambda i: (-scores[i], i))[:10]
    answer = recommend(model, vocab, items, n=10)
    assert [vocab.encode(r["item_id"]) for r in answer] == expected
    for entry in answer:
        assert entry["score"] == pytest.approx(scores[vocab.encode(entry["item_id"])], abs=1e-5)
    assert [r["score"] for r in answer] == sorted((r["score"] for r in answer), reverse=True)


def test_exclude_seen_drops_the_sequence_items(model_and_vocab) -> None:
    model, vocab = model_and_vocab
    items = ["i3", "i7", "i12"]
    everything = recommend(model, vocab, items, n=30)
    assert len(everything) == 30 and {"i3", "i7", "i12"} <= {r["item_id"] for r in everything}
    kept = recommend(model, vocab, items, n=30, exclude_seen=True)
    assert [r for r in everything if r["item_id"] not in items] == kept


def test_titles_are_added_when_known(model_and_vocab) -> None:
    model, vocab = model_and_vocab
    answer = recommend(model, vocab, ["i2"], n=30)
    titled = [r for r in answer if "title" in r]
    assert titled == [r for r in answer if r["item_id"] == "i1"]
    assert titled[0]["title"] == "Item One"


def test_ties_go_to_the_lower_internal_id_and_padding_never_appears() -> None:
    scores = torch.tensor([9.0, 1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_items(scores, 4) == [(2, 3.0), (3, 3.0), (5, 3.0), (4, 2.0)]
    assert top_items(scores, 10, exclude=[3]) == [(2, 3.0), (5, 3.0), (4, 2.0), (1, 1.0)]
    assert top_items(scores, 0) == []


def test_unknown_items_and_empty_sequences_are_clear_errors(model_and_vocab) -> None:
    model, vocab = model_and_vocab
    with pytest.raises(UnknownItemError, match="nope") as caught:
        recommend(model, vocab, ["i1", "nope"], n=3)
    assert caught.value.item_id == "nope"
    with pytest.raises(UnknownItemError):
        recommend(model, vocab, ["<pad>"], n=3)
    with pytest.raises(ValueError, match="items"):
        recommend(model, vocab, [], n=3)
    with pytest.raises(ValueError, match="vocab"):
        recommend(model, None, ["i1"], n=3)


def test_a_saved_run_gives_the_same_answer(model_and_vocab, tmp_path) -> None:
    model, vocab = model_and_vocab
    save_run(tmp_path, model, vocab, item_counts=[0] * len(vocab))
    loaded = load_run(tmp_path)
    assert recommend(loaded, None, ["i5", "i6"], n=5) == recommend(model, vocab, ["i5", "i6"], n=5)
