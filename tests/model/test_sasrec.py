"""SASRec: the window semantics shared by run and step, the tied output, the config checks."""
from __future__ import annotations

import pytest
import torch

from model.config import ModelConfig
from model.network import build_model

NUM_ITEMS = 25


def tiny(max_len: int = 6, **fields) -> ModelConfig:
    return ModelConfig(num_items=NUM_ITEMS, model="sasrec", embed_dim=8, hidden_dim=16,
                       max_len=max_len, layers=2, heads=2, dropout=0.0, **fields)


def test_step_by_step_equals_one_run_within_the_window() -> None:
    torch.manual_seed(0)
    model = build_model(tiny()).double().eval()
    items = torch.randint(1, NUM_ITEMS, (3, 6))
    with torch.no_grad():
        logits, state = model(items, model.initial_state(3))  # [3, 6, I]
        stepped = model.initial_state(3)
        for t in range(6):
            step_logits, stepped = model.step(items[:, t], stepped)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-10)
    assert torch.equal(state.items, stepped.items) and state.pos.tolist() == [6, 6, 6]


def test_past_the_window_a_step_reads_only_the_last_max_len_events() -> None:
    torch.manual_seed(1)
    model = build_model(tiny(max_len=4)).double().eval()
    items = torch.randint(1, NUM_ITEMS, (2, 11))
    with torch.no_grad():
        state = model.initial_state(2)
        for t in range(11):
            logits, state = model.step(items[:, t], state)
            window = items[:, max(0, t - 3): t + 1]
            expected, _ = model(window, model.initial_state(2))
            torch.testing.assert_close(logits, expected[:, -1], rtol=0, atol=1e-10)
        assert torch.equal(state.items, items[:, -4:])


def test_run_refuses_more_than_the_window_or_a_started_state() -> None:
    model = build_model(tiny(max_len=4))
    with pytest.raises(ValueError, match="at most max_len=4 events from the initial state"):
        model(torch.ones(1, 5, dtype=torch.long), model.initial_state(1))
    _, state = model(torch.ones(1, 2, dtype=torch.long), model.initial_state(1))
    with pytest.raises(ValueError, match="initial state"):
        model(torch.ones(1, 2, dtype=torch.long), state)


def test_tied_output_scores_with_the_item_embeddings() -> None:
    torch.manual_seed(2)
    for config in (tiny(tied=True), ModelConfig(num_items=NUM_ITEMS, model="gru4rec", embed_dim=8,
                                                hidden_dim=16, tied=True, dropout=0.0)):
        model = build_model(config).eval()
        assert not hasattr(model, "decode")
        with torch.no_grad():
            model.decode_bias.normal_()
            features = torch.randn(3, model.combine.in_features)
            expected = model.combine(features) @ model.embedding.weight.T + model.decode_bias
            torch.testing.assert_close(model.output(features), expected)


@pytest.mark.parametrize("fields,message", [
    (dict(model="sasrec", embed_dim=8, heads=3), "heads: 3 does not divide embed_dim=8"),
    (dict(model="gru4rec", embed_dim=8, out_dim=4, tied=True), "tied: .* out_dim must equal"),
    (dict(model="sasrec", max_len=0), "max_len: must be >= 1"),
    (dict(model="sasrec", max_len=1), "max_len: sasrec needs a window of at least 2"),
])
def test_bad_configs_are_refused(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(num_items=NUM_ITEMS, **fields)


def test_tied_sasrec_starts_with_small_logits() -> None:
    # N(0, 1) embeddings made a tied output start with logits of std ~sqrt(k) and stall training
    torch.manual_seed(3)
    model = build_model(tiny(tied=True)).eval()
    weights = model.embedding.weight.detach()
    assert float(weights[1:].std()) < 0.05 and not weights[0].any()
    with torch.no_grad():
        logits, _ = model(torch.randint(1, NUM_ITEMS, (4, 6)), model.initial_state(4))
    assert float(logits.std()) < 1.0
