"""Resumable training: a run interrupted and resumed trains exactly as one uninterrupted run."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from model.config import ModelConfig
from tests.training.toy_data import cyclic_dataset
from training.resume import STATE_FILE
from training.settings import TrainSettings
from training.trainer import train_model

TINY = dict(embed_dim=8, hidden_dim=16, mem_width=8, attn_dim=8, block_len=10, slots=3)


def _saved(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def _assert_same_optimizer(first: dict, second: dict) -> None:
    assert first["param_groups"] == second["param_groups"]
    for key, state in first["state"].items():
        for name, value in state.items():
            assert torch.equal(value, second["state"][key][name]), (key, name)


@pytest.mark.parametrize("model_name,sampled", [("cmnrec", 0), ("cmnrec", 6), ("lrurec", 0)])
def test_training_resumed_after_an_epoch_equals_uninterrupted_training(tmp_path, model_name,
                                                                       sampled) -> None:
    """Weights, AdamW's moments, dropout masks, sampled negatives and batch order all carry over:
    2 epochs + 1 resumed epoch == 3 epochs, bit for bit."""
    data = cyclic_dataset(users=30, items=20, min_len=3, max_len=25, seed=4)
    config = ModelConfig(num_items=data.num_items, model=model_name,
                         rule="tsc" if model_name == "cmnrec" else "none", dropout=0.3,
                         layers=1, **TINY)
    settings = TrainSettings(epochs=3, batch_size=8, lr=5e-3, seed=3, patience=0,
                             sampled_softmax=sampled)
    whole, whole_report = train_model(data, config, settings, progress=False,
                                      state_file=tmp_path / "whole" / STATE_FILE)
    parts = tmp_path / "parts" / STATE_FILE
    _, first = train_model(data, config, dataclasses.replace(settings, epochs=2), progress=False,
                           state_file=parts)
    assert first.epochs == 2 and _saved(parts)["epoch"] == 2
    resumed, report = train_model(data, config, settings, progress=False, state_file=parts)

    assert report.epochs == 3 and report.steps == whole_report.steps
    assert [h["loss"] for h in report.history] == [h["loss"] for h in whole_report.history]
    assert report.metrics == whole_report.metrics
    assert report.best_epoch == whole_report.best_epoch
    _assert_same_tensors(resumed.state_dict(), whole.state_dict())
    a, b = _saved(parts), _saved(tmp_path / "whole" / STATE_FILE)
    _assert_same_tensors(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])


@pytest.mark.parametrize("patience", [0, 1])
def test_an_epoch_cut_by_the_time_budget_resumes_at_the_batch_where_it_stopped(tmp_path,
                                                                               patience) -> None:
    """The budget ends after the first batch of epoch 2; the resumed run trains the rest of that
    epoch's batches, in the same order, then epoch 3: the last weights equal an uncut run's. The
    validation at the cut is kept as a record only: early stopping and the kept weights go on as
    in the uncut run (patience 1 makes one extra validation without gain decisive)."""
    data = cyclic_dataset(users=40, items=20, min_len=3, max_len=25, seed=5)
    config = ModelConfig(num_items=data.num_items, model="cmnrec", rule="pec", dropout=0.2,
                         **TINY)
    settings = TrainSettings(epochs=3, batch_size=8, seed=1, patience=patience)
    whole = tmp_path / "whole" / STATE_FILE
    uncut_model, uncut = train_model(data, config, settings, progress=False, state_file=whole)
    cut = tmp_path / "cut" / STATE_FILE
    train_model(data, config, dataclasses.replace(settings, epochs=1), progress=False,
                state_file=cut)
    spent = _saved(cut)["seconds"]  # the budget counts the resumed parts: it ends 1 us from here
    _, report = train_model(data, config, dataclasses.replace(settings, max_seconds=spent + 1e-6),
                            progress=False, state_file=cut)
    assert report.stopped == "max_seconds"
    state = _saved(cut)
    assert state["epoch"] == 2 and state["batches_done"] == 1 < state["batches"]
    model, resumed = train_model(data, config, settings, progress=False, state_file=cut)
    assert (resumed.stopped, resumed.epochs, resumed.steps, resumed.best_epoch) == (
        uncut.stopped, uncut.epochs, uncut.steps, uncut.best_epoch)
    assert resumed.metrics == uncut.metrics
    cut_records = [h for h in resumed.history if not h["complete"]]
    assert len(cut_records) == 1 and cut_records[0]["epoch"] == 2
    assert [h["valid"] for h in resumed.history if h["complete"]] == [h["valid"]
                                                                      for h in uncut.history]
    _assert_same_tensors(model.state_dict(), uncut_model.state_dict())
    a, b = _saved(cut), _saved(whole)
    _assert_same_tensors(a["model"], b["model"])
    _assert_same_optimizer(a["optimizer"], b["optimizer"])


def test_resume_refuses_other_data(tmp_path) -> None:
    config = ModelConfig(num_items=11, model="gru4rec", **TINY)
    state = tmp_path / STATE_FILE
    first = cyclic_dataset(users=12, items=10, min_len=3, max_len=12, seed=2)
    other = cyclic_dataset(users=12, items=10, min_len=3, max_len=12, seed=3)
    assert first.num_items == other.num_items == 11
    train_model(first, config, TrainSettings(epochs=1), progress=False, state_file=state)
    with pytest.raises(ValueError, match="resume: .*other data"):
        train_model(other, config, TrainSettings(epochs=2), progress=False, state_file=state)


def test_a_finished_run_is_not_trained_again_unless_its_horizon_grows(tmp_path) -> None:
    data = cyclic_dataset(users=20, items=15, min_len=3, max_len=20, seed=8)
    config = ModelConfig(num_items=data.num_items, model="lstm4rec", **TINY)
    state = tmp_path / STATE_FILE
    # lr so small that validation NDCG@10 cannot improve on its first value twice in a row
    stalling = TrainSettings(epochs=20, lr=1e-9, patience=2)
    _, stalled = train_model(data, config, stalling, progress=False, state_file=state)
    assert stalled.stopped == "early_stopping"
    _, again = train_model(data, config, stalling, progress=False, state_file=state)
    assert again.stopped == "early_stopping" and again.history == stalled.history
    assert again.metrics == stalled.metrics
    _, patient = train_model(data, config, dataclasses.replace(stalling, patience=4),
                             progress=False, state_file=state)
    assert len(patient.history) == len(stalled.history) + 2

    done = tmp_path / "done" / STATE_FILE
    _, two = train_model(data, config, TrainSettings(epochs=2, patience=0), progress=False,
                         state_file=done)
    _, same = train_model(data, config, TrainSettings(epochs=2, patience=0), progress=False,
                          state_file=done)
    assert same.epochs == two.epochs == 2 and same.steps == two.steps and same.history == two.history
    _, more = train_model(data, config, TrainSettings(epochs=3, patience=0), progress=False,
                          state_file=done)
    assert more.epochs == 3 and more.steps > two.steps and len(more.history) == 3


@pytest.mark.parametrize("change,field", [({"lr": 2e-3}, "lr"), ({"seed": 1}, "seed"),
                                          ({"hidden_dim": 12}, "hidden_dim")])
def test_resume_refuses_another_model_or_training(tmp_path, change, field) -> None:
    data = cyclic_dataset(users=12, items=10, min_len=3, max_len=12, seed=2)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    settings = TrainSettings(epochs=1)
    state = tmp_path / STATE_FILE
    train_model(data, config, settings, progress=False, state_file=state)
    model_change = {k: v for k, v in change.items() if k in ModelConfig.__dataclass_fields__}
    with pytest.raises(ValueError, match=f"resume: .*{field}="):
        train_model(data, dataclasses.replace(config, **model_change),
                    dataclasses.replace(settings, **{k: v for k, v in change.items()
                                                     if k not in model_change}),
                    progress=False, state_file=state)


def test_a_state_saved_before_a_settings_field_existed_resumes_with_its_default(tmp_path) -> None:
    """A later version adds a TrainSettings field: an older state lacks it and reads as the
    default; a value other than the default is refused."""
    data = cyclic_dataset(users=12, items=10, min_len=3, max_len=12, seed=2)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    state = tmp_path / STATE_FILE
    train_model(data, config, TrainSettings(epochs=1), progress=False, state_file=state)
    payload = _saved(state)
    del payload["settings"]["clip_norm"]  # as if clip_norm had come after this state
    torch.save(payload, state)
    _, report = train_model(data, config, TrainSettings(epochs=2), progress=False,
                            state_file=state)
    assert report.epochs == 2 and len(report.history) == 2
    with pytest.raises(ValueError, match="resume: .*clip_norm="):
        train_model(data, config, TrainSettings(epochs=3, clip_norm=1.0), progress=False,
                    state_file=state)


def test_a_state_saved_before_loss_weighting_existed_resumes_as_per_step(tmp_path) -> None:
    """States saved before TrainSettings.loss_weighting were trained with the per-step mean: they
    resume as "step" whatever today's default is, and are refused with "target"."""
    from training.resume import BEFORE_FIELD

    assert BEFORE_FIELD["loss_weighting"] == "step"
    data = cyclic_dataset(users=12, items=10, min_len=3, max_len=12, seed=2)
    config = ModelConfig(num_items=data.num_items, model="gru4rec", **TINY)
    state = tmp_path / STATE_FILE
    train_model(data, config, TrainSettings(epochs=1, loss_weighting="step"), progress=False,
                state_file=state)
    payload = _saved(state)
    del payload["settings"]["loss_weighting"]
    torch.save(payload, state)
    with pytest.raises(ValueError, match="resume: .*loss_weighting='step'"):
        train_model(data, config, TrainSettings(epochs=2, loss_weighting="target"),
                    progress=False, state_file=state)
    _, report = train_model(data, config, TrainSettings(epochs=2, loss_weighting="step"),
                            progress=False, state_file=state)
    assert report.epochs == 2 and len(report.history) == 2
