"""The fused output layer + cross-entropy equals F.linear + F.cross_entropy, loss and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.loss import linear_cross_entropy


@pytest.mark.parametrize("rows", [1, 7, 64, 1000])
def test_the_fused_loss_and_gradients_equal_the_unfused_ones(rows) -> None:
    """Slices of any size, padding positions (ignored) inside and across slices, and a slice with
    no target at all."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(90, 6, dtype=torch.float64, generator=generator)
    weight = torch.randn(40, 6, dtype=torch.float64, generator=generator)
    bias = torch.randn(40, dtype=torch.float64, generator=generator)
    targets = torch.randint(1, 40, (90,), generator=generator)
    targets[::3] = -100
    targets[10:20] = -100
    outputs = {}
    for name in ("fused", "plain"):
        h, w, b = (t.clone().requires_grad_() for t in (features, weight, bias))
        if name == "fused":
            loss = linear_cross_entropy(h, w, b, targets, -100, rows=rows)
        else:
            loss = F.cross_entropy(F.linear(h, w, b), targets, ignore_index=-100, reduction="sum")
        (2.5 * loss).backward()  # the incoming gradient scales the saved ones
        outputs[name] = (loss.detach(), h.grad, w.grad, b.grad)
    for fused, plain in zip(outputs["fused"], outputs["plain"]):
        assert torch.allclose(fused, plain, rtol=0, atol=1e-10), (fused - plain).abs().max()


def test_no_target_gives_zero_loss_and_zero_gradients() -> None:
    h = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(4, 3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    loss = linear_cross_entropy(h, w, b, torch.zeros(5, dtype=torch.long), 0)
    loss.backward()
    assert loss.item() == 0.0
    assert not h.grad.any() and not w.grad.any() and not b.grad.any()


@pytest.mark.parametrize("model_name,sampled", [("cmnrec", 0), ("cmnrec", 5), ("sasrec", 0),
                                                ("lrurec", 5)])
def test_a_training_pass_with_the_fused_loss_equals_one_without(model_name, sampled) -> None:
    """The same updates with and without the fused output layer: dropout masks and sampled
    negatives are drawn in the same order; a tied output (SASRec) and a sampled softmax's
    gathered rows get their gradients through it."""
    import numpy as np
    from tqdm import tqdm

    from data.split import training_sequences
    from model.config import ModelConfig
    from model.network import build_model
    from tests.training.toy_data import cyclic_dataset
    from training.batching import length_sorted_batches
    from training.settings import TrainSettings
    from training.trainer import train_epoch

    data = cyclic_dataset(users=20, items=15, min_len=3, max_len=26, seed=1)
    sequences = training_sequences(data)
    lengths = np.array([len(s) for s in sequences])
    trainable = np.flatnonzero(lengths >= 2)
    batches = [trainable[b] for b in length_sorted_batches(lengths[trainable], 6)]
    config = ModelConfig(num_items=data.num_items, model=model_name, embed_dim=8, hidden_dim=16,
                         mem_width=8, attn_dim=8, block_len=10, slots=3, layers=1, heads=2,
                         rule="tsc" if model_name == "cmnrec" else "none", dropout=0.3,
                         max_len=30, tied=model_name == "sasrec")
    settings = TrainSettings(sampled_softmax=sampled)
    weights, losses = {}, {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(config)
        # SGD: Adam would blow float noise up to full steps where a gradient is ~0 in theory
        # (the key bias of self-attention)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        result = train_epoch(model, optimizer, sequences, batches, settings, tqdm(disable=True),
                             deadline=None, fused=fused)
        weights[fused], losses[fused] = model.state_dict(), result.loss
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for name, value in weights[True].items():
        assert torch.allclose(value, weights[False][name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("fused", [True, False])
def test_target_weighting_scales_a_step_by_its_share_of_a_full_block(fused) -> None:
    """loss_weighting="target": a block's loss is its summed loss / (batch_size x T), so a block
    with few targets makes a proportionally smaller step than under "step" (its own mean)."""
    import numpy as np
    from tqdm import tqdm

    from model.config import ModelConfig
    from model.network import build_model
    from training.settings import TrainSettings
    from training.trainer import train_epoch

    # one batch of 2 users (3 and 5 events: 2 + 4 = 6 targets), one block of T = 8, batch_size 4
    sequences = [np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])]
    batches = [np.array([1, 0])]  # longest first
    config = ModelConfig(num_items=10, model="lrurec", embed_dim=8, hidden_dim=8, block_len=8,
                         layers=1, dropout=0.0)
    deltas = {}
    for weighting in ("step", "target"):
        torch.manual_seed(0)
        model = build_model(config)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # the step is linear in the loss
        settings = TrainSettings(batch_size=4, clip_norm=0.0, loss_weighting=weighting)
        result = train_epoch(model, optimizer, sequences, batches, settings, tqdm(disable=True),
                             deadline=None, fused=fused)
        assert result.targets == 6
        deltas[weighting] = {k: v - before[k] for k, v in model.state_dict().items()}
    moved = 0
    for name, step in deltas["step"].items():
        assert torch.allclose(deltas["target"][name], step * 6 / 32, rtol=1e-4, atol=1e-7), name
        moved += int(step.abs().max() > 0)
    assert moved > 5  # the comparison is not between two zero updates
    with pytest.raises(ValueError, match="loss_weighting"):
        TrainSettings(loss_weighting="user")
