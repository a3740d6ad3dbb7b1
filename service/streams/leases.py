"""Which stream worker reads which partition: leases in Redis, balanced over the live workers.

A consumer group alone would spread one partition's entries over all its consumers, and two workers
could then apply one user's events out of order. So each partition has exactly one owner at a time:
the owner holds the partition's lease key (value = its consumer name, with a TTL) and renews it on every
heartbeat. Live workers heartbeat into a sorted set; each worker aims at ceil(P / live workers)
partitions, taking free leases when it has fewer and handing back the surplus (between batches, with
nothing pending) when it has more. A crashed worker stops renewing: its leases expire after `ttl_ms`
and the others take its partitions, then reclaim its pending entries (service/streams/worker.py).

Leases use the server's clock (TIME) for heartbeats, so workers on different hosts agree.
"""
from __future__ import annotations

import math
import zlib

import redis.asyncio

from service.state import lua
from service.state.keys import KeySchema


class PartitionLeases:
    """The partitions one worker (`consumer`) owns out of `partitions`, kept in `owned`."""

    def __init__(self, client: redis.asyncio.Redis, keys: KeySchema, consumer: str,
                 partitions: int, ttl_ms: int) -> None:
        if ttl_ms < 100:
            raise ValueError(f"lease ttl_ms: must be >= 100, got {ttl_ms}")
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.partitions = partitions
        self.ttl_ms = ttl_ms
        self.owned: set[int] = set()
        self.live_workers = 0
        # Start the search for free partitions at a name-dependent place, so that workers starting
        # together do not all race for partition 0.
        self._offset = zlib.crc32(consumer.encode("utf-8")) % partitions

    async def heartbeat(self) -> tuple[list[int], list[int]]:
        """Heartbeat, renew the leases held, take free ones up to the fair share.

        Returns (acquired, lost): partitions newly owned, and partitions whose lease was lost (taken
        over after an expiry); both are already applied to `owned`.
        """
        lost = await self.renew()
        acquired = []
        for step in range(self.partitions):
            if len(self.owned) >= self.fair_share():
                break
            partition = (self._offset + step) % self.partitions
            if partition in self.owned:
                continue
            if await self.client.set(self.keys.lease(partition), self.consumer, nx=True,
                                     px=self.ttl_ms):
                self.owned.add(partition)
                acquired.append(partition)
        return acquired, lost

    async def renew(self) -> list[int]:
        """Heartbeat and extend the leases held (no new ones). Returns the partitions lost."""
        seconds, micros = await self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.keys.workers(), {self.consumer: now_ms})
        pipe.zremrangebyscore(self.keys.workers(), "-inf", now_ms - self.ttl_ms)
        pipe.zcard(self.keys.workers())
        _, _, live = await pipe.execute()
        self.live_workers = int(live)
        owned = sorted(self.owned)
        renewed = await self._run_script(lua.LEASE_RENEW, owned, [self.consumer, self.ttl_ms])
        lost = [partition for partition, ok in zip(owned, renewed) if not ok]
        self.owned.difference_update(lost)
        return lost

    def fair_share(self) -> int:
        """ceil(P / live workers): the most partitions this worker should hold."""
        return math.ceil(self.partitions / max(1, self.live_workers))

    def surplus(self) -> list[int]:
        """Partitions held beyond the fair share (the highest-numbered ones), to hand back."""
        extra = len(self.owned) - self.fair_share()
        return sorted(self.owned)[-extra:] if extra > 0 else []

    async def release(self, partitions: list[int]) -> None:
        """Give leases back (only call when nothing of these partitions is pending for this worker)."""
        await self._run_script(lua.LEASE_RELEASE, partitions, [self.consumer])
        self.owned.difference_update(partitions)

    async def release_all(self) -> None:
        """Give every lease back and leave the set of live workers (graceful stop)."""
        await self.release(sorted(self.owned))
        await self.client.zrem(self.keys.workers(), self.consumer)

    async def _run_script(self, script: lua.Script, partitions: list[int],
                          args: list[object]) -> list[object]:
        """The script on each partition's lease key, in one round trip (NOSCRIPT-safe)."""
        if not partitions:
            return []
        replies = await lua.run_pipelined(self.client, [
            lambda p, key=self.keys.lease(partition): script.queue(p, [key], args)
            for partition in partitions])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies
