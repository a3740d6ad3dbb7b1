"""SASRec (Kang and McAuley, 2018): causal self-attention over the last L events.

The peer that users would pick instead of a recurrent model (DESIGN.md section 6). It has no
fixed-size recurrent state: the prediction after event n is recomputed from the window of events
n-L+1..n, so it is trained and benchmarked by the same trainer and evaluation as the other models,
but it is not served by the stateful engine (model/export.py refuses it).

Window semantics, shared by `run` (training, evaluation) and `step` (one event at a time): the window
holds the last L item ids oldest first; position embeddings count from the window's first event.
So `step` after events x_1..x_n scores exactly what `run` over x_{max(1, n-L+1)}..x_n scores at its
last position, and `run` from the initial state over at most L events scores at position t what
`step` gives after t+1 events. Shapes: B users, t events, L window, k embedding size, I items.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from model.config import ModelConfig
from model.network import ChunkFlag, SequentialRecommender
from model.state import WindowState


class SASRec(SequentialRecommender):
    """Item + position embeddings, `layers` pre-norm transformer blocks with a causal mask, then
    the shared output layer (tied or not) over the last block's output."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        k = config.embed_dim
        self.positions = nn.Embedding(config.max_len, k)
        block = nn.TransformerEncoderLayer(k, config.heads, dim_feedforward=config.hidden_dim,
                                           dropout=config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(k)
        self.combine = nn.Linear(k, config.projection_dim)
        # Small initial embeddings (std 0.02, as RecBole's and BERT's transformers): with the
        # default N(0, 1) a tied output layer starts with logits of standard deviation ~sqrt(k)
        # and training stalls below popularity (measured on ml-100k).
        for table in (self.embedding, self.positions):
            nn.init.normal_(table.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()  # padding

    @property
    def block_size(self) -> int:
        return self.config.max_len

    @property
    def input_window(self) -> int | None:
        return self.config.max_len

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> WindowState:
        return WindowState(
            items=torch.zeros(batch_size, self.config.max_len, dtype=torch.long, device=device),
            pos=torch.zeros(batch_size, dtype=torch.long, device=device))

    def encode(self, items: Tensor) -> Tensor:
        """Causal self-attention over windows. items: [B, t] ids, t <= L, oldest first, 0 = padding
        after the last event. Returns [B, t, k]: position j sees items 0..j only."""
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        x = self.embedding(items) + self.positions(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=items.device,
                                                              dtype=x.dtype)  # [t, t]
        return self.norm(self.blocks(self.dropout(x), mask=mask, is_causal=True))

    def run(self, items: Tensor, state: WindowState,
            first_pos: int | None = None) -> tuple[Tensor, WindowState]:
        """Features after each of t <= L events from the initial state: ([B, t, k], state).
        first_pos: accepted for the trainer's common call (SASRec has no chunk schedule)."""
        batch, length = items.shape
        if length > self.config.max_len or bool((state.pos != 0).any()):
            raise ValueError(f"sasrec: run takes at most max_len={self.config.max_len} events from "
                             "the initial state (feed the last max_len events of a history)")
        window = torch.zeros(batch, self.config.max_len, dtype=torch.long, device=items.device)
        window[:, :length] = items
        lengths = (items != 0).sum(dim=1)
        return self.encode(items), WindowState(window, state.pos + lengths)

    def advance(self, embedded: Tensor, state: Any, chunk: ChunkFlag) -> Any:
        raise TypeError("sasrec: the window is updated from item ids (step), not from embeddings")

    def step(self, items: Tensor, state: WindowState) -> tuple[Tensor, WindowState]:
        """One event per user: slide the window, recompute attention over it. items: [B]."""
        L = self.config.max_len
        full = state.pos >= L  # [B] rows whose window already holds L events: drop the oldest
        shifted = torch.cat([state.items[:, 1:], items.unsqueeze(1)], dim=1)
        placed = state.items.scatter(1, state.pos.clamp(max=L - 1).unsqueeze(1), items.unsqueeze(1))
        window = torch.where(full.unsqueeze(1), shifted, placed)
        state = WindowState(window, state.pos + 1)
        return self.scores(state), state

    def features(self, state: WindowState) -> Tensor:
        """The output of the window's last event: [B, k] (row 0 of the window when empty)."""
        last = (state.pos.clamp(max=self.config.max_len) - 1).clamp(min=0)  # [B]
        hidden = self.encode(state.items)  # [B, L, k]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
