"""The stream worker: applies the events of the partitioned Redis Streams to the users' states.

One `StreamWorker` per process. It owns some partitions (service/streams/leases.py balances them over the live
workers, one owner per partition, so one user's events are applied in order) and loops:

1. every heartbeat: renew its leases, take free partitions up to its fair share, hand back surplus,
   report lag and pending per partition, trim what every consumer has acknowledged;
2. a newly owned partition is drained first: entries left pending by a crashed worker are reclaimed
   with XAUTOCLAIM once idle for `claim_min_idle_ms` (above the p99 batch time, so a live worker's
   batch is never taken from it) and applied before any new entry of that partition;
3. otherwise XREADGROUP a batch of new entries from the partitions it owns;
4. validate each entry; a poison entry (malformed fields, unknown item) goes to the partition's
   dead-letter stream with the reason and its original fields and is acknowledged in the same
   transaction;
5. apply the valid ones with `StateStore.apply_batch`, the same code path (and the same batched
   engine) as the HTTP API: one user's events in stream order, different users stepped together;
6. only when the states are committed, XACK the entries.

A crash between 5 and 6 leaves entries pending; whoever reclaims them applies them again, and the
store recognises their event ids and does nothing (at most once). A failed batch (Redis down) is
not acknowledged either: the worker backs off and reclaims its own entries the same way.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.ops import metrics
from service.ops.labels import DeadLetterReason
from service.streams.leases import PartitionLeases
from service.ops.settings import Settings
from service.state.store import (Event, StateConflictError, StateStore, StateStoreUnavailable,
                           open_redis)
from service.streams.publish import (DEFAULT_GROUP, MalformedEvent, StreamKeys, ensure_groups,
                            parse_event)

log = logging.getLogger(__name__)

_ZERO_ID = "0-0"
IDLE_POLL_S = 0.05  # pause while waiting for a lease or for pending entries to become claimable
# Batch failures that leave the batch pending for a later retry (the worker keeps running).
RETRYABLE_ERRORS = (RedisError, OSError, StateStoreUnavailable, StateConflictError)


def default_consumer_name() -> str:
    """hostname-pid: unique per worker process, readable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker reads the streams (from Settings.stream_*, overridable per command)."""

    partitions: int = 8  # P; must equal the producers'
    consumer: str = field(default_factory=default_consumer_name)
    group: str = DEFAULT_GROUP
    batch_size: int = 1024  # entries per XREADGROUP/XAUTOCLAIM call (spread over the partitions)
    block_ms: int = 200  # XREADGROUP BLOCK when idle; also bounds how long a stop request waits
    claim_min_idle_ms: int = 10_000  # reclaim others' pending entries idle at least this long
    lease_ttl_ms: int = 10_000  # a partition whose owner stops heartbeating is free after this
    dead_letter_maxlen: int = 100_000  # approximate cap of each dead-letter stream
    trim: bool = True  # trim entries that the group has acknowledged
    max_id_length: int = 256
    retry_backoff_s: float = 0.5  # pause after a failed batch before reclaiming it

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> "WorkerOptions":
        values = dict(partitions=settings.stream_partitions, group=settings.stream_group,
                      batch_size=settings.stream_batch_size, block_ms=settings.stream_block_ms,
                      claim_min_idle_ms=settings.stream_claim_min_idle_ms,
                      lease_ttl_ms=settings.stream_lease_ttl_ms,
                      dead_letter_maxlen=settings.stream_dead_letter_maxlen,
                      trim=settings.stream_trim, max_id_length=settings.max_id_length)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def heartbeat_s(self) -> float:
        """Seconds between heartbeats: a third of the lease TTL."""
        return self.lease_ttl_ms / 3000.0


class Entry(NamedTuple):
    """One stream entry as read."""

    partition: int
    entry_id: str
    fields: dict[bytes, bytes]


@dataclass
class BatchReport:
    """What one batch did (for logs, tests and the benchmark)."""

    entries: int = 0
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0


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
    """Consumes the partitioned event streams into `store` (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, store: StateStore, options: WorkerOptions,
                 keys: StreamKeys | None = None) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.keys = keys or StreamKeys(store.keys.prefix)
        self.vocab = store.engine.vocab
        self.leases = PartitionLeases(client, self.keys, options.consumer, options.partitions,
                                      options.lease_ttl_ms)
        self.totals = WorkerTotals()
        self._draining: set[int] = set()  # owned partitions whose pending entries come first
        self._claim_cursor: dict[int, str] = {}
        self._next_heartbeat = 0.0
        self._healthy = True  # the last batch did not fail: surplus partitions may be handed back
        self._groups_ready = False  # the consumer group exists on every partition's stream

    # -- the loop ---------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Loop until `stop` is set; the batch in flight is finished first, then leases are returned."""
        log.info("worker %s: %d partitions, group %s", self.options.consumer,
                 self.options.partitions, self.options.group)
        keepalive = asyncio.create_task(self._keep_leases(stop))
        try:
            while not stop.is_set():
                try:
                    handled = await self.run_once()
                except RETRYABLE_ERRORS as error:
                    log.warning("worker %s: %s: %s; retrying", self.options.consumer,
                                type(error).__name__, error)
                    # A read whose reply was lost may have delivered entries to us: whatever is
                    # pending for us is reclaimed (in order) before anything new is read.
                    self._drain(self.leases.owned)
                    if isinstance(error, ResponseError):  # e.g. NOGROUP: the stream was deleted
                        self._groups_ready = False
                    self._next_heartbeat = 0.0
                    await _sleep_or_stop(stop, self.options.retry_backoff_s)
                    continue
                if handled == 0 and (not self.leases.owned or self._draining):
                    # Nothing to read yet: wait for leases to free up or entries to become idle.
                    await _sleep_or_stop(stop, IDLE_POLL_S)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            try:
                await self.leases.release_all()
            except (RedisError, OSError) as error:
                log.warning("worker %s: could not hand back leases (%s); they expire in %d ms",
                            self.options.consumer, error, self.options.lease_ttl_ms)
            for partition in range(self.options.partitions):
                _remove_partition_gauges(partition)
            log.info("worker %s stopped: %s", self.options.consumer, self.totals)

    async def _keep_leases(self, stop: asyncio.Event) -> None:
        """Renew the leases every heartbeat period even while a long batch runs, so that a slow
        batch never lets a partition pass to another worker while this one still applies it."""
        while not stop.is_set():
            await _sleep_or_stop(stop, self.options.heartbeat_s)
            try:
                self._forget(await self.leases.renew())
            except (RedisError, OSError) as error:
                log.warning("worker %s: lease renewal failed (%s)", self.options.consumer, error)

    async def run_once(self) -> int:
        """Heartbeat if due, then one batch (reclaimed entries first). Returns the entries handled."""
        if not self._groups_ready:
            await ensure_groups(self.client, self.keys, range(self.options.partitions),
                                self.options.group)
            self._groups_ready = True
        if time.monotonic() >= self._next_heartbeat:
            await self.heartbeat()
        entries = await self._reclaim()
        if not entries:
            entries = await self._read_new()
        if not entries:
            return 0
        await self.process(entries)
        return len(entries)

    # -- partitions -------------------------------------------------------------------------------------
    async def heartbeat(self) -> None:
        """Leases, surplus hand-back, lag/pending gauges and trimming of the owned partitions."""
        self._next_heartbeat = time.monotonic() + self.options.heartbeat_s
        if self._healthy:
            # Between batches nothing of ours is pending, so surplus partitions can go as they are.
            surplus = [p for p in self.leases.surplus() if p not in self._draining]
            if surplus:
                await self.leases.release(surplus)
                for partition in surplus:
                    _remove_partition_gauges(partition)
                log.info("worker %s: handed back partitions %s", self.options.consumer, surplus)
        acquired, lost = await self.leases.heartbeat()
        self._forget(lost)
        self._drain(set(acquired))
        if acquired:
            log.info("worker %s: took partitions %s", self.options.consumer, acquired)
        metrics.WORKER_PARTITIONS_OWNED.set(len(self.leases.owned))
        for partition in sorted(self.leases.owned):
            await self._observe_partition(partition)

    async def _observe_partition(self, partition: int) -> None:
        stream = self.keys.stream(partition)
        groups = await self.client.xinfo_groups(stream)
        info = next((g for g in groups if _text(g["name"]) == self.options.group), None)
        if info is None:
            return
        label = str(partition)
        lag = info.get("lag")
        if lag is not None:  # None when Redis cannot tell (after deletions): leave the last value
            metrics.WORKER_STREAM_LAG_ENTRIES.labels(label).set(int(lag))
        pending = int(info["pending"])
        metrics.WORKER_PENDING_ENTRIES.labels(label).set(pending)
        if self.options.trim:
            await self._trim(partition, info, pending)

    async def _trim(self, partition: int, info: Mapping[str, Any], pending: int) -> None:
        """Drop entries every consumer has acknowledged (below the oldest pending, or all delivered).

        Only safe with this one group on the stream; `trim=False` keeps the streams whole.
        """
        stream = self.keys.stream(partition)
        if pending:
            oldest = (await self.client.xpending(stream, self.options.group))["min"]
            if oldest is None:
                return
            min_id = _text(oldest)
        else:
            last = _text(info["last-delivered-id"])
            if last == _ZERO_ID:
                return
            milliseconds, sequence = last.split("-")
            min_id = f"{milliseconds}-{int(sequence) + 1}"  # everything up to `last` was acked
        await self.client.xtrim(stream, minid=min_id, approximate=True)

    # -- reading ----------------------------------------------------------------------------------------
    async def _reclaim(self) -> list[Entry]:
        """Entries pending in newly owned partitions, claimed once idle long enough, in id order."""
        entries: list[Entry] = []
        budget = self.options.batch_size
        for partition in sorted(self._draining & self.leases.owned):
            if budget <= 0:
                break
            stream = self.keys.stream(partition)
            cursor, claimed, _deleted = await self.client.xautoclaim(
                stream, self.options.group, self.options.consumer,
                min_idle_time=self.options.claim_min_idle_ms,
                start_id=self._claim_cursor.get(partition, _ZERO_ID), count=budget)
            cursor = _text(cursor)
            self._claim_cursor[partition] = cursor
            claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
            entries.extend(Entry(partition, _text(entry_id), dict(fields))
                           for entry_id, fields in claimed)
            budget -= len(claimed)
            if claimed:
                self.totals.reclaimed += len(claimed)
                metrics.WORKER_RECLAIMED_ENTRIES_TOTAL.inc(len(claimed))
            elif cursor == _ZERO_ID:
                summary = await self.client.xpending(stream, self.options.group)
                if int(summary["pending"]) == 0:
                    self._draining.discard(partition)  # drained: new entries may flow
                    self._claim_cursor.pop(partition, None)
        return entries

    def _forget(self, lost: list[int]) -> None:
        """Partitions whose lease expired and went to another worker: stop reading them."""
        for partition in lost:
            self._draining.discard(partition)
            self._claim_cursor.pop(partition, None)
            _remove_partition_gauges(partition)
        if lost:
            log.warning("worker %s: lost partitions %s", self.options.consumer, lost)

    def _drain(self, partitions: set[int]) -> None:
        """Reclaim these partitions' pending entries before reading new ones from them."""
        for partition in partitions:
            self._draining.add(partition)
            self._claim_cursor[partition] = _ZERO_ID

    async def _read_new(self) -> list[Entry]:
        """XREADGROUP new entries from the owned partitions that are not being drained."""
        ready = sorted(self.leases.owned - self._draining)
        if not ready:
            return []
        per_stream = max(1, self.options.batch_size // len(ready))
        block = self.options.block_ms if self.options.block_ms > 0 else None
        reply = await self.client.xreadgroup(
            self.options.group, self.options.consumer,
            {self.keys.stream(p): ">" for p in ready}, count=per_stream, block=block)
        partition_of_stream = {self.keys.stream(p): p for p in ready}
        entries = []
        for stream, stream_entries in reply or []:
            partition = partition_of_stream[_text(stream)]
            entries.extend(Entry(partition, _text(entry_id), dict(fields))
                           for entry_id, fields in stream_entries)
        return entries

    # -- one batch --------------------------------------------------------------------------------------
    async def process(self, entries: list[Entry]) -> BatchReport:
        """Validate, dead-letter poison, apply and commit the rest, then acknowledge."""
        started = time.perf_counter()
        metrics.WORKER_ENTRIES_CONSUMED_TOTAL.inc(len(entries))
        metrics.WORKER_BATCH_SIZE_ENTRIES.observe(len(entries))
        report = BatchReport(entries=len(entries))
        valid: list[tuple[Entry, Event]] = []
        poison: list[tuple[Entry, DeadLetterReason, str, str]] = []
        for entry in entries:
            try:
                event = parse_event(entry.fields, self.options.max_id_length)
            except MalformedEvent as error:
                poison.append((entry, DeadLetterReason.MALFORMED, error.field,
                               str(error).split(": ", 1)[-1]))
                continue
            if event.item_id not in self.vocab:
                poison.append((entry, DeadLetterReason.UNKNOWN_ITEM, "item_id",
                               f"unknown item {event.item_id!r}"))
                continue
            valid.append((entry, Event(event.user_id, event.item_id, event.event_id,
                                       event.timestamp)))
        self._healthy = False
        try:
            if poison:
                await self._dead_letter(poison)
                report.dead_lettered = len(poison)
            if valid:
                results = await self.store.apply_batch([event for _, event in valid])
                report.applied = sum(1 for r in results if r.applied)
                report.duplicates = len(results) - report.applied
                await self._acknowledge([entry for entry, _ in valid])
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
        self._drain({entry.partition for entry in entries} & self.leases.owned)
        log.warning("worker %s: batch of %d failed (%s: %s); it stays pending",
                    self.options.consumer, len(entries), type(error).__name__, error)

    async def _dead_letter(self, poison: list[tuple[Entry, DeadLetterReason, str, str]]) -> None:
        """Per partition, one MULTI: XADD each entry to the dead-letter stream, XACK them."""
        by_partition: dict[int, list[tuple[Entry, DeadLetterReason, str, str]]] = defaultdict(list)
        for item in poison:
            by_partition[item[0].partition].append(item)
        for partition, items in by_partition.items():
            async with self.client.pipeline(transaction=True) as pipe:
                for entry, reason, field_name, message in items:
                    record: dict[Any, Any] = dict(entry.fields)
                    record.update({"dead.reason": reason.value, "dead.field": field_name,
                                   "dead.message": message,
                                   "dead.stream": self.keys.stream(partition),
                                   "dead.id": entry.entry_id,
                                   "dead.consumer": self.options.consumer})
                    pipe.xadd(self.keys.dead_letter(partition), record,
                              maxlen=self.options.dead_letter_maxlen, approximate=True)
                pipe.xack(self.keys.stream(partition), self.options.group,
                          *[entry.entry_id for entry, *_ in items])
                await pipe.execute()
            for _, reason, _, _ in items:
                metrics.WORKER_DEAD_LETTERS_TOTAL.labels(reason.value).inc()
        log.info("worker %s: dead-lettered %d entries", self.options.consumer, len(poison))

    async def _acknowledge(self, entries: list[Entry]) -> None:
        by_partition: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            by_partition[entry.partition].append(entry.entry_id)
        async with self.client.pipeline(transaction=False) as pipe:
            for partition, ids in by_partition.items():
                pipe.xack(self.keys.stream(partition), self.options.group, *ids)
            await pipe.execute()


def _remove_partition_gauges(partition: int) -> None:
    """Stop reporting a partition this worker no longer owns (its new owner reports it)."""
    for gauge in (metrics.WORKER_STREAM_LAG_ENTRIES, metrics.WORKER_PENDING_ENTRIES):
        try:
            gauge.remove(str(partition))
        except KeyError:
            pass


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


async def run_worker(settings: Settings, redis_url: str, options: WorkerOptions, *,
                     metrics_port: int | None = None, stop: asyncio.Event | None = None) -> WorkerTotals:
    """Load the artifact, connect, and run one StreamWorker until SIGTERM/SIGINT (or `stop`).

    On a signal the batch in flight is finished and acknowledged, the leases are handed back, and
    the connections are closed. metrics_port: serve /metrics there (0 or None: do not).
    """
    from prometheus_client import start_http_server

    from model.engine import StepEngine

    if options.block_ms >= settings.redis_timeout_seconds * 1000:
        raise ValueError(f"stream_block_ms: {options.block_ms} ms must be shorter than the Redis "
                         f"socket timeout ({settings.redis_timeout_seconds} s)")
    engine = StepEngine.load(settings.artifact_dir, threads=settings.engine_threads)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    metrics_server = None
    if metrics_port:
        metrics_server, _thread = start_http_server(metrics_port)
        log.info("worker metrics on :%d/metrics", metrics_port)
    client = open_redis(redis_url, settings)
    try:
        store = StateStore.from_settings(client, engine, settings)
        worker = StreamWorker(client, store, options, StreamKeys(settings.key_prefix))
        await worker.run(stop)
        return worker.totals
    finally:
        await client.aclose()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        for signum in installed:
            loop.remove_signal_handler(signum)
