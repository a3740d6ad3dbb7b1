"""Training: the block-by-block unroll, early stopping, determinism, and learning for real."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.split import training_item_counts, training_sequences
from data.synthetic import synthetic_dataset
from model.config import ModelConfig
from model.network import build_model
from tests.training.toy_data import cyclic_dataset
from training.batching import length_sorted_batches
from training.lr_schedule import LearningRate, decay_factor, warmup_factor
from training.settings import TrainSettings
from training.trainer import (count_parameters, make_optimizer, sampled_candidates, train_epoch,
                              train_model, training_windows)

TINY = dict(embed_dim=8, hidden_dim=16, mem_width=8, attn_dim=8, block_len=10, slots=3)


def _mean_loss_step_by_step(model, sequences) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            state = model.initial_state(1)
            for t in range(len(seq) - 1):
                logits, state = model.step(torch.tensor([int(seq[t])]), state)
                total += float(F.cross_entropy(logits, torch.tensor([int(seq[t + 1])])))
                count += 1
    return total / count


@pytest.mark.parametrize("model_name,rule", [("cmnrec", "pec"), ("lstm4rec", "none"),
                                             ("lrurec", "none")])
def test_blockwise_batched_loss_equals_the_step_by_step_loss(model_name, rule) -> None:
    """Padding, length sorting, dropping finished rows and carrying the state across blocks
    change nothing: with a frozen model the epoch loss is the per-event loss of model.step."""
    torch.manual_seed(0)
    data = cyclic_dataset(users=11, items=15, min_len=3, max_len=34, seed=2)
    model = build_model(ModelConfig(num_items=data.num_items, model=model_name, rule=rule, dropout=0.0,
                                        **TINY))
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    sequences = training_sequences(data)
    lengths = np.array([len(s) for s in sequences])
    trainable = np.flatnonzero(lengths >= 2)
    expected = _mean_loss_step_by_step(model, [sequences[u] for u in trainable])
    settings = TrainSettings(clip_norm=0.0)
    for batch_size in (1, 4, 100):
        batches = [trainable[b] for b in length_sorted_batches(lengths[trainable], batch_size)]
        loss, targets, out_of_time, _ = train_epoch(model, frozen, sequences, batches, settings,
                                                    tqdm(disable=True), deadline=None)
        assert targets == int((lengths[trainable] - 1).sum())
        assert not out_of_time
        assert loss == pytest.approx(expected, rel=1e-5)


def test_a_trained_model_clearly_beats_popularity() -> None:
    """Acceptance (issue 2): a few seconds of training on synthetic data beat popularity clearly.

    On this data the Bayes-optimal HR@10 is 0.925 and popularity gets about 10/40."""
    data = synthetic_dataset(seed=0)
    settings = TrainSettings(epochs=4, batch_size=32, lr=5e-3, seed=0, threads=1)
    config = ModelConfig(num_items=data.num_items, model="cmnrec", rule="tsc", embed_dim=16,
                         hidden_dim=32, mem_width=16, attn_dim=16, block_len=20, slots=4)
    _, report = train_model(data, config, settings, progress=False)
    _, pop = train_model(data, dataclasses.replace(config, model="pop"), settings, progress=False)
    assert pop.epochs == 0 and pop.parameters == 0
    assert pop.metrics["test"]["hr@10"] < 0.4
    assert report.metrics["test"]["hr@10"] > 0.8
    assert report.metrics["test"]["ndcg@10"] > pop.metrics["test"]["ndcg@10"] + 0.5
    assert report.metrics["test"]["mrr@10"] > 3 * pop.metrics["test"]["mrr@10"]


def test_lrurec_trained_in_parallel_learns_the_synthetic_successors() -> None:
    """Issue 9: LRURec trained with the parallel scan per block learns (the same data and bar as
    the test above)."""
    data = synthetic_dataset(seed=0)
    settings = TrainSettings(epochs=4, batch_size=32, lr=5e-3, seed=0, threads=1)
    config = ModelConfig(num_items=data.num_items, model="lrurec", embed_dim=16, hidden_dim=32,
                         layers=1, block_len=20)
    model, report = train_model(data, config, settings, progress=False)
    assert report.metrics["test"]["hr@10"] > 0.8, report.metrics["test"]
    assert report.parameters == count_parameters(model) > 0


def test_same_seed_same_model_and_metrics() -> None:
    data = cyclic_dataset(users=30, items=20, min_len=3, max_len=25, seed=4)
    config = ModelConfig(num_items=data.num_items, model="cmnrec", rule="exc", dropout=0.2, **TINY)
    settings = TrainSettings(epochs=2, batch_size=8, seed=7)
    first, first_report = train_model(data, config, settings, progress=False)
    second, second_report = train_model(data, config, settings, progress=False)
    assert first_report.metrics == second_report.metrics
    assert [h["loss"] for h in first_report.history] == [h["loss"] for h in second_report.history]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    third, _ = train_model(data, config, dataclasses.replace(settings, seed=8), progress=False)
    assert not torch.equal(first.embedding.weight, third.embedding.weight)


def test_the_best_validation_epoch_is_kept() -> None:
    data = cyclic_dataset(users=40, items=20, min_len=3, max_len=30, seed=6)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    settings = TrainSettings(epochs=4, batch_size=8, lr=2e-2, patience=0)
    model, report = train_model(data, config, settings, progress=False)
    assert report.epochs == 4 and report.stopped == "completed"
    scores = [h["valid"]["ndcg@10"] for h in report.history]
    assert report.best_epoch == 1 + int(np.argmax(scores))
    assert report.metrics["valid"]["ndcg@10"] == pytest.approx(max(scores), abs=1e-12)
    assert report.parameters == count_parameters(model) > 0
    assert report.seconds_per_epoch > 0
    assert all(h["events"] > 0 and h["events_per_second"] > 0 for h in report.history)
    assert not model.training


def test_early_stopping_and_time_budget_stop_training() -> None:
    data = cyclic_dataset(users=20, items=15, min_len=3, max_len=20, seed=8)
    config = ModelConfig(num_items=data.num_items, model="lstm4rec", **TINY)
    # lr so small that validation NDCG@10 cannot improve on its first value twice in a row
    _, stalled = train_model(data, config, TrainSettings(epochs=20, lr=1e-9, patience=2),
                             progress=False)
    assert stalled.stopped == "early_stopping" and stalled.epochs < 20
    _, timed = train_model(data, config, TrainSettings(epochs=20, max_seconds=1e-6),
                           progress=False)
    assert timed.stopped == "max_seconds" and timed.epochs == 1


def test_popularity_is_fitted_on_training_events_only() -> None:
    data = cyclic_dataset(users=10, items=12, min_len=3, max_len=12, seed=9)
    config = ModelConfig(num_items=data.num_items, model="pop")
    model, report = train_model(data, config, TrainSettings(), progress=False)
    expected = torch.log1p(torch.from_numpy(training_item_counts(data)).float())
    assert torch.allclose(model.log_counts[1:], expected[1:])
    assert report.history == [] and set(report.metrics) == {"valid", "test"}


def test_bad_settings_and_mismatched_config_are_rejected() -> None:
    for field, value in [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("patience", -1),
                         ("threads", 0), ("max_seconds", 0.0)]:
        with pytest.raises(ValueError, match=field):
            TrainSettings(**{field: value})
    data = cyclic_dataset(users=3, items=5)
    with pytest.raises(ValueError, match="num_items"):
        train_model(data, ModelConfig(num_items=99, model="gru4rec"), TrainSettings(),
                    progress=False)


def test_validation_every_k_steps_with_patience_counted_in_validations() -> None:
    data = cyclic_dataset(users=24, items=15, min_len=3, max_len=20, seed=10)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    settings = TrainSettings(epochs=3, batch_size=8, eval_every=2, patience=0)
    _, report = train_model(data, config, settings, progress=False)
    steps_per_epoch = report.steps // 3
    assert report.steps == 3 * steps_per_epoch > 0
    mid = [h for h in report.history if not h["complete"]]
    assert [h["step"] for h in mid] == list(range(2, report.steps + 1, 2))
    assert len(report.history) == len(mid) + 3  # and one validation at the end of each epoch
    assert set(report.seen_excluded) == {"valid", "test"}
    # lr so small that nothing improves: patience 2 stops after the third validation, mid-epoch
    _, stalled = train_model(data, config, TrainSettings(epochs=5, batch_size=8, lr=1e-9,
                                                         eval_every=1, patience=2),
                             progress=False)
    assert stalled.stopped == "early_stopping" and stalled.steps == 3 and stalled.epochs == 1


def test_adamw_decays_matrices_not_biases_and_adam_is_available() -> None:
    model = build_model(ModelConfig(num_items=20, model="gru4rec", **TINY))
    groups = make_optimizer(model, TrainSettings(weight_decay=0.1)).param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() == 1 for p in groups[1]["params"])
    assert isinstance(make_optimizer(model, TrainSettings(optimizer="adam")), torch.optim.Adam)
    with pytest.raises(ValueError, match="optimizer"):
        TrainSettings(optimizer="sgd")


def test_sasrec_trains_on_the_last_max_len_events_and_beats_popularity() -> None:
    data = cyclic_dataset(users=60, items=20, min_len=5, max_len=40, seed=11)
    config = ModelConfig(num_items=data.num_items, model="sasrec", embed_dim=16, hidden_dim=32,
                         max_len=8, heads=2, tied=True, dropout=0.1)
    model = build_model(config)
    assert [len(w) for w in training_windows(model, data)] == [
        min(len(s), 9) for s in training_sequences(data)]
    _, report = train_model(data, config, TrainSettings(epochs=6, batch_size=16, lr=1e-2),
                            progress=False)
    _, pop = train_model(data, ModelConfig(num_items=data.num_items, model="pop"), TrainSettings(),
                         progress=False)
    assert report.metrics["test"]["ndcg@10"] > pop.metrics["test"]["ndcg@10"] + 0.2


def test_schedule_factors_by_hand() -> None:
    assert decay_factor("constant", 0.7) == 1.0
    assert decay_factor("linear", 0.25) == pytest.approx(0.75)
    assert [decay_factor("cosine", p) for p in (0.0, 0.5, 1.0, 1.5)] == pytest.approx(
        [1.0, 0.5, 0.0, 0.0])
    assert [warmup_factor(s, 4) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1])
    assert warmup_factor(0, 0) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainSettings(warmup_steps=-1)


def test_the_rate_decays_to_zero_at_the_last_step_of_the_last_epoch() -> None:
    data = cyclic_dataset(users=24, items=15, min_len=3, max_len=40, seed=12)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    settings = TrainSettings(epochs=3, batch_size=8, lr=1e-2, eval_every=1, patience=0,
                             lr_schedule="linear", warmup_steps=2)
    _, report = train_model(data, config, settings, progress=False)
    rates = [h["lr"] for h in report.history if not h["complete"]]  # the next step's rate
    assert len(rates) == report.steps > 6
    # step 1 ran at lr / 2 (warm-up), then linear decay; the horizon is exactly the steps taken
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(rates[1:], rates[2:]))
    assert rates[1] == pytest.approx(1e-2 * (1 - 2 / report.steps))
    _, constant = train_model(data, config, dataclasses.replace(settings, lr_schedule="constant",
                                                                warmup_steps=0), progress=False)
    assert {h["lr"] for h in constant.history} == {1e-2}


def test_a_time_budget_sets_the_horizon_when_it_ends_first() -> None:
    model = build_model(ModelConfig(num_items=20, model="gru4rec", **TINY))
    settings = TrainSettings(lr=1.0, lr_schedule="cosine", max_seconds=100.0)
    optimizer = make_optimizer(model, settings)
    rate = LearningRate(optimizer, settings, total_steps=10**9, began=time.perf_counter() - 50.0)
    assert rate.update(1) == pytest.approx(0.5, abs=1e-3)  # half the budget spent
    assert all(g["lr"] == pytest.approx(0.5, abs=1e-3) for g in optimizer.param_groups)
    steps_only = LearningRate(optimizer, settings, total_steps=4, began=time.perf_counter(),
                              use_clock=False)
    assert steps_only.update(2) == pytest.approx(0.5)  # under DDP: the step fraction only


def test_sampled_candidates_hold_every_target_and_index_it() -> None:
    torch.manual_seed(0)
    targets = torch.tensor([[3, 5, 0], [5, 7, 0], [9, 0, 0]])
    candidates, index = sampled_candidates(targets, num_items=12, negatives=4)
    assert torch.equal(candidates, torch.unique(candidates))  # sorted, distinct
    assert {3, 5, 7, 9} <= set(candidates.tolist()) and 0 not in candidates.tolist()
    assert len(candidates) <= 4 + 4 and int(candidates.max()) < 12
    real = targets != 0
    assert torch.equal(candidates[index[real]], targets[real])
    assert (index[~real] == -100).all()


@pytest.mark.parametrize("model_name,tied", [("cmnrec", False), ("gru4rec", True),
                                             ("lrurec", False), ("sasrec", True)])
def test_candidate_logits_are_the_full_logits_of_those_items(model_name, tied) -> None:
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_items=30, model=model_name, tied=tied, max_len=6,
                                    heads=2, **{**TINY, "embed_dim": 8})).eval()
    items = torch.randint(1, 30, (3, 6))
    candidates = torch.tensor([2, 5, 11, 29])
    full, _ = model(items, model.initial_state(3))
    some, _ = model(items, model.initial_state(3), candidates=candidates)
    assert some.shape == (3, 6, 4)
    assert torch.allclose(some, full[..., candidates], atol=1e-6)


def test_a_sampled_softmax_learns_the_synthetic_successors() -> None:
    data = cyclic_dataset(users=120, items=60, min_len=5, max_len=40, seed=13)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    settings = TrainSettings(epochs=8, batch_size=16, lr=1e-2, patience=0, sampled_softmax=6)
    _, sampled = train_model(data, config, settings, progress=False)
    _, pop = train_model(data, ModelConfig(num_items=data.num_items, model="pop"), TrainSettings(),
                         progress=False)
    assert sampled.metrics["test"]["ndcg@10"] > pop.metrics["test"]["ndcg@10"] + 0.3
