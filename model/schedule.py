"""Chunk schedules (DESIGN.md section 2), anchored at the start of each block of T events.

Positions inside a block are q = 1..T; an event is at a chunk time iff its q is in times(T, M, rule).
Torch-free: the training code, the export and the serving engine all read the schedule from here.
"""
from __future__ import annotations


def pec_times(block_len: int, slots: int) -> tuple[int, ...]:
    """Periodic chunk: G = floor(T/M); T-(M-1)G, ..., T-G, T (the first chunk takes the remainder)."""
    gap = block_len // slots
    return tuple(block_len - (slots - 1 - j) * gap for j in range(slots))


def tsc_times(block_len: int, slots: int) -> tuple[int, ...]:
    """Time-sensitive chunk: g = floor(2T/(M(M+1))); T - g(M-k)(M-k+1)/2 for k = 1..M.

    Chunk lengths counted from the end are g, 2g, ..., (M-1)g; the first chunk takes the rest.
    Falls back to PEC when g = 0.
    """
    g = (2 * block_len) // (slots * (slots + 1))
    if g == 0:
        return pec_times(block_len, slots)
    return tuple(block_len - g * (slots - k) * (slots - k + 1) // 2 for k in range(1, slots + 1))


def exc_times(block_len: int, slots: int) -> tuple[int, ...]:
    """Extreme chunk: the last M positions, T-M+1, ..., T."""
    return tuple(range(block_len - slots + 1, block_len + 1))


def chunk_times(block_len: int, slots: int, rule: str) -> tuple[int, ...]:
    """1-based positions q in a block of T events at which memory is written and read."""
    if not 1 <= slots <= block_len:
        raise ValueError(f"slots: need 1 <= M <= T, got M={slots}, T={block_len}")
    if rule == "pec":
        return pec_times(block_len, slots)
    if rule == "tsc":
        return tsc_times(block_len, slots)
    if rule == "exc":
        return exc_times(block_len, slots)
    if rule == "every":
        return tuple(range(1, block_len + 1))
    if rule == "none":
        return ()
    raise ValueError(f"rule: expected pec, tsc, exc, every or none, got {rule!r}")


def chunk_mask(block_len: int, slots: int, rule: str) -> tuple[bool, ...]:
    """[T] flags; entry q-1 is True iff block position q is a chunk time."""
    times = set(chunk_times(block_len, slots, rule))
    return tuple(q in times for q in range(1, block_len + 1))


def is_chunk_event(pos: int, mask: tuple[bool, ...]) -> bool:
    """Whether the event applied to a state that has absorbed `pos` events falls on a chunk time."""
    return mask[pos % len(mask)]
