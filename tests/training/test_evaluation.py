"""Leave-one-out evaluation: targets, the state each prediction is made from, ties, exclude_seen."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.split import evaluation_users, training_item_counts, training_sequences
from model.config import ModelConfig
from model.network import SequentialRecommender, build_model
from model.state import PopState
from tests.training.toy_data import counting_dataset, cyclic_dataset
from training.evaluation import (both_ranks, evaluate_model, evaluate_protocols,
                                 leave_one_out_ranks, protocol_ranks, seen_mask, target_ranks)


class NextPositionOracle(SequentialRecommender):
    """Scores 1 for item pos+1 and 0 for every other item: right on a counting sequence only if the
    prediction for a target is made from the state after exactly the events before it."""

    def initial_state(self, batch_size, dtype=None, device=None):
        return PopState(torch.zeros(batch_size, dtype=torch.long, device=device))

    def advance(self, embedded, state, chunk):
        return PopState(state.pos + 1)

    def features(self, state):
        return state.pos.unsqueeze(-1)

    def output(self, features):
        upcoming = (features.squeeze(-1) + 1).clamp(max=self.config.num_items - 1)
        return F.one_hot(upcoming, self.config.num_items).float()


def test_target_ranks_are_pessimistic_on_ties() -> None:
    scores = torch.tensor([[float("-inf"), 1.0, 2.0, 2.0, 0.0],
                           [float("-inf"), 1.0, 2.0, 2.0, 0.0],
                           [float("-inf"), 1.0, 2.0, 2.0, 0.0],
                           [float("-inf"), 1.0, float("nan"), 2.0, 0.0]])
    ranks = target_ranks(scores, torch.tensor([2, 3, 1, 2]))
    assert ranks.tolist() == [2, 2, 3, 5]


def test_split_keeps_the_last_two_events_out_of_training() -> None:
    data = counting_dataset([2, 3, 5])
    assert evaluation_users(data).tolist() == [1, 2]
    assert [s.tolist() for s in training_sequences(data)] == [[1, 2], [1], [1, 2, 3]]
    assert training_item_counts(data).tolist() == [0, 3, 2, 1, 0, 0]


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_each_target_is_scored_from_the_state_after_the_events_before_it(batch_size: int) -> None:
    lengths = [3, 4, 9, 17, 30, 2, 55, 8]  # across several blocks of T=8; one user not evaluated
    data = counting_dataset(lengths)
    oracle = NextPositionOracle(ModelConfig(num_items=data.num_items, model="pop", block_len=8,
                                            slots=2))
    ranks = leave_one_out_ranks(oracle, data, batch_size=batch_size)
    assert ranks["valid"].tolist() == [1] * 7 and ranks["test"].tolist() == [1] * 7
    metrics = evaluate_model(oracle, data, batch_size=batch_size)
    assert set(metrics) == {"valid", "test"}
    assert all(value == 1.0 for split in metrics.values() for value in split.values())


def _reference_ranks(model, data, exclude_seen: bool) -> dict[str, list[int]]:
    """Step-by-step, one user at a time, ranks counted by a plain loop."""
    ranks: dict[str, list[int]] = {"valid": [], "test": []}
    for u in evaluation_users(data):
        seq = data.sequences[u]
        n = len(seq)
        state = model.initial_state(1)
        for t in range(n - 1):
            logits, state = model.step(torch.tensor([int(seq[t])]), state)
            if t in (n - 3, n - 2):
                split, target = ("valid", int(seq[n - 2])) if t == n - 3 else ("test", int(seq[-1]))
                scores = logits[0].tolist()
                seen = set(seq[: t + 1].tolist()) if exclude_seen else set()
                if target in seen:  # excluded, so it can never be recommended: the worst rank
                    ranks[split].append(len(scores))
                    continue
                above = sum(1 for i, s in enumerate(scores)
                            if i not in (0, target) and i not in seen and s >= scores[target])
                ranks[split].append(1 + above)
    return ranks


@pytest.mark.parametrize("model_name,rule", [("cmnrec", "tsc"), ("srmn", "every"),
                                             ("gru4rec", "none"), ("sasrec", "none")])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_batched_blockwise_ranks_equal_a_step_by_step_reference(model_name, rule,
                                                                exclude_seen) -> None:
    torch.manual_seed(3)
    data = cyclic_dataset(users=9, items=12, min_len=3, max_len=27, seed=5)
    config = ModelConfig(num_items=data.num_items, model=model_name, rule=rule, embed_dim=6,
                         hidden_dim=8, mem_width=5, attn_dim=4, block_len=8, slots=3, heads=2,
                         max_len=27, tied=model_name == "sasrec")  # the window holds every input
    model = build_model(config).double().eval()
    ranks = leave_one_out_ranks(model, data, batch_size=4, exclude_seen=exclude_seen)
    reference = _reference_ranks(model, data, exclude_seen)
    assert ranks["valid"].tolist() == reference["valid"]
    assert ranks["test"].tolist() == reference["test"]


@pytest.mark.parametrize("model_name,rule", [("cmnrec", "tsc"), ("sasrec", "none")])
def test_ranking_the_validation_targets_alone_gives_their_ranks(model_name, rule) -> None:
    """Training validates with splits=("valid",) (no test scores, one event less to run): the
    validation ranks are those of the full evaluation, under both protocols, with block
    boundaries falling on the validation positions (block_len 5, histories of 3 to 27 events)."""
    torch.manual_seed(4)
    data = cyclic_dataset(users=23, items=12, min_len=3, max_len=27, seed=6)
    config = ModelConfig(num_items=data.num_items, model=model_name, rule=rule, embed_dim=6,
                         hidden_dim=8, mem_width=5, attn_dim=4, block_len=5, slots=2, heads=2,
                         max_len=27, tied=model_name == "sasrec")
    model = build_model(config).eval()
    full = protocol_ranks(model, data, batch_size=4)
    valid = protocol_ranks(model, data, batch_size=4, splits=("valid",))
    for protocol in ("all", "seen_excluded"):
        assert set(valid[protocol]) == {"valid"}
        assert valid[protocol]["valid"].tolist() == full[protocol]["valid"].tolist()
    assert set(evaluate_protocols(model, data, splits=("valid",))["all"]) == {"valid"}
    with pytest.raises(ValueError, match="splits"):
        protocol_ranks(model, data, splits=("train",))


def test_exclude_seen_never_ranks_a_seen_item_above_the_target() -> None:
    # A user who repeats item 1 forever: popularity ranks 1 first; excluding seen items drops it.
    data = counting_dataset([6])
    data.sequences[0] = np.array([1, 1, 1, 1, 2, 3], dtype=np.int64)
    pop = build_model(ModelConfig(num_items=data.num_items, model="pop"))
    pop.fit(torch.tensor([0, 50, 10, 5, 1, 0, 0], dtype=torch.float32))
    plain = leave_one_out_ranks(pop, data)
    excluded = leave_one_out_ranks(pop, data, exclude_seen=True)
    assert plain["valid"].tolist() == [2] and plain["test"].tolist() == [3]
    assert excluded["valid"].tolist() == [1] and excluded["test"].tolist() == [1]


def test_evaluation_leaves_the_model_in_its_mode() -> None:
    data = cyclic_dataset(users=4, items=10, min_len=3, max_len=10)
    model = build_model(ModelConfig(num_items=data.num_items, model="lstm4rec", embed_dim=4,
                                    hidden_dim=4, dropout=0.5))
    model.train()
    first = evaluate_model(model, data)
    assert model.training
    assert evaluate_model(model, data) == first  # dropout is off during evaluation


def _pop_model(counts: list[int]):
    pop = build_model(ModelConfig(num_items=len(counts), model="pop"))
    pop.fit(torch.tensor(counts, dtype=torch.float32))
    return pop


def test_both_protocols_against_hand_computed_ranks_and_metrics() -> None:
    # Popularity orders items 1 > 2 > 3 > 4 > 5 whatever the user did (6 entries with padding).
    pop = _pop_model([0, 50, 40, 30, 20, 10])
    data = counting_dataset([4, 4])
    data.sequences[0] = np.array([3, 1, 2, 4], dtype=np.int64)  # valid 2 after [3, 1]; test 4
    data.sequences[1] = np.array([5, 4, 5, 5], dtype=np.int64)  # repeats: masked targets
    both = protocol_ranks(pop, data, batch_size=2)
    # All items: 2 is second, 4 fourth, 5 fifth.
    assert both["all"]["valid"].tolist() == [2, 5] and both["all"]["test"].tolist() == [4, 5]
    # Masked: user 0's 3 and 1 (then 3, 1, 2) leave the ranking, so 2 and then 4 come first;
    # user 1's targets are in the history, so they can never be recommended: rank I = 6.
    assert both["seen_excluded"]["valid"].tolist() == [1, 6]
    assert both["seen_excluded"]["test"].tolist() == [1, 6]
    metrics = evaluate_protocols(pop, data, batch_size=1, cutoffs=(5,))
    assert metrics["all"]["test"]["hr@5"] == 1.0
    assert metrics["all"]["test"]["ndcg@5"] == pytest.approx((1 / np.log2(5) + 1 / np.log2(6)) / 2)
    assert metrics["all"]["test"]["mrr@5"] == pytest.approx((1 / 4 + 1 / 5) / 2)
    assert metrics["seen_excluded"]["test"] == {"hr@5": 0.5, "ndcg@5": 0.5, "mrr@5": 0.5}
    assert metrics["seen_excluded"]["valid"] == {"hr@5": 0.5, "ndcg@5": 0.5, "mrr@5": 0.5}


def test_seen_mask_covers_exactly_the_prefix() -> None:
    histories = torch.tensor([[3, 1, 2, 4], [5, 0, 0, 0]])
    mask = seen_mask(histories, torch.tensor([2, 1]), 6)
    assert mask.tolist() == [[True, True, False, True, False, False],
                             [True, False, False, False, False, True]]


def test_a_window_model_masks_the_whole_history_but_reads_only_its_window() -> None:
    # SASRec with L=3 reads the last 3 inputs; the masked protocol still removes every earlier item.
    torch.manual_seed(4)
    data = counting_dataset([9])
    config = ModelConfig(num_items=data.num_items, model="sasrec", embed_dim=4, hidden_dim=8,
                         max_len=3, heads=1, dropout=0.0)
    model = build_model(config).double().eval()
    ranks = protocol_ranks(model, data)
    with torch.no_grad():
        logits, _ = model(torch.tensor([[6, 7, 8]]), model.initial_state(1))
    scores = logits[0, -1].clone()
    scores[0] = float("-inf")
    assert ranks["all"]["test"].tolist() == [int((scores >= scores[9]).sum())]
    scores[1:9] = float("-inf")  # items 1..8: the whole history before the test target
    assert ranks["seen_excluded"]["test"].tolist() == [1]


def test_both_ranks_equal_ranking_a_masked_copy() -> None:
    # Random scores with ties, repeated history items, padding and a NaN target.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(0, 4, (50, 9), generator=generator).double()
    logits[7, 3] = float("nan")
    histories = torch.randint(1, 9, (50, 6), generator=generator)
    lengths = torch.randint(0, 7, (50,), generator=generator)
    targets = torch.randint(1, 9, (50,), generator=generator)
    targets[7] = 3
    all_ranks, masked_ranks = both_ranks(logits, targets, histories, lengths)
    scores = logits.clone()
    scores[:, 0] = float("-inf")
    assert all_ranks.tolist() == target_ranks(scores, targets).tolist()
    masked = scores.masked_fill(seen_mask(histories, lengths, 9), float("-inf"))
    assert masked_ranks.tolist() == target_ranks(masked, targets).tolist()
    assert all_ranks[7] == masked_ranks[7] == 9
