"""The per-user state: one list of fields shared by the PyTorch model, the ONNX graphs and Redis.

Each NamedTuple below is the state of one model family. Its fields, in order, are the ONNX graphs'
state inputs and outputs and the binary layout stored per user. Values are torch tensors in the
PyTorch model and numpy arrays in the serving engine; every field has a leading batch axis [B].
Torch-free.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from model.config import ModelConfig

NEG_INF = -1.0e30  # "minus infinity" of the running attention max; finite so that 0 * it stays 0


class MemoryRecState(NamedTuple):
    """State S of CmnRec and SRMN (DESIGN.md section 1)."""

    h: Any  # [B, H] carried controller hidden state (o, or the attention summary a at chunk times)
    c: Any  # [B, H] LSTM cell state
    out: Any  # [B, H] o of the last event: the output layer reads it
    read: Any  # [B, R, W] read vectors r
    memory: Any  # [B, N, W] memory matrix M
    usage: Any  # [B, N] usage u
    link: Any  # [B, N, N] temporal link matrix L
    precedence: Any  # [B, N] precedence p
    write_weights: Any  # [B, N] last write weights w^w
    read_weights: Any  # [B, R, N] last read weights w^r
    attn_max: Any  # [B] running max m of the chunk attention scores
    attn_norm: Any  # [B] running softmax normaliser s
    attn_sum: Any  # [B, H] running softmax-weighted sum n of the buffered outputs
    pos: Any  # [B] int64, events absorbed


class LSTMState(NamedTuple):
    """State of LSTM4Rec."""

    h: Any  # [B, H]
    c: Any  # [B, H]
    pos: Any  # [B] int64


class GRUState(NamedTuple):
    """State of GRU4Rec."""

    h: Any  # [B, H]
    pos: Any  # [B] int64


class LRUState(NamedTuple):
    """State of LRURec: each layer's complex recurrent state h as a real/imaginary float pair
    (ONNX has no complex type), and the last block output that the scores read."""

    h_re: Any  # [B, layers, N] Re h of every LRU layer
    h_im: Any  # [B, layers, N] Im h of every LRU layer
    out: Any  # [B, k] output of the last block at the last event (the scores read it)
    pos: Any  # [B] int64, events absorbed


class PopState(NamedTuple):
    """State of the popularity recommender: nothing but the count of events."""

    pos: Any  # [B] int64


class WindowState(NamedTuple):
    """State of SASRec: the last L item ids (oldest first, right-padded with 0 while fewer than L
    events) and the count of events. Recomputed over at every event; not served."""

    items: Any  # [B, L] int64
    pos: Any  # [B] int64


class FieldSpec(NamedTuple):
    """One state field without its batch axis."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32" (or the model's float type) or "int64"


def state_class(config: ModelConfig) -> type:
    if config.has_memory:
        return MemoryRecState
    return {"lstm4rec": LSTMState, "gru4rec": GRUState, "sasrec": WindowState,
            "pop": PopState, "lrurec": LRUState}[config.model]


def state_fields(config: ModelConfig, float_dtype: str = "float32") -> list[FieldSpec]:
    """The per-user layout: each field's name, shape (no batch axis) and dtype, in state order."""
    H, N, W, R = config.hidden_dim, config.slots, config.mem_width, config.read_heads
    shapes = {
        "h": (H,), "c": (H,), "out": (H,), "read": (R, W), "memory": (N, W), "usage": (N,),
        "link": (N, N), "precedence": (N,), "write_weights": (N,), "read_weights": (R, N),
        "attn_max": (), "attn_norm": (), "attn_sum": (H,), "pos": (), "items": (config.max_len,),
    }
    if config.model == "lrurec":
        shapes.update(h_re=(config.layers, H), h_im=(config.layers, H), out=(config.embed_dim,))
    return [
        FieldSpec(name, shapes[name], "int64" if name in ("pos", "items") else float_dtype)
        for name in state_class(config)._fields
    ]
