"""The one model configuration: stored in every checkpoint and every export manifest.

Torch-free, so the serving side can read it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

MODELS = ("cmnrec", "srmn", "lstm4rec", "gru4rec", "sasrec", "pop", "lrurec")
MEMORY_MODELS = ("cmnrec", "srmn")
WINDOW_MODELS = ("sasrec",)  # stateless: recompute over the last max_len events, not servable
CHUNK_RULES = ("pec", "tsc", "exc")  # the rules of cmnrec itself
RULES = (*CHUNK_RULES, "every", "none")
HEADS = ("linear", "ffn")  # the output head of the recurrent models (SequentialRecommender.project)
NORMED_MODELS = ("cmnrec", "srmn", "lstm4rec", "gru4rec")  # the ones input_norm and head apply to


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one network (paper symbols in brackets)."""

    num_items: int  # [I] catalogue size including the padding id 0
    model: str = "cmnrec"  # cmnrec | srmn | lstm4rec | gru4rec | sasrec | pop | lrurec
    rule: str = "tsc"  # chunk rule: pec | tsc | exc; "every" for srmn, "none" for plain RNNs
    embed_dim: int = 128  # [k] item embedding size
    hidden_dim: int = 256  # [H] controller (LSTM/GRU) size; lrurec: complex state size N per layer
    mem_width: int = 256  # [W] width of one memory slot
    read_heads: int = 1  # [R] number of DNC read heads
    attn_dim: int = 64  # [b] chunk attention size
    block_len: int = 50  # [T] events per block; the chunk schedule restarts every T events
    slots: int = 4  # [M] chunks per block, which is also the number of memory slots N
    out_dim: int | None = None  # size of the projection before the item scores; None means k
    dropout: float = 0.3  # dropout on the embedding, the output projection (and SASRec's blocks)
    tied: bool = False  # scores = projection . item embeddings + bias (needs out_dim = k)
    max_len: int = 200  # [L] sasrec only: self-attention over the last L events
    layers: int = 2  # lrurec: stacked LRU blocks; sasrec: transformer blocks
    heads: int = 1  # sasrec only: attention heads (must divide k)
    input_norm: bool = False  # LayerNorm on the item embedding before the recurrence
    head: str = "linear"  # linear: W_y o + W_r vec r; ffn: then LayerNorm and a residual FFN

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model: expected one of {MODELS}, got {self.model!r}")
        if self.rule not in RULES:
            raise ValueError(f"rule: expected one of {RULES}, got {self.rule!r}")
        if self.model == "srmn" and self.rule != "every":
            object.__setattr__(self, "rule", "every")
        if self.model in ("lstm4rec", "gru4rec", "sasrec", "pop", "lrurec") and self.rule != "none":
            object.__setattr__(self, "rule", "none")
        if self.model == "cmnrec" and self.rule in ("every", "none"):
            raise ValueError(f"rule: cmnrec needs pec, tsc or exc, got {self.rule!r}")
        for name in ("num_items", "embed_dim", "hidden_dim", "mem_width", "read_heads",
                     "attn_dim", "block_len", "slots", "max_len", "layers", "heads"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_items < 2:
            raise ValueError("num_items: need at least one real item besides padding id 0")
        if self.slots > self.block_len:
            raise ValueError(f"slots: M={self.slots} cannot exceed block_len T={self.block_len}")
        if self.tied and self.projection_dim != self.embed_dim:
            raise ValueError(f"tied: the output layer reuses the item embeddings, so out_dim must "
                             f"equal embed_dim={self.embed_dim}, got {self.out_dim}")
        if self.model == "sasrec" and self.max_len < 2:
            # the validation prediction reads the window before the last input event
            raise ValueError(f"max_len: sasrec needs a window of at least 2 events, got "
                             f"{self.max_len}")
        if self.model == "sasrec" and self.embed_dim % self.heads:
            raise ValueError(f"heads: {self.heads} does not divide embed_dim={self.embed_dim}")
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if (self.input_norm or self.head != "linear") and self.model not in NORMED_MODELS:
            name = "input_norm" if self.input_norm else "head"
            raise ValueError(f"{name}: only {', '.join(NORMED_MODELS)} take it; {self.model} has "
                             f"its own normalisation and output layer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")

    @property
    def has_memory(self) -> bool:
        return self.model in MEMORY_MODELS

    @property
    def is_window_model(self) -> bool:
        """Stateless over the last max_len events (SASRec): trained and evaluated, not served."""
        return self.model in WINDOW_MODELS

    @property
    def projection_dim(self) -> int:
        return self.out_dim or self.embed_dim

    @property
    def read_size(self) -> int:
        """Size of vec r, the flattened read vectors [R*W]."""
        return self.read_heads * self.mem_width

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**data)
