"""The partitions one stream worker owns, and how it reads them.

Leases (service/streams/leases.py) decide which partitions are this worker's. Here:
1. every heartbeat: renew, take free partitions up to the fair share, hand back surplus, report lag
   and pending per partition, trim what every consumer has acknowledged;
2. a newly owned partition is drained first: entries left pending by a crashed worker are reclaimed
   with XAUTOCLAIM once idle for `stream_claim_min_idle_ms` (above the p99 batch time, so a live
   worker's batch is never taken from it), before any new entry of that partition is read;
3. otherwise XREADGROUP a batch of new entries from the owned partitions.
A partition whose stream key holds another Redis type (WRONGTYPE) is set aside as broken: it is
reported (log, cmnrec_worker_broken_partitions) and skipped, the other partitions keep flowing,
and every heartbeat checks whether it was repaired.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from service.ops import metrics
from service.ops.settings import Settings
from service.state.cluster import is_cluster
from service.state.keys import KeySchema
from service.streams.leases import PartitionLeases

log = logging.getLogger(__name__)

ZERO_ID = "0-0"
CLUSTER_POLL_MS = 20  # idle polling period of a worker on a cluster (no multi-slot blocking read)


class Entry(NamedTuple):
    """One stream entry as read."""

    partition: int
    entry_id: str
    fields: dict[bytes, bytes]


class PartitionReader:
    """Owned partitions, their draining state, and the reads (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema, settings: Settings,
                 consumer: str) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.consumer = consumer
        self.group = settings.stream_group
        self.leases = PartitionLeases(client, keys, consumer, settings.stream_partitions,
                                      settings.stream_lease_ttl_ms)
        self.draining: set[int] = set()  # owned partitions whose pending entries come first
        self._claim_cursor: dict[int, str] = {}
        self.next_heartbeat = 0.0
        self.broken: dict[int, str] = {}  # owned partitions set aside: partition -> the key's type

    async def find_broken(self, partitions: set[int] | None = None) -> dict[int, str]:
        """Check the Redis type of these partitions' streams (default: owned and broken ones);
        a stream key of another type marks its partition broken, a repaired one is taken back
        (and drained first). Returns the newly broken partitions."""
        candidates = sorted((self.owned | set(self.broken)) if partitions is None else partitions)
        if not candidates:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for partition in candidates:
                pipe.type(self.keys.stream(partition))
            types = [text(t) for t in await pipe.execute()]
        newly: dict[int, str] = {}
        for partition, kind in zip(candidates, types):
            if kind in ("stream", "none"):
                if self.broken.pop(partition, None) is not None:
                    log.warning("worker %s: partition %d repaired", self.consumer, partition)
                    self.drain({partition})
                    metrics.WORKER_BROKEN_PARTITIONS.labels(str(partition)).set(0)
            elif partition not in self.broken:
                self.broken[partition] = kind
                newly[partition] = kind
                metrics.WORKER_BROKEN_PARTITIONS.labels(str(partition)).set(1)
                log.error("worker %s: partition %d set aside: its stream key %s holds a %s, not"
                          " a stream (fix or delete the key)", self.consumer, partition,
                          self.keys.stream(partition), kind)
        return newly

    @property
    def owned(self) -> set[int]:
        return self.leases.owned

    @property
    def heartbeat_s(self) -> float:
        """Seconds between heartbeats: a third of the lease TTL."""
        return self.settings.stream_lease_ttl_ms / 3000.0

    # -- bookkeeping ------------------------------------------------------------------------------
    async def heartbeat(self, may_hand_back: bool) -> None:
        """Leases, surplus hand-back (only when nothing of ours is pending: `may_hand_back`),
        lag/pending gauges and trimming of the owned partitions."""
        self.next_heartbeat = time.monotonic() + self.heartbeat_s
        if may_hand_back:
            surplus = [p for p in self.leases.surplus() if p not in self.draining]
            if surplus:
                await self.leases.release(surplus)
                for partition in surplus:
                    remove_partition_gauges(partition)
                log.info("worker %s: handed back partitions %s", self.consumer, surplus)
        acquired, lost = await self.leases.heartbeat()
        self.forget(lost)
        self.drain(set(acquired))
        if acquired:
            log.info("worker %s: took partitions %s", self.consumer, acquired)
        metrics.WORKER_PARTITIONS_OWNED.set(len(self.owned))
        if self.broken:
            await self.find_broken(set(self.broken))
        for partition in sorted(self.owned - set(self.broken)):
            await self._observe(partition)

    async def renew(self) -> None:
        """Extend the leases held (between heartbeats, while a long batch runs)."""
        self.forget(await self.leases.renew())

    def forget(self, lost: list[int]) -> None:
        """Partitions whose lease expired and went to another worker: stop reading them."""
        for partition in lost:
            self.draining.discard(partition)
            self._claim_cursor.pop(partition, None)
            remove_partition_gauges(partition)
        if lost:
            log.warning("worker %s: lost partitions %s", self.consumer, lost)

    def drain(self, partitions: set[int]) -> None:
        """Reclaim these partitions' pending entries before reading new ones from them."""
        for partition in partitions:
            self.draining.add(partition)
            self._claim_cursor[partition] = ZERO_ID

    async def release_all(self) -> None:
        await self.leases.release_all()
        for partition in range(self.settings.stream_partitions):
            remove_partition_gauges(partition)

    async def _observe(self, partition: int) -> None:
        stream = self.keys.stream(partition)
        groups = await self.client.xinfo_groups(stream)
        info = next((g for g in groups if text(g["name"]) == self.group), None)
        if info is None:
            return
        label = str(partition)
        lag = info.get("lag")
        if lag is not None:  # None when Redis cannot tell (after deletions): leave the last value
            metrics.WORKER_STREAM_LAG_ENTRIES.labels(label).set(int(lag))
        pending = int(info["pending"])
        metrics.WORKER_PENDING_ENTRIES.labels(label).set(pending)
        if self.settings.stream_trim:
            await self._trim(partition, info, pending)

    async def _trim(self, partition: int, info: Mapping[str, Any], pending: int) -> None:
        """Drop entries every consumer has acknowledged (below the oldest pending, or all delivered).

        Only safe with this one group on the stream; stream_trim=false keeps the streams whole.
        """
        stream = self.keys.stream(partition)
        if pending:
            oldest = (await self.client.xpending(stream, self.group))["min"]
            if oldest is None:
                return
            min_id = text(oldest)
        else:
            last = text(info["last-delivered-id"])
            if last == ZERO_ID:
                return
            milliseconds, sequence = last.split("-")
            min_id = f"{milliseconds}-{int(sequence) + 1}"  # everything up to `last` was acked
        await self.client.xtrim(stream, minid=min_id, approximate=True)

    # -- reading ----------------------------------------------------------------------------------
    async def reclaim(self) -> list[Entry]:
        """Entries pending in newly owned partitions, claimed once idle long enough, in id order."""
        entries: list[Entry] = []
        budget = self.settings.stream_batch_size
        for partition in sorted((self.draining & self.owned) - set(self.broken)):
            if budget <= 0:
                break
            stream = self.keys.stream(partition)
            reply = await self.client.xautoclaim(
                stream, self.group, self.consumer,
                min_idle_time=self.settings.stream_claim_min_idle_ms,
                start_id=self._claim_cursor.get(partition, ZERO_ID), count=budget)
            # Redis 7 answers [cursor, entries, deleted ids]; Redis 6.2 [cursor, entries].
            cursor, claimed = text(reply[0]), reply[1]
            self._claim_cursor[partition] = cursor
            claimed = [(entry_id, fields) for entry_id, fields in claimed if fields is not None]
            entries.extend(Entry(partition, text(entry_id), dict(fields))
                           for entry_id, fields in claimed)
            budget -= len(claimed)
            if claimed:
                metrics.WORKER_RECLAIMED_ENTRIES_TOTAL.inc(len(claimed))
            elif cursor == ZERO_ID:
                summary = await self.client.xpending(stream, self.group)
                if int(summary["pending"]) == 0:
                    self.draining.discard(partition)  # drained: new entries may flow
                    self._claim_cursor.pop(partition, None)
        return entries

    async def read_new(self) -> list[Entry]:
        """XREADGROUP new entries from the owned partitions that are not being drained."""
        ready = sorted(self.owned - self.draining - set(self.broken))
        if not ready:
            return []
        per_stream = max(1, self.settings.stream_batch_size // len(ready))
        block = self.settings.stream_block_ms if self.settings.stream_block_ms > 0 else None
        if is_cluster(self.client):
            reply = await self._read_new_cluster(ready, per_stream)
        else:
            reply = await self.client.xreadgroup(
                self.group, self.consumer, {self.keys.stream(p): ">" for p in ready},
                count=per_stream, block=block)
        partition_of_stream = {self.keys.stream(p): p for p in ready}
        entries = []
        for stream, stream_entries in reply or []:
            partition = partition_of_stream[text(stream)]
            entries.extend(Entry(partition, text(entry_id), dict(fields))
                           for entry_id, fields in stream_entries)
        return entries

    async def _read_new_cluster(self, ready: list[int], per_stream: int) -> list[Any]:
        """Cluster: partitions live in different slots, and one XREADGROUP may only name streams
        of one slot. So one non-blocking XREADGROUP per partition, in one pipeline (one round trip
        per node); when all are empty, wait up to CLUSTER_POLL_MS (at most stream_block_ms)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for partition in ready:
                pipe.xreadgroup(self.group, self.consumer, {self.keys.stream(partition): ">"},
                                count=per_stream)
            replies = await pipe.execute()
        streams = [stream for reply in replies for stream in (reply or [])]
        if not any(entries for _, entries in streams) and self.settings.stream_block_ms > 0:
            await asyncio.sleep(min(CLUSTER_POLL_MS, self.settings.stream_block_ms) / 1000)
        return streams


def remove_partition_gauges(partition: int) -> None:
    """Stop reporting a partition this worker no longer owns (its new owner reports it)."""
    for gauge in (metrics.WORKER_STREAM_LAG_ENTRIES, metrics.WORKER_PENDING_ENTRIES):
        try:
            gauge.remove(str(partition))
        except KeyError:
            pass


def text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value
