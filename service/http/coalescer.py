"""Request coalescing for POST /v1/events: concurrent single events go out as one apply_each call.

Each route call submits its event and awaits a future. Per (n, exclude_seen) there is at most one
drain task: it sends everything queued (up to `max_batch` events) in ONE `StateStore.apply_each`,
resolves the futures, and loops while more requests arrived during that call. There is no timer:
a request that finds no batch in flight goes out at once, so an idle server adds no latency and
batches form exactly under load (bench/REPORT_NOTES.md: store CPU per event 1.58 ms alone, 0.61 ms
in batches of 4, 0.35 ms in batches of 16).

Guarantees: events of one user submitted with the same (n, exclude_seen) are applied in submission
order (the queue is FIFO and apply_each keeps each user's order); exactly-once is the store's
compare-and-set, unchanged. Outcomes are per user: a user whose state kept changing
(StateConflictError) or was not committed when Redis failed (StateStoreUnavailable) fails its own
requests only, every other request of the batch gets its result as if it had come alone. Only an
error that apply_each raises as a whole (a bug; unknown items are checked by the route first)
reaches every request of that batch, and no other request.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from service.state.domain import ApplyResult, Event

log = logging.getLogger(__name__)

BatchKey = tuple[int, bool]  # (n, exclude_seen): one apply_each serves one pair


class CoalescerClosed(RuntimeError):
    """The coalescer is shutting down and takes no new events."""


@dataclass(frozen=True)
class CoalescedResult:
    """One request's outcome: the store's result and how long it waited to be dispatched."""

    result: ApplyResult
    queue_seconds: float
    batch_size: int  # events in the apply_each call that carried this one


@dataclass
class _Pending:
    event: Event
    future: asyncio.Future[CoalescedResult]
    submitted: float = field(default_factory=time.perf_counter)


class EventCoalescer:
    """Groups concurrent `submit` calls into `store.apply_each` calls; see the module docstring.

    store: service.state.store.StateStore (anything with its `apply_each`); max_batch: most events per
    call. Counters `batches` and `events` say how many calls carried how many events so far.
    """

    def __init__(self, store: Any, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.store = store
        self.max_batch = max_batch
        self.batches = 0
        self.events = 0
        self._queues: dict[BatchKey, deque[_Pending]] = {}
        self._drains: dict[BatchKey, asyncio.Task[None]] = {}
        self._closed = False

    async def submit(self, event: Event, *, n: int = 0,
                     exclude_seen: bool = False) -> CoalescedResult:
        """Queue the event and wait for the batch that carries it; raises its user's failure
        (StateConflictError, StateStoreUnavailable), or what the whole apply_each raised."""
        if self._closed:
            raise CoalescerClosed("the service is stopping")
        key = (n, exclude_seen)
        pending = _Pending(event, asyncio.get_running_loop().create_future())
        self._queues.setdefault(key, deque()).append(pending)
        if key not in self._drains:
            self._drains[key] = asyncio.create_task(self._drain(key), name=f"coalesce-{key}")
        return await pending.future

    async def aclose(self) -> None:
        """Take no more events, and wait until everything queued has been applied and answered."""
        self._closed = True
        while self._drains:
            await asyncio.gather(*self._drains.values(), return_exceptions=True)

    async def _drain(self, key: BatchKey) -> None:
        queue = self._queues[key]
        try:
            while queue:
                batch: list[_Pending] = []
                while queue and len(batch) < self.max_batch:
                    pending = queue.popleft()
                    if not pending.future.done():  # done = the client went away before dispatch
                        batch.append(pending)
                if batch:
                    await self._dispatch(batch, key)
        finally:
            # No await between the empty-queue check and this: a submit cannot slip in between.
            del self._drains[key]
            if not queue:
                del self._queues[key]

    async def _dispatch(self, batch: list[_Pending], key: BatchKey) -> None:
        n, exclude_seen = key
        dispatched = time.perf_counter()
        self.batches += 1
        self.events += len(batch)
        try:
            outcomes = await self.store.apply_each([p.event for p in batch], n=n,
                                                   exclude_seen=exclude_seen)
        except asyncio.CancelledError:
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as err:  # every request of this batch gets it, no other request does
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(err)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):  # this user's failure only
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(CoalescedResult(outcome, dispatched - pending.submitted,
                                                          len(batch)))
