"""The training loss: cross-entropy over the item scores, fused with the output layer on the CPU.

Scoring a block of B×T positions against I items makes a [B·T, I] logits tensor (ML-1M: 3,200 ×
3,417 floats, 44 MB) that F.linear writes, F.cross_entropy reads and writes back as log-softmax,
and the backward pass reads and writes twice more: on one CPU core the output layer took about
two thirds of a CmnRec training step, mostly waiting on memory. `linear_cross_entropy` computes
the same sum a few hundred rows at a time, so each slice of logits stays in the core's cache, and
computes the gradients in the same pass (the softmax of a slice is at hand there; only d-wide
gradients are kept for the backward pass). This is the fused linear cross-entropy of GPU kernel
libraries (Liger's FusedLinearCrossEntropy), written here in PyTorch because no CPU library has it.

The sum equals F.cross_entropy(F.linear(h, W, b), y, ignore_index, reduction="sum") up to float
rounding, and so do the gradients (tests/training/test_loss.py).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

ROWS_PER_SLICE = 256  # 256 × 3,417 floats = 3.5 MB of logits: in cache, still large matrix products


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
                ignore_index: int, rows: int) -> Tensor:
        total = features.new_zeros(())
        grad_features = torch.zeros_like(features)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias)
        for start in range(0, features.shape[0], rows):
            y = targets[start: start + rows]
            kept = (y != ignore_index).nonzero().squeeze(1)  # rows with a target
            if kept.numel() == 0:
                continue
            h = features[start: start + rows].index_select(0, kept)  # [n, d]
            y = y.index_select(0, kept)
            logits = torch.addmm(bias, h, weight.t())  # [n, C]
            log_norm = torch.logsumexp(logits, dim=1)  # [n]
            total += (log_norm - logits.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
            # d loss / d logits = softmax - one_hot(y), built in place over the logits
            probs = logits.sub_(log_norm.unsqueeze(1)).exp_()
            probs[torch.arange(y.shape[0], device=y.device), y] -= 1.0
            grad_features.index_copy_(0, start + kept, probs @ weight)
            grad_weight.addmm_(probs.t(), h)
            grad_bias += probs.sum(dim=0)
        ctx.save_for_backward(grad_features, grad_weight, grad_bias)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        return grad_features * grad, grad_weight * grad, grad_bias * grad, None, None, None


def linear_cross_entropy(features: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
                         ignore_index: int, rows: int = ROWS_PER_SLICE) -> Tensor:
    """sum over positions with a target of -log softmax(W h + b)[y], in slices of `rows`.

    features: [N, d] h; weight: [C, d] W; bias: [C] b; targets: [N] indices into C, ignore_index
    where a position has no target. Returns the summed loss (a scalar); its backward gives the
    gradients of features, weight and bias (once: no double backward). The gradients are
    computed in the forward pass; where no gradient is wanted (no_grad, or no input requires
    one) the plain F.linear + F.cross_entropy runs instead.
    """
    if not (torch.is_grad_enabled()
            and any(t.requires_grad for t in (features, weight, bias))):
        return F.cross_entropy(F.linear(features, weight, bias), targets,
                               ignore_index=ignore_index, reduction="sum")
    return _LinearCrossEntropy.apply(features, weight, bias, targets, ignore_index, rows)
