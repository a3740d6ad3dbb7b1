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
