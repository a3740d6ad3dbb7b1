"""The stream worker: applies the events of the partitioned Redis Streams to the users' states.

One `StreamWorker` per process. It owns some partitions (service/streams/partitions.py: leases,
reclaiming a dead worker's entries, reading, trimming) and loops: heartbeat when due, take a batch
(reclaimed entries first), apply it (service/streams/batch.py: validate, dead-letter, apply,
acknowledge). A failed batch (Redis down, conflicts) is not acknowledged: the worker backs off and
reclaims its own entries, in order, before reading anything new. On stop, the batch in flight is
finished and the leases are handed back. A partition whose stream key has the wrong Redis type is
set aside (service/streams/partitions.py find_broken) so that it does not stop the others.
`last_loop` (monotonic) says when the loop last went round without an error: the worker's
/healthz (service/streams/health.py) fails when it is stale (Redis down, every batch failing, a
hung batch).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from service.ops import metrics
from service.ops.settings import Settings
from service.state.cluster import forget_topology
from service.state.domain import StateConflictError, StateStoreUnavailable
from service.state.keys import KeySchema
from service.state.store import StateStore
from service.streams.batch import BatchApplier, BatchReport
from service.streams.partitions import Entry, PartitionReader
from service.streams.publish import ensure_groups

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05  # pause while waiting for a lease or for pending entries to become claimable
# Batch failures that leave the batch pending for a later retry (the worker keeps running).
RETRYABLE_ERRORS = (RedisError, OSError, StateStoreUnavailable, StateConflictError,
                    RedisClusterException)


def default_consumer_name() -> str:
    """hostname-pid: unique per worker process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerTotals:
    """Running totals since start."""

    batches: int = 0
    entries: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    failed_batches: int = 0


class StreamWorker:
    """Consumes the partitioned event streams into `store` (see the module docstring).

    settings: the stream_* fields say how (partitions, group, batch size, lease TTL ...);
    consumer: this worker's name in the group (default hostname-pid).
    """

    def __init__(self, client: aioredis.Redis, store: StateStore, settings: Settings,
                 consumer: str | None = None) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.consumer = consumer or default_consumer_name()
        self.keys = KeySchema(settings.key_prefix)
        self.reader = PartitionReader(client, self.keys, settings, self.consumer)
        self.applier = BatchApplier(client, store, self.keys, group=settings.stream_group,
                                    consumer=self.consumer,
                                    max_id_length=settings.max_id_length,
                                    dead_letter_maxlen=settings.stream_dead_letter_maxlen,
                                    partitions=settings.stream_partitions)
        self.totals = WorkerTotals()
        self.last_loop = time.monotonic()
        self._healthy = True  # the last batch did not fail: surplus partitions may be handed back
        self._grouped: set[int] = set()  # partitions whose stream has the consumer group

    @property
    def leases(self):  # noqa: ANN201 - the PartitionLeases of this worker
        return self.reader.leases

    # -- the loop ---------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Loop until `stop` is set; the batch in flight is finished first, then leases are returned."""
        log.info("worker %s: %d partitions, group %s", self.consumer,
                 self.settings.stream_partitions, self.settings.stream_group)
        keepalive = asyncio.create_task(self._keep_leases(stop))
        try:
            while not stop.is_set():
                try:
                    handled = await self.run_once()
                    self._mark_loop()  # a full round without error: the worker makes progress
                except RETRYABLE_ERRORS as error:
                    if isinstance(error, ResponseError) and "WRONGTYPE" in str(error):
                        await self._set_aside_broken()
                    log.warning("worker %s: %s: %s; retrying", self.consumer,
                                type(error).__name__, error)
                    forget_topology(self.client, error)  # a cluster may have failed over
                    # A read whose reply was lost may have delivered entries to us: whatever is
                    # pending for us is reclaimed (in order) before anything new is read.
                    self.reader.drain(self.reader.owned)
                    if isinstance(error, ResponseError):  # e.g. NOGROUP: the stream was deleted
                        self._grouped.clear()
                    self.reader.next_heartbeat = 0.0
                    await _sleep_or_stop(stop, self.settings.stream_retry_backoff_seconds)
                    continue
                if handled == 0 and (not self.reader.owned or self.reader.draining):
                    # Nothing to read yet: wait for leases to free up or entries to become idle.
                    await _sleep_or_stop(stop, IDLE_POLL_S)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            try:
                await self.reader.release_all()
            except (RedisError, OSError, RedisClusterException) as error:
                log.warning("worker %s: could not hand back leases (%s); they expire in %d ms",
                            self.consumer, error, self.settings.stream_lease_ttl_ms)
            log.info("worker %s stopped: %s", self.consumer, self.totals)

    def _mark_loop(self) -> None:
        self.last_loop = time.monotonic()
        metrics.WORKER_LOOP_TIMESTAMP_SECONDS.set(time.time())

    async def _set_aside_broken(self) -> None:
        """A WRONGTYPE from a call over several partitions: find the broken ones (all of them,
        as the consumer-group set-up touches every partition) and set them aside."""
        try:
            await self.reader.find_broken(set(range(self.settings.stream_partitions)))
        except (RedisError, OSError) as error:
            log.warning("worker %s: could not check the partitions (%s)", self.consumer, error)

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the leases every heartbeat period even while a long batch runs, so that a slow
        batch never lets a partition pass to another worker while this one still applies it."""
        while not stop.is_set():
            await _sleep_or_stop(stop, self.reader.heartbeat_s)
            try:
                await self.reader.renew()
            except (RedisError, OSError, RedisClusterException) as error:
                log.warning("worker %s: lease renewal failed (%s)", self.consumer, error)
                forget_topology(self.client, error)

    async def run_once(self) -> int:
        """Heartbeat if due, then one batch (reclaimed entries first). Returns the entries handled."""
        todo = (set(range(self.settings.stream_partitions)) - self._grouped
                - set(self.reader.broken))  # a repaired partition gets its group here
        if todo:
            await ensure_groups(self.client, self.keys, sorted(todo), self.settings.stream_group)
            self._grouped |= todo
        if time.monotonic() >= self.reader.next_heartbeat:
            await self.heartbeat()
        entries = await self.reader.reclaim()
        self.totals.reclaimed += len(entries)
        if not entries:
            entries = await self.reader.read_new()
        if not entries:
            return 0
        await self.process(entries)
        return len(entries)

    async def heartbeat(self) -> None:
        # Between successful batches nothing of ours is pending: surplus may go as it is.
        await self.reader.heartbeat(may_hand_back=self._healthy)

    # -- one batch --------------------------------------------------------------------------------------
    async def process(self, entries: list[Entry]) -> BatchReport:
        """Validate, dead-letter poison, apply and commit the rest, then acknowledge."""
        started = time.perf_counter()
        metrics.WORKER_ENTRIES_CONSUMED_TOTAL.inc(len(entries))
        metrics.WORKER_BATCH_SIZE_ENTRIES.observe(len(entries))
        self._healthy = False
        try:
            report = await self.applier.apply(entries)
        except RETRYABLE_ERRORS as error:
            self._fail_batch(entries, error)
            raise
        self._healthy = True
        report.seconds = time.perf_counter() - started
        metrics.WORKER_BATCH_LATENCY_SECONDS.observe(report.seconds)
        self.totals.batches += 1
        self.totals.entries += report.entries
        self.totals.applied += report.applied
        self.totals.duplicates += report.duplicates
        self.totals.dead_lettered += report.dead_lettered
        return report

    def _fail_batch(self, entries: list[Entry], error: Exception) -> None:
        """The batch's entries stay pending: reclaim them (in order) before reading further."""
        self.totals.failed_batches += 1
        metrics.WORKER_BATCH_FAILURES_TOTAL.inc()
        self.reader.drain({entry.partition for entry in entries} & self.reader.owned)
        log.warning("worker %s: batch of %d failed (%s: %s); it stays pending",
                    self.consumer, len(entries), type(error).__name__, error)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
