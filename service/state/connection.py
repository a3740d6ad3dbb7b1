"""The Redis client of the serving processes (API and stream worker)."""
from __future__ import annotations

import redis.asyncio as aioredis

from service.ops.settings import Settings


def open_redis(url: str, settings: Settings) -> aioredis.Redis:
    """A redis.asyncio client with its own blocking pool (the caller closes it with `aclose()`);
    for a cluster URL (service/state/cluster.py) a redis.asyncio RedisCluster.

    No automatic command retries: a retried compare-and-set whose reply was lost could apply an
    event without an event id twice; the caller gets StateStoreUnavailable (503) instead.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from service.state.cluster import is_cluster_url, open_cluster

    if is_cluster_url(url, settings):
        return open_cluster(url, settings)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0), decode_responses=False)
    return aioredis.Redis(connection_pool=pool)
