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

from service.streams.publish import StreamKeys

# KEYS[1] = lease key; ARGV[1] = owner (consumer name), ARGV[2] = TTL in ms.
# Extends the lease if ARGV[1] still owns it. Returns 1 if renewed, 0 if the lease is lost.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] = lease key; ARGV[1] = owner. Deletes the lease if ARGV[1] owns it. Returns 1 or 0.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class PartitionLeases:
    """The partitions one worker (`consumer`) owns out of `partitions`, kept in `owned`."""

    def __init__(self, client: redis.asyncio.Redis, keys: StreamKeys, consumer: str,
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
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)
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
        lost = []
        for partition in sorted(self.owned):
            renewed = await self._renew(keys=[self.keys.lease(partition)],
                                        args=[self.consumer, self.ttl_ms])
            if not renewed:
                lost.append(partition)
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
        for partition in partitions:
            await self._release(keys=[self.keys.lease(partition)], args=[self.consumer])
            self.owned.discard(partition)

    async def release_all(self) -> None:
        """Give every lease back and leave the set of live workers (graceful stop)."""
        await self.release(sorted(self.owned))
        await self.client.zrem(self.keys.workers(), self.consumer)
