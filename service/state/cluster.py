"""Redis Cluster: which URL names a cluster, its clients, and what a cluster adds to error handling.

A REDIS_URL with the scheme `redis+cluster://host:port` (or `rediss+cluster://` for TLS), or any
REDIS_URL with CMNREC_REDIS_CLUSTER=true, is a seed node of a Redis Cluster: the service then uses
redis-py's cluster client, which learns the slot map from the seed and sends every command to the
master of its key's slot. Every multi-key operation of the service stays within one slot (one
user's keys share the hash tag `{user}`, one partition's keys `{p}`: service/state/keys.py), and a
pipeline over many users is split per node by redis-py and sent to all nodes at once: one round
trip per node, in parallel.

Errors:
- MOVED/ASK (resharding) are followed by redis-py (the refused command was not executed);
- TRYAGAIN/CLUSTERDOWN replies inside a pipeline are retried by service/state/lua.py
  `run_pipelined` with a bounded back-off (the refused command was not executed either);
- a lost connection or a timeout is *not* retried (a compare-and-set whose reply was lost may
  have committed): the caller gets StateStoreUnavailable (HTTP 503 `state_store_unavailable`),
  and `forget_topology` makes the next command re-read the slot map, so that the service finds
  the promoted replica by itself after a failover.
"""
from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    ClusterError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.ops.settings import Settings

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

# Errors a cluster raises that mean "cannot serve this now" (besides connection errors/timeouts):
# CLUSTERDOWN/MASTERDOWN (ClusterError), TRYAGAIN, a MOVED/ASK left after redirections, a slot
# without a known master or a cluster that cannot be reached (RedisClusterException).
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (ClusterError, TryAgainError, AskError,
                                                   RedisClusterException)
# Replies that say the command was refused, not executed: safe to send again.
REFUSED_REPLIES: tuple[type[Exception], ...] = (ClusterError, TryAgainError, AskError)


def is_cluster_url(url: str, settings: Settings | None = None) -> bool:
    """Whether `url` names a cluster: the +cluster scheme, or settings.redis_cluster."""
    return url.startswith(CLUSTER_SCHEMES) or bool(settings is not None and settings.redis_cluster)


def plain_url(url: str) -> str:
    """redis+cluster://h:p -> redis://h:p (the URL redis-py parses)."""
    for scheme in CLUSTER_SCHEMES:
        if url.startswith(scheme):
            return scheme.replace("+cluster", "") + url[len(scheme):]
    return url


def open_cluster(url: str, settings: Settings) -> aioredis.RedisCluster:
    """A redis.asyncio cluster client; no automatic retry of connection errors (see the module
    docstring); the caller closes it with `aclose()`."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.RedisCluster.from_url(
        plain_url(url), max_connections=settings.redis_max_connections,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0), require_full_coverage=False, decode_responses=False)
    _keep_command_table(client)
    _pack_with_hiredis(client)
    return client


def _pack_with_hiredis(client: aioredis.RedisCluster) -> None:
    """The cluster client's connections pack commands with hiredis too (service/state/connection.py
    hiredis_packing). RedisCluster hard-codes its connection class into the keyword arguments it
    gives every ClusterNode, so the class is replaced there (before any node exists beyond the
    startup nodes, which are patched directly)."""
    from service.state.connection import hiredis_packing

    manager = client.nodes_manager
    packed = hiredis_packing(client.connection_kwargs.get("connection_class", Connection))
    for kwargs in (client.connection_kwargs, manager.connection_kwargs):
        kwargs["connection_class"] = packed
    for node in manager.startup_nodes.values():
        node.connection_class = packed


def _keep_command_table(client: aioredis.RedisCluster) -> None:
    """Re-reading the slot map also re-reads the COMMAND table from the first master listed, and
    fails as a whole when that master is the one that just died (it stays listed until its replica
    is promoted): every slot would answer 503 for the whole failover. The table does not change
    with a failover, so once read it is kept."""
    parser = client.commands_parser
    first_read = parser.initialize

    async def initialize(node: Any = None) -> None:
        if getattr(parser, "commands", None):
            if node is not None:
                parser.node = node
            return
        await first_read(node)

    parser.initialize = initialize


def open_sync(url: str, settings: Settings | None = None, **kwargs: Any) -> redis.Redis:
    """A synchronous client (producers, the CLI, tests): a RedisCluster for a cluster URL."""
    if is_cluster_url(url, settings):
        return redis.RedisCluster.from_url(plain_url(url), require_full_coverage=False, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def is_cluster(client: Any) -> bool:
    return isinstance(client, (aioredis.RedisCluster, redis.RedisCluster))


def forget_topology(client: Any, error: BaseException) -> None:
    """After a connection error, timeout or CLUSTERDOWN from a cluster, re-read the slot map before
    the next command (redis-py does that itself for single commands, not for pipelines)."""
    if isinstance(client, aioredis.RedisCluster) and isinstance(
            error, (RedisConnectionError, RedisTimeoutError, OSError, ClusterError,
                    RedisClusterException)):
        client._initialize = True  # noqa: SLF001 - the flag redis-py's own retry path sets


def node_of(client: Any, key: str) -> Any:
    """The cluster node (master) that serves `key`'s slot."""
    return client.get_node_from_key(key)


def wait_commands(client: Any, written_keys: list[str], replicas: int,
                  timeout_ms: int) -> list[Any]:
    """WAIT commands to end a pipeline of writes with: one per master that got writes (a cluster
    pipeline sends each node's commands on one connection, in order), one for a single Redis.
    Each replies how many replicas acknowledged every earlier write of its connection."""
    from service.state.lua import Trailer

    if not is_cluster(client):
        return [Trailer(lambda p: p.execute_command("WAIT", replicas, timeout_ms))]
    nodes = {}
    for key in written_keys:
        node = node_of(client, key)
        nodes.setdefault(node.name, node)
    return [Trailer(lambda p, n=node: p.execute_command("WAIT", replicas, timeout_ms,
                                                        target_nodes=n))
            for node in nodes.values()]


# Oldest Redis the service supports: XAUTOCLAIM (6.2), XADD/XTRIM MINID (6.2), LPOS (6.0.6). Replies
# that differ between supported versions are read for both: XAUTOCLAIM answers [cursor, entries] on
# 6.2 and [cursor, entries, deleted ids] on 7 (service/streams/partitions.py); XINFO GROUPS has no
# `lag` field before 7 (the worker then leaves the lag gauge alone).
MIN_REDIS_VERSION = (6, 2, 0)


class UnsupportedRedis(RuntimeError):
    """The Redis server is older than MIN_REDIS_VERSION."""


async def check_redis_version(client: Any) -> tuple[int, ...] | None:
    """Raise UnsupportedRedis if the server (every master of a cluster answers the same INFO
    section) is older than MIN_REDIS_VERSION; the version, or None if Redis does not answer now."""
    try:
        info = await client.info("server")
    except (RedisConnectionError, RedisTimeoutError, OSError, *UNAVAILABLE_ERRORS):
        return None
    if isinstance(info, dict) and "redis_version" not in info:  # per node, from some clients
        info = next(iter(info.values()), {})
    return require_supported(str(info.get("redis_version", "0")))


def require_supported(version_text: str) -> tuple[int, ...]:
    """'7.0.15' -> (7, 0, 15); UnsupportedRedis below MIN_REDIS_VERSION."""
    version = tuple(int(x) for x in version_text.split(".")[:3] if x.isdigit())
    if version < MIN_REDIS_VERSION:
        raise UnsupportedRedis(
            f"Redis {version_text} is too old: cmnrec needs Redis >= "
            f"{'.'.join(map(str, MIN_REDIS_VERSION))} (XAUTOCLAIM, XTRIM MINID)")
    return version
