"""Per-key asyncio locks, so that one process does not race itself on one user's state.

The compare-and-set in service/state/store.py is what keeps concurrent writers correct (across processes
and machines); these locks only stop the requests of one process from conflicting with each other,
which would otherwise turn 50 concurrent events of one user into ~50x wasted engine steps.
asyncio has no keyed lock, hence this small one; entries are dropped when nobody holds or waits.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class KeyedLocks:
    """A lock per key, created on first use and removed once free."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._holders: dict[str, int] = {}  # tasks holding or waiting for each key's lock

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of all `keys`, taken in sorted order so that two batches never deadlock."""
        ordered = sorted(set(keys))
        for key in ordered:
            self._holders[key] = self._holders.get(key, 0) + 1
            self._locks.setdefault(key, asyncio.Lock())
        acquired: list[str] = []
        try:
            for key in ordered:
                await self._locks[key].acquire()
                acquired.append(key)
            yield
        finally:
            for key in acquired:
                self._locks[key].release()
            for key in ordered:
                self._holders[key] -= 1
                if self._holders[key] == 0:
                    del self._holders[key]
                    del self._locks[key]
