"""Per-process cache of the states this process committed last, so that an event of such a user goes
straight to the compare-and-set, without reading the user's 9.4 KB blob back from Redis first.

Correct with any number of processes: an entry is only a guess of what Redis holds. The
compare-and-set (service/state/lua.py CAS) still checks pos, model version and the blob's header
token against Redis, so if any other process (or machine, or an expiry, or a delete) wrote since,
the commit is refused, the entry is dropped, and the user is read and stepped again: a stale entry
costs one wasted step and one refused compare-and-set, and never commits. It pays when one process
sees a user's consecutive events (a stream worker owns its partitions; a load balancer routing
users stickily); with K processes and requests spread at random, about 1 in K entries is fresh.

What the CAS cannot tell from the header token: a blob changed out of band (not by a CAS) with its
header kept, or a user deleted and rebuilt to the same pos with a payload whose crc32 happens to
collide (2^-32). In both cases the cached state, which this process committed, is what gets stepped.

Bounded: at most `capacity` users (least recently used first out), about 9.4 KB each for
paper-size CmnRec (plus the recent items when the requests exclude seen items).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedState:
    """What this process committed for one user, as Redis holds it if nobody wrote since."""

    blob: bytes
    version: str  # the model version key
    pos: str  # the pos key, as stored (decimal)
    recent: tuple[str, ...] | None  # the recent-items list, None when this process never read it


class StateCache:
    """LRU map user id -> CachedState. capacity 0 = off (get always misses, put keeps nothing)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, CachedState] = OrderedDict()

    def get(self, user_id: str) -> CachedState | None:
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
        return entry

    def put(self, user_id: str, entry: CachedState) -> None:
        if self.capacity == 0:
            return
        self._entries[user_id] = entry
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, user_id: str) -> None:
        self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._entries
