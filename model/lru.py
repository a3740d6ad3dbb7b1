"""LRURec (Yue et al., WSDM 2024): linear recurrent units for sequential recommendation.

One LRU layer keeps a diagonal complex state h [N] per user and updates it with a linear recurrence

    h_t = lambda * h_{t-1} + gamma * (B u_t + b_B)          lambda, gamma: [N], B: [N, k] complex
    y_t = Re(C h_t + c)                                      C: [k, N] complex
    u'_t = LayerNorm(dropout(y_t) + u_t)                     residual, then normalisation
    x_t = LayerNorm(dropout(W_2 GELU(W_1 u'_t)) + u'_t)      position-wise feed-forward, W_1 [4k, k]

with the stable exponential parameterisation of the eigenvalues (Orvieto et al. 2023):
lambda = exp(-exp(nu_log) + i exp(theta_log)), so |lambda| = exp(-exp(nu_log)) < 1 for any
nu_log, and the input normalisation gamma = exp(gamma_log), initialised to sqrt(1 - |lambda|^2).
The network is an item embedding followed by LayerNorm, `layers` such blocks, and scores tied to
the item embeddings: logits = x_t E^T + bias.

Complex numbers are carried as real/imaginary float pairs everywhere (the state, the maths and so
the ONNX graphs: ONNX has no complex type). Because lambda does not depend on the input, the
recurrence over a run of L events has a parallel form: with b_t = gamma * (B u_t + b_B) and the
carried state folded into the first term (b_0 += lambda h_{-1}), h_t = sum_{s <= t} lambda^{t-s}
b_s, which `linear_scan` computes in ceil(log2 L) rounds. Training runs this scan inside each block
of T events, starting from the state the previous block left; serving runs one recurrence step per
event. Both give the same state (tests/model/test_lru.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig
from model.network import ChunkFlag, SequentialRecommender
from model.state import LRUState

R_MIN, R_MAX = 0.8, 0.99  # initial eigenvalue moduli are drawn uniformly on this ring
THETA_MAX = 2 * math.pi  # initial eigenvalue phases are drawn from [0, THETA_MAX)
FFN_EXPANSION = 4  # the feed-forward's inner size is 4k
INIT_STD = 0.02  # truncated normal (at 2 std) for the embedding and the dense weights


def complex_mul(a_re: Tensor, a_im: Tensor, b_re: Tensor, b_im: Tensor) -> tuple[Tensor, Tensor]:
    """(a_re + i a_im)(b_re + i b_im) on real tensors that broadcast together."""
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


def linear_scan(a_re: Tensor, a_im: Tensor, b_re: Tensor,
                b_im: Tensor) -> tuple[Tensor, Tensor]:
    """All states of h_t = a h_{t-1} + b_t, h_{-1} = 0, along axis 1, in ceil(log2 L) rounds.

    a: [N] the constant diagonal (lambda); b: [B, L, N] inputs. Returns h [B, L, N] (re, im).
    Hillis-Steele: before round j element t holds sum_{s in (t - 2^j, t]} a^{t-s} b_s; round j
    adds a^(2^j) times element t - 2^j. Every round is elementwise over all t at once.
    """
    length = b_re.shape[1]
    p_re, p_im = a_re, a_im  # a^k for the current offset k
    k = 1
    while k < length:
        add_re, add_im = complex_mul(p_re, p_im, b_re[:, :-k], b_im[:, :-k])
        b_re = torch.cat([b_re[:, :k], b_re[:, k:] + add_re], dim=1)
        b_im = torch.cat([b_im[:, :k], b_im[:, k:] + add_im], dim=1)
        p_re, p_im = complex_mul(p_re, p_im, p_re, p_im)
        k *= 2
    return b_re, b_im


def _trunc_normal_(tensor: Tensor) -> Tensor:
    return nn.init.trunc_normal_(tensor, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)


class LRUBlock(nn.Module):
    """One LRU layer (recurrence, output map, residual, LayerNorm) and its feed-forward."""

    def __init__(self, embed_dim: int, state_dim: int, dropout: float) -> None:
        super().__init__()
        k, N = embed_dim, state_dim
        # Eigenvalues uniform on the ring R_MIN <= |lambda| <= R_MAX, phases uniform on [0, 2 pi).
        u1, u2 = torch.rand(N), torch.rand(N)
        nu_log = torch.log(-0.5 * torch.log(u1 * (R_MAX ** 2 - R_MIN ** 2) + R_MIN ** 2))
        theta_log = torch.log(u2 * THETA_MAX)
        gamma_log = 0.5 * torch.log1p(-torch.exp(-2 * torch.exp(nu_log)))  # sqrt(1 - |lambda|^2)
        self.nu_log = nn.Parameter(nu_log)  # [N]
        self.theta_log = nn.Parameter(theta_log)  # [N]
        self.gamma_log = nn.Parameter(gamma_log)  # [N]
        self.in_proj = nn.Linear(k, 2 * N)  # B u + b_B: [re ; im]
        self.out_proj = nn.Linear(2 * N, k)  # Re(C h + c) = [C_re, -C_im] [h_re ; h_im] + c_re
        self.norm = nn.LayerNorm(k)
        self.ffn_in = nn.Linear(k, FFN_EXPANSION * k)
        self.ffn_out = nn.Linear(FFN_EXPANSION * k, k)
        self.ffn_norm = nn.LayerNorm(k)
        self.dropout = nn.Dropout(dropout)

    def eigenvalues(self) -> tuple[Tensor, Tensor]:
        """lambda = exp(-exp(nu_log)) (cos exp(theta_log) + i sin exp(theta_log)): [N] (re, im)."""
        modulus = torch.exp(-torch.exp(self.nu_log))
        phase = torch.exp(self.theta_log)
        return modulus * torch.cos(phase), modulus * torch.sin(phase)

    def inputs(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """b = gamma * (B u + b_B). u: [..., k]. Returns [..., N] (re, im)."""
        b_re, b_im = self.in_proj(u).chunk(2, dim=-1)
        gamma = torch.exp(self.gamma_log)
        return gamma * b_re, gamma * b_im

    def mix(self, u: Tensor, h_re: Tensor, h_im: Tensor) -> Tensor:
        """The block output from its input u [..., k] and the new state h [..., N]: [..., k]."""
        y = self.out_proj(torch.cat([h_re, h_im], dim=-1))
        x = self.norm(self.dropout(y) + u)
        inner = self.dropout(F.gelu(self.ffn_in(x)))
        return self.ffn_norm(self.dropout(self.ffn_out(inner)) + x)

    def step(self, u: Tensor, h_re: Tensor, h_im: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One event: u [B, k], h [B, N] -> (x [B, k], h_re, h_im) with h = lambda h + b."""
        l_re, l_im = self.eigenvalues()
        b_re, b_im = self.inputs(u)
        carried_re, carried_im = complex_mul(l_re, l_im, h_re, h_im)
        h_re, h_im = carried_re + b_re, carried_im + b_im
        return self.mix(u, h_re, h_im), h_re, h_im

    def run(self, u: Tensor, h_re: Tensor, h_im: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """A run of L events in parallel: u [B, L, k], h [B, N] the state before the run.

        Returns (x [B, L, k], h_re [B, N], h_im [B, N]) with h the state after the last event.
        """
        l_re, l_im = self.eigenvalues()
        b_re, b_im = self.inputs(u)  # [B, L, N]
        carried_re, carried_im = complex_mul(l_re, l_im, h_re, h_im)  # lambda h_{-1}: [B, N]
        b_re = torch.cat([b_re[:, :1] + carried_re.unsqueeze(1), b_re[:, 1:]], dim=1)
        b_im = torch.cat([b_im[:, :1] + carried_im.unsqueeze(1), b_im[:, 1:]], dim=1)
        all_re, all_im = linear_scan(l_re, l_im, b_re, b_im)  # [B, L, N]
        return self.mix(u, all_re, all_im), all_re[:, -1], all_im[:, -1]


class LRURec(SequentialRecommender):
    """Item embedding + LayerNorm, `layers` LRU blocks, scores tied to the item embeddings.

    Sizes: k = config.embed_dim, N = config.hidden_dim (complex state per layer; the paper uses
    N = 2k), config.layers blocks. `step` (inherited) runs `advance`: one recurrence step per
    layer; `forward` runs each layer's parallel scan over the whole run from the given state.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        del self.decode  # the scores are tied to the item embeddings instead
        self.embed_norm = nn.LayerNorm(config.embed_dim)
        self.blocks = nn.ModuleList(LRUBlock(config.embed_dim, config.hidden_dim, config.dropout)
                                    for _ in range(config.layers))
        self.bias = nn.Parameter(torch.zeros(config.num_items))  # per-item score bias
        for name, param in self.named_parameters():
            if name == "embedding.weight" or (name.endswith(".weight") and param.dim() == 2):
                _trunc_normal_(param.data)
            elif name.endswith(".bias") and "norm" not in name:
                param.data.zero_()
        with torch.no_grad():
            self.embedding.weight[0].zero_()  # padding

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> LRUState:
        c = self.config
        dtype = dtype or self._float()
        h = torch.zeros(batch_size, c.layers, c.hidden_dim, dtype=dtype, device=device)
        return LRUState(h_re=h, h_im=h.clone(),
                        out=torch.zeros(batch_size, c.embed_dim, dtype=dtype, device=device),
                        pos=torch.zeros(batch_size, dtype=torch.long, device=device))

    def advance(self, embedded: Tensor, state: LRUState, chunk: ChunkFlag) -> LRUState:
        """One event per row: embedded [B, k] = dropout(E[x]). No chunks: `chunk` is ignored."""
        x = self.embed_norm(embedded)
        h_re, h_im = [], []
        for layer, block in enumerate(self.blocks):
            x, re, im = block.step(x, state.h_re[:, layer], state.h_im[:, layer])
            h_re.append(re)
            h_im.append(im)
        return LRUState(torch.stack(h_re, dim=1), torch.stack(h_im, dim=1), x, state.pos + 1)

    def run(self, items: Tensor, state: Any,
            first_pos: int | None = None) -> tuple[Tensor, Any]:
        """A run of events per user, each layer as one parallel scan. items: [B, L] (0 =
        padding, only after a row's last event). Returns (features [B, L, k], state after L);
        `forward` (the base class's) applies the output layer.
        first_pos: accepted for the trainer's common call; LRURec has no chunk schedule."""
        _, length = items.shape
        x = self.embed_norm(self.dropout(self.embedding(items)))  # [B, L, k]
        h_re, h_im = [], []
        for layer, block in enumerate(self.blocks):
            x, re, im = block.run(x, state.h_re[:, layer], state.h_im[:, layer])
            h_re.append(re)
            h_im.append(im)
        state = LRUState(torch.stack(h_re, dim=1), torch.stack(h_im, dim=1), x[:, -1],
                         state.pos + length)
        return x, state

    def features(self, state: LRUState) -> Tensor:
        return state.out

    def project(self, features: Tensor) -> Tensor:
        """The scores are x E^T + bias: the last block's output x itself. [..., k]."""
        return features

    def output_layer(self) -> tuple[Tensor, Tensor]:
        return self.embedding.weight, self.bias
