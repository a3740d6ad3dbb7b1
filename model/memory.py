"""The DNC memory access module: one write-then-read at a chunk time.

The order follows the DNC paper: usage, allocation, write content weights on the old memory, write
weights, erase/add, temporal link then precedence, read content weights on the new memory,
forward/backward/content read modes, read vectors.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model import addressing


class MemoryState(NamedTuple):
    """D: the DNC memory state. B batch, N slots, W width, R read heads."""

    memory: Tensor  # [B, N, W]
    usage: Tensor  # [B, N]
    link: Tensor  # [B, N, N]
    precedence: Tensor  # [B, N]
    write_weights: Tensor  # [B, N]
    read_weights: Tensor  # [B, R, N]


class Interface(NamedTuple):
    """The interface vector xi split into its parts (DNC paper, Methods)."""

    read_keys: Tensor  # [B, R, W]
    read_strengths: Tensor  # [B, R] >= 1
    write_key: Tensor  # [B, 1, W]
    write_strength: Tensor  # [B, 1] >= 1
    erase: Tensor  # [B, W] in (0, 1)
    add: Tensor  # [B, W]
    free_gates: Tensor  # [B, R] in (0, 1)
    allocation_gate: Tensor  # [B, 1] in (0, 1)
    write_gate: Tensor  # [B, 1] in (0, 1)
    read_modes: Tensor  # [B, R, 3] softmax over (backward, content, forward)


def _oneplus(x: Tensor) -> Tensor:
    return 1.0 + F.softplus(x)


class DNCMemory(nn.Module):
    """xi = W_xi o, then (D, r) = write-then-read(D, xi)."""

    def __init__(self, input_size: int, slots: int, width: int, read_heads: int) -> None:
        super().__init__()
        self.slots, self.width, self.read_heads = slots, width, read_heads
        self.sizes = [read_heads * width, read_heads, width, 1, width, width, read_heads, 1, 1,
                      3 * read_heads]
        self.interface = nn.Linear(input_size, sum(self.sizes))

    def split_interface(self, controller_output: Tensor) -> Interface:
        """controller_output: [B, H] o. Returns the parsed interface xi."""
        b = controller_output.shape[0]
        R, W = self.read_heads, self.width
        parts = torch.split(self.interface(controller_output), self.sizes, dim=-1)
        return Interface(
            read_keys=parts[0].reshape(b, R, W),
            read_strengths=_oneplus(parts[1]),
            write_key=parts[2].reshape(b, 1, W),
            write_strength=_oneplus(parts[3]),
            erase=torch.sigmoid(parts[4]),
            add=parts[5],
            free_gates=torch.sigmoid(parts[6]),
            allocation_gate=torch.sigmoid(parts[7]),
            write_gate=torch.sigmoid(parts[8]),
            read_modes=torch.softmax(parts[9].reshape(b, R, 3), dim=-1),
        )

    def step(self, controller_output: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
        """One write-then-read. controller_output: [B, H]. Returns (read vectors [B, R, W], D_t)."""
        # state unpacked by position (not as attributes): see CmnRec.controller_step's note
        old_memory, old_usage, old_link, old_precedence, old_write, old_read = state
        xi = self.split_interface(controller_output)
        usage = addressing.usage_update(old_usage, old_write, xi.free_gates, old_read)
        allocation = addressing.allocation_weights(usage)
        write_content = addressing.cosine_weights(old_memory, xi.write_key,
                                                  xi.write_strength).squeeze(1)
        write_weights = addressing.write_weighting(allocation, write_content, xi.allocation_gate,
                                                   xi.write_gate)
        memory = addressing.erase_and_add(old_memory, write_weights, xi.erase, xi.add)
        link = addressing.link_update(old_link, old_precedence, write_weights)
        precedence = addressing.precedence_update(old_precedence, write_weights)
        read_content = addressing.cosine_weights(memory, xi.read_keys, xi.read_strengths)
        forward = addressing.directional_weights(link, old_read, forward=True)
        backward = addressing.directional_weights(link, old_read, forward=False)
        modes = xi.read_modes
        read_weights = (modes[..., 0:1] * backward + modes[..., 1:2] * read_content
                        + modes[..., 2:3] * forward)
        read = torch.einsum("brn,bnw->brw", read_weights, memory)
        return read, MemoryState(memory, usage, link, precedence, write_weights, read_weights)
