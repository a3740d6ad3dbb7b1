"""CmnRec, SRMN and the RNN baselines behind one interface.

Every model has `step(items, state) -> (logits, state)` for one event per user and
`forward(items, state) -> (logits, state)` for a [B, L] run of events: the same per-event state
update, with the output layer applied once to the whole run. Shapes: B users, L events, I items.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import ChunkAttention
from model.config import ModelConfig
from model.memory import DNCMemory, MemoryState
from model.schedule import chunk_mask
from model.state import NEG_INF, GRUState, LSTMState, MemoryRecState, PopState

ChunkFlag = Union[bool, Tensor]  # one flag for the whole batch, or a [B] bool tensor
HEAD_EXPANSION = 4  # the inner size of the ffn head is 4d
TIED_INIT_STD = 0.02  # item embeddings of a tied ffn head (as SASRec's, RecBole's and BERT's)


def _select_rows(flags: Tensor, if_true: NamedTuple, if_false: NamedTuple) -> NamedTuple:
    """Per-row choice between two states of the same type. flags: [B] bool."""
    fields = []
    for a, b in zip(if_true, if_false):
        mask = flags.view(-1, *([1] * (a.dim() - 1)))
        fields.append(torch.where(mask, a, b))
    return type(if_true)(*fields)


class SequentialRecommender(nn.Module, ABC):
    """Shared loop: the subclasses define the per-event state update and the output features."""

    config: ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.num_items, config.embed_dim, padding_idx=0)
        self.dropout = nn.Dropout(config.dropout)
        # Tied: the item scores reuse the embedding matrix, W_out = E (only the bias is separate).
        if config.tied:
            self.decode_bias = nn.Parameter(torch.zeros(config.num_items))  # b_out
        else:
            self.decode = nn.Linear(config.projection_dim, config.num_items)  # W_out, b_out
        if config.input_norm:
            self.input_norm = nn.LayerNorm(config.embed_dim)
        if config.head == "ffn":  # the position-wise feed-forward of LRURec and SASRec, per event
            d = config.projection_dim
            self.head_norm = nn.LayerNorm(d)
            self.head_in = nn.Linear(d, HEAD_EXPANSION * d)
            self.head_out = nn.Linear(HEAD_EXPANSION * d, d)
            self.head_out_norm = nn.LayerNorm(d)
            if config.tied:  # its output is LayerNorm'd: N(0, 1) embeddings gave logits of std sqrt(k)
                with torch.no_grad():
                    nn.init.normal_(self.embedding.weight, std=TIED_INIT_STD)
                    self.embedding.weight[0].zero_()  # padding
        mask = chunk_mask(config.block_len, config.slots, config.rule)
        self.schedule = mask  # the same flags on the host: tuple[bool, ...] of length T
        self.register_buffer("chunk_mask", torch.tensor(mask, dtype=torch.bool), persistent=False)

    # -- to be defined by each model --------------------------------------------------------
    @abstractmethod
    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> NamedTuple:
        """The state of B users with no events yet."""

    @abstractmethod
    def advance(self, embedded: Tensor, state: Any, chunk: ChunkFlag) -> Any:
        """The state after one event. embedded: [B, k] v = E[x]."""

    @abstractmethod
    def features(self, state: Any) -> Tensor:
        """What the output layer reads from a state: [B, F]."""

    # -- shared ----------------------------------------------------------------------------------
    @property
    def block_size(self) -> int:
        """Events per forward in training and evaluation (truncated BPTT unit): T."""
        return self.config.block_len

    @property
    def input_window(self) -> int | None:
        """How many of the latest events a prediction reads; None: the whole history (recurrent)."""
        return None

    def _float(self) -> torch.dtype:
        return self.embedding.weight.dtype

    def embed(self, items: Tensor) -> Tensor:
        """v = dropout(E[x]), LayerNorm(dropout(E[x])) with config.input_norm. [...] -> [..., k]."""
        embedded = self.dropout(self.embedding(items))
        return self.input_norm(embedded) if self.config.input_norm else embedded

    def project(self, features: Tensor) -> Tensor:
        """What the item scores multiply. [..., F] -> [..., d].

        linear head: p = dropout(W_y o + W_r vec r). ffn head: u = LayerNorm(p), then
        LayerNorm(u + dropout(W_2 dropout(GELU(W_1 u)))) with W_1 [4d, d], W_2 [d, 4d].
        """
        projected = self.dropout(self.combine(features))
        if self.config.head != "ffn":
            return projected
        u = self.head_norm(projected)
        inner = self.dropout(F.gelu(self.head_in(u)))
        return self.head_out_norm(u + self.dropout(self.head_out(inner)))

    def output_layer(self) -> tuple[Tensor, Tensor]:
        """(W_out [I, d], b_out [I]); W_out = E when tied."""
        if self.config.tied:
            return self.embedding.weight, self.decode_bias
        return self.decode.weight, self.decode.bias

    def output(self, features: Tensor, candidates: Tensor | None = None) -> Tensor:
        """logits = W_out (W_y o + W_r vec r) + b_out, W_out = E when tied. features: [..., F].

        Returns [..., I]; with candidates ([C] item ids), only their logits: [..., C] (the sampled
        softmax of training: W_out[candidates], b_out[candidates]).
        """
        weight, bias = self.output_layer()
        if candidates is not None:
            weight, bias = weight[candidates], bias[candidates]
        return nn.functional.linear(self.project(features), weight, bias)

    def scores(self, state: Any) -> Tensor:
        """Logits for the next item from a stored state, without changing it: [B, I]."""
        return self.output(self.features(state))

    def chunk_flags(self, pos: Tensor) -> Tensor:
        """[B] bool: whether the next event of each row falls on a chunk time."""
        return self.chunk_mask[pos % self.config.block_len]

    def step(self, items: Tensor, state: Any) -> tuple[Tensor, Any]:
        """One event per user. items: [B] item ids. Returns (logits [B, I], new state)."""
        flags = self.chunk_flags(state.pos)
        chunk: ChunkFlag = bool(flags.all()) if bool(flags.all() | ~flags.any()) else flags
        state = self.advance(self.embed(items), state, chunk)
        return self.scores(state), state

    def forward(self, items: Tensor, state: Any, first_pos: int | None = None,
                candidates: Tensor | None = None) -> tuple[Tensor, Any]:
        """A run of events per user. items: [B, L] (0 = padding). Returns ([B, L, I], state), or
        ([B, L, C], state) with candidates ([C] item ids: the sampled softmax of training)."""
        features, state = self.run(items, state, first_pos)
        return self.output(features, candidates), state

    def run(self, items: Tensor, state: Any,
            first_pos: int | None = None) -> tuple[Tensor, Any]:
        """forward without the output layer: ([B, L, F] features after each event, state).

        The evaluation scores only the few positions it ranks, so it applies `output` to those.
        first_pos: the pos every row of `state` is at, when the caller knows it (the trainer
        does); the chunk flags then come from the host-side schedule and the loop reads no device
        value on the host (no synchronisation, capturable in a CUDA graph). None: read state.pos.
        """
        _, length = items.shape
        embedded = self.embed(items)  # [B, L, k]
        flags: Tensor | None = None
        if first_pos is not None:
            block = self.config.block_len
            shared = [self.schedule[(first_pos + t) % block] for t in range(length)]
        else:
            offsets = torch.arange(length, device=items.device)
            flags = self.chunk_mask[(state.pos.unsqueeze(1) + offsets) % self.config.block_len]
            aligned = bool((flags == flags[:1]).all())  # all rows at the same block position
            shared = flags[0].tolist() if aligned else None
        features = []
        for t in range(length):
            chunk: ChunkFlag = shared[t] if shared is not None else flags[:, t]  # type: ignore[index]
            state = self.advance(embedded[:, t], state, chunk)
            features.append(self.features(state))
        return torch.stack(features, dim=1), state


class CmnRec(SequentialRecommender):
    """LSTM controller + chunk attention + DNC memory (DESIGN.md section 1); SRMN when rule=every."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        k, H, R = config.embed_dim, config.hidden_dim, config.read_heads
        self.controller = nn.LSTMCell(k + config.read_size, H)
        self.attention = ChunkAttention(H, config.read_size, config.attn_dim)
        self.memory = DNCMemory(H, config.slots, config.mem_width, R)
        self.combine = nn.Linear(H + config.read_size, config.projection_dim)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> MemoryRecState:
        c = self.config
        dtype = dtype or self._float()
        B, H, N, W, R = batch_size, c.hidden_dim, c.slots, c.mem_width, c.read_heads

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return MemoryRecState(
            h=zeros(B, H), c=zeros(B, H), out=zeros(B, H), read=zeros(B, R, W),
            memory=zeros(B, N, W), usage=zeros(B, N), link=zeros(B, N, N),
            precedence=zeros(B, N), write_weights=zeros(B, N), read_weights=zeros(B, R, N),
            attn_max=torch.full((B,), NEG_INF, dtype=dtype, device=device),
            attn_norm=zeros(B), attn_sum=zeros(B, H),
            pos=torch.zeros(B, dtype=torch.long, device=device),
        )

    def advance(self, embedded: Tensor, state: MemoryRecState, chunk: ChunkFlag) -> MemoryRecState:
        plain = self.controller_step(embedded, state)
        if chunk is False:
            return plain
        chunked = self.memory_step(plain)
        if chunk is True:
            return chunked
        return _select_rows(chunk, chunked, plain)

    # controller_step and memory_step are what torch.compile traces (training/device.py). They
    # unpack the incoming state by position instead of reading its fields as attributes, and build
    # the new state with the constructor instead of _replace. Reported failure (issue 11, on the
    # GPU machine's torch): InternalTorchDynamoError: IndexError: tuple index out of range at
    # `state.read` / `state.attn_norm`, the first field read of each function. That is what dynamo
    # does when it resolves a NamedTuple field through the class's _tuplegetter descriptor on an
    # empty placeholder tuple (the bug of pytorch/pytorch#181687). Unpacking reads the traced
    # items instead. The pinned torch 2.13.0 traces both forms; the arithmetic is the same.

    def controller_step(self, embedded: Tensor, state: MemoryRecState) -> MemoryRecState:
        """Steps 2-3 and 6: one controller pass, o folded into the chunk summary; D and r kept.

        This is the whole update of a non-chunk event. embedded: [B, k] v = E[x].
        """
        (h, c, _, read, memory, usage, link, precedence, write_weights, read_weights,
         attn_max, attn_norm, attn_sum, pos) = state
        read_flat = read.flatten(1)
        o, c = self.controller(torch.cat([embedded, read_flat], dim=-1), (h, c))
        score = self.attention.score(o, self.attention.context(read_flat))
        m, s, n = self.attention.fold(attn_max, attn_norm, attn_sum, score, o)
        return MemoryRecState(
            h=o, c=c, out=o, read=read, memory=memory, usage=usage, link=link,
            precedence=precedence, write_weights=write_weights, read_weights=read_weights,
            attn_max=m, attn_norm=s, attn_sum=n, pos=pos + 1,
        )

    def memory_step(self, state: MemoryRecState) -> MemoryRecState:
        """Step 4 at a chunk time, applied to the state `controller_step` returned.

        h becomes the attention summary a (Eq. 9), the DNC writes then reads with o = state.out,
        and the chunk summary is reset. c, out and pos are kept.
        """
        (_, c, out, _, *dnc, attn_max, attn_norm, attn_sum, pos) = state  # dnc: the 6 fields of D
        summary = self.attention.readout(attn_norm, attn_sum)  # a_i
        read, (memory, usage, link, precedence, write_weights, read_weights) = self.memory.step(
            out, MemoryState(*dnc))
        return MemoryRecState(
            h=summary, c=c, out=out, read=read, memory=memory, usage=usage, link=link,
            precedence=precedence, write_weights=write_weights, read_weights=read_weights,
            attn_max=torch.full_like(attn_max, NEG_INF), attn_norm=torch.zeros_like(attn_norm),
            attn_sum=torch.zeros_like(attn_sum), pos=pos,
        )

    def features(self, state: MemoryRecState) -> Tensor:
        return torch.cat([state.out, state.read.flatten(1)], dim=-1)


class RNNRec(SequentialRecommender):
    """LSTM4Rec / GRU4Rec: embedding, one recurrent layer, the same output layer, no memory."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        k, H = config.embed_dim, config.hidden_dim
        self.is_lstm = config.model == "lstm4rec"
        self.cell = nn.LSTMCell(k, H) if self.is_lstm else nn.GRUCell(k, H)
        self.combine = nn.Linear(H, config.projection_dim)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> NamedTuple:
        dtype = dtype or self._float()
        h = torch.zeros(batch_size, self.config.hidden_dim, dtype=dtype, device=device)
        pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        return LSTMState(h, h.clone(), pos) if self.is_lstm else GRUState(h, pos)

    def advance(self, embedded: Tensor, state: Any, chunk: ChunkFlag) -> Any:
        if self.is_lstm:
            h, c = self.cell(embedded, (state.h, state.c))
            return LSTMState(h, c, state.pos + 1)
        return GRUState(self.cell(embedded, state.h), state.pos + 1)

    def features(self, state: Any) -> Tensor:
        return state.h


class PopularityRecommender(SequentialRecommender):
    """Scores every item by its log training count, whatever the user did."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.register_buffer("log_counts", torch.zeros(config.num_items))

    def fit(self, counts: Tensor) -> None:
        """counts: [I] training interactions per item (index 0 = padding, never recommended)."""
        log_counts = torch.log1p(counts.to(self.log_counts.dtype))
        log_counts[0] = float("-inf")
        self.log_counts.copy_(log_counts)

    def initial_state(self, batch_size: int, dtype: torch.dtype | None = None,
                      device: torch.device | None = None) -> PopState:
        return PopState(torch.zeros(batch_size, dtype=torch.long, device=device))

    def advance(self, embedded: Tensor, state: PopState, chunk: ChunkFlag) -> PopState:
        return PopState(state.pos + 1)

    def features(self, state: PopState) -> Tensor:
        return state.pos.unsqueeze(-1)

    def output(self, features: Tensor, candidates: Tensor | None = None) -> Tensor:
        scores = self.log_counts if candidates is None else self.log_counts[candidates]
        return scores.expand(*features.shape[:-1], -1)


def build_model(config: ModelConfig) -> SequentialRecommender:
    """The network named by config.model."""
    if config.is_window_model:
        from model.sasrec import SASRec  # model/sasrec.py builds on this module

        return SASRec(config)
    if config.has_memory:
        return CmnRec(config)
    if config.model == "pop":
        return PopularityRecommender(config)
    if config.model == "lrurec":
        from model.lru import LRURec  # model/lru.py builds on this module's base class

        return LRURec(config)
    return RNNRec(config)
