"""DNC addressing (Graves et al. 2016, Methods): pure functions on batched tensors.

Shapes: B batch, N memory slots, W slot width, R read heads.
"""
from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-6


def cosine_weights(memory: Tensor, keys: Tensor, strengths: Tensor) -> Tensor:
    """Content weights C(M, k, beta)[i] = softmax_i(beta * cos(k, M[i])).

    memory: [B, N, W] M; keys: [B, K, W] k (K heads); strengths: [B, K] beta >= 1.
    Returns [B, K, N].
    """
    dot = torch.einsum("bkw,bnw->bkn", keys, memory)
    memory_norm = torch.sqrt((memory * memory).sum(-1) + _EPS)  # [B, N]
    key_norm = torch.sqrt((keys * keys).sum(-1) + _EPS)  # [B, K]
    similarity = dot / (key_norm.unsqueeze(-1) * memory_norm.unsqueeze(1) + _EPS)
    return torch.softmax(similarity * strengths.unsqueeze(-1), dim=-1)


def retention(free_gates: Tensor, read_weights: Tensor) -> Tensor:
    """Memory retention psi = prod_i (1 - f_i w^r_{t-1,i}).

    free_gates: [B, R] f; read_weights: [B, R, N] previous w^r. Returns [B, N].
    """
    return torch.prod(1.0 - free_gates.unsqueeze(-1) * read_weights, dim=1)


def usage_update(usage: Tensor, write_weights: Tensor, free_gates: Tensor,
                 read_weights: Tensor) -> Tensor:
    """u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} * w^w_{t-1}) * psi_t.

    usage: [B, N]; write_weights: [B, N] previous w^w; free_gates: [B, R]; read_weights: [B, R, N].
    """
    usage = usage + write_weights - usage * write_weights
    return usage * retention(free_gates, read_weights)


def allocation_weights(usage: Tensor) -> Tensor:
    """Allocation a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i], phi = slots sorted by usage.

    Written without a sort: slot i comes before slot j when u_i < u_j, ties broken by the lower
    index. An N x N comparison mask and a product then give the exclusive cumulative product;
    this exports to ONNX as plain element-wise ops and ReduceProd, and both sides break ties alike.
    usage: [B, N] in [0, 1]. Returns [B, N].
    """
    usage = _EPS + (1.0 - _EPS) * usage
    n = usage.shape[-1]
    index = torch.arange(n, device=usage.device)
    u_i = usage.unsqueeze(1)  # [B, 1, N]: candidate predecessor i along the last axis
    u_j = usage.unsqueeze(2)  # [B, N, 1]: slot j along the middle axis
    earlier = (u_i < u_j) | ((u_i == u_j) & (index.view(1, 1, n) < index.view(1, n, 1)))
    ones = torch.ones_like(u_i).expand(-1, n, -1)
    predecessors = torch.where(earlier, u_i.expand(-1, n, -1), ones).prod(dim=-1)  # [B, N]
    return (1.0 - usage) * predecessors


def write_weighting(allocation: Tensor, write_content: Tensor, allocation_gate: Tensor,
                    write_gate: Tensor) -> Tensor:
    """w^w = g^w (g^a a + (1 - g^a) c^w).

    allocation: [B, N]; write_content: [B, N]; allocation_gate, write_gate: [B, 1]. Returns [B, N].
    """
    return write_gate * (allocation_gate * allocation + (1.0 - allocation_gate) * write_content)


def erase_and_add(memory: Tensor, write_weights: Tensor, erase: Tensor, add: Tensor) -> Tensor:
    """M_t = M_{t-1} o (1 - w^w e^T) + w^w v^T.

    memory: [B, N, W]; write_weights: [B, N]; erase e, add v: [B, W]. Returns [B, N, W].
    """
    w = write_weights.unsqueeze(-1)
    return memory * (1.0 - w * erase.unsqueeze(1)) + w * add.unsqueeze(1)


def link_update(link: Tensor, precedence: Tensor, write_weights: Tensor) -> Tensor:
    """L_t[i, j] = (1 - w_i - w_j) L_{t-1}[i, j] + w_i p_{t-1}[j], with a zero diagonal.

    link: [B, N, N]; precedence: [B, N] previous p; write_weights: [B, N] w^w_t.
    """
    w_i = write_weights.unsqueeze(2)
    w_j = write_weights.unsqueeze(1)
    new_link = (1.0 - w_i - w_j) * link + w_i * precedence.unsqueeze(1)
    n = link.shape[-1]
    off_diagonal = 1.0 - torch.eye(n, dtype=link.dtype, device=link.device)
    return new_link * off_diagonal


def precedence_update(precedence: Tensor, write_weights: Tensor) -> Tensor:
    """p_t = (1 - sum_i w^w_t[i]) p_{t-1} + w^w_t.  precedence, write_weights: [B, N]."""
    return (1.0 - write_weights.sum(-1, keepdim=True)) * precedence + write_weights


def directional_weights(link: Tensor, read_weights: Tensor, forward: bool) -> Tensor:
    """Forward f_i = L_t w^r_{t-1,i} or backward b_i = L_t^T w^r_{t-1,i}.

    link: [B, N, N]; read_weights: [B, R, N]. Returns [B, R, N].
    """
    if forward:
        return torch.einsum("bij,brj->bri", link, read_weights)
    return torch.einsum("bji,brj->bri", link, read_weights)
