"""Chunk attention (paper Eq. 8-9) kept as a running softmax summary.

Inside a chunk the read vector r is constant (it only changes at chunk times), so the scores
e_j = w . tanh(W o_j + U vec r) of the buffered outputs never change once computed, and the softmax-
weighted sum a = sum_j softmax(e)_j o_j can be folded in one output at a time (an online softmax):
m = running max of e, s = sum exp(e_j - m), n = sum exp(e_j - m) o_j, and a = n / s.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ChunkAttention(nn.Module):
    """e = w_a . tanh(W_a o + U_a vec r) (Eq. 8); a = sum_j softmax(e)_j o_j (Eq. 9)."""

    def __init__(self, hidden_dim: int, read_size: int, attn_dim: int) -> None:
        super().__init__()
        self.output_proj = nn.Linear(hidden_dim, attn_dim)  # W (with bias)
        self.read_proj = nn.Linear(read_size, attn_dim, bias=False)  # U
        self.score_vector = nn.Linear(attn_dim, 1, bias=False)  # w

    def context(self, read_flat: Tensor) -> Tensor:
        """U vec r, constant over a chunk. read_flat: [B, R*W]. Returns [B, b]."""
        return self.read_proj(read_flat)

    def score(self, output: Tensor, context: Tensor) -> Tensor:
        """Eq. 8 before the softmax. output: [B, H] o_j; context: [B, b] U vec r. Returns [B] e_j."""
        return self.score_vector(torch.tanh(self.output_proj(output) + context)).squeeze(-1)

    @staticmethod
    def fold(running_max: Tensor, norm: Tensor, total: Tensor, score: Tensor,
             output: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fold one (e_j, o_j) into the summary (m [B], s [B], n [B, H]); returns the new summary."""
        new_max = torch.maximum(running_max, score)
        old_scale = torch.exp(running_max - new_max)
        new_weight = torch.exp(score - new_max)
        new_norm = norm * old_scale + new_weight
        new_total = total * old_scale.unsqueeze(-1) + new_weight.unsqueeze(-1) * output
        return new_max, new_norm, new_total

    @staticmethod
    def readout(norm: Tensor, total: Tensor) -> Tensor:
        """Eq. 9 from the summary: a = n / s. norm: [B]; total: [B, H]. Returns [B, H]."""
        return total / norm.unsqueeze(-1)

    def attend(self, buffer: Tensor, read_flat: Tensor) -> Tensor:
        """Eq. 8-9 over a raw buffer, for reference. buffer: [B, l, H] c_j; read_flat: [B, R*W]."""
        context = self.context(read_flat).unsqueeze(1)  # [B, 1, b]
        scores = self.score_vector(torch.tanh(self.output_proj(buffer) + context)).squeeze(-1)
        weights = torch.softmax(scores, dim=-1)  # [B, l] a_ij
        return torch.einsum("bl,blh->bh", weights, buffer)
