"""The Redis round trips of the state store: reads, compare-and-set, snapshot, delete.

Every call maps Redis trouble to StateStoreUnavailable with a reason (`unavailable`: connection lost,
timeout, loading, busy...; `read_only`: a replica, e.g. during a failover; `full`: maxmemory reached
under noeviction), and a WRONGTYPE reply about a user's keys to UserStateCorrupt naming the user;
NOSCRIPT is handled by service/state/lua.py. After a connection error the pool's idle connections
are dropped (they were opened to the same server and are likely dead too), so the next call opens a
fresh one; reads (never writes: a lost reply of a write may have committed) are retried once on a
connection error. The algorithm that decides what to write is service/state/store.py.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    ClusterDownError,
    ExecAbortError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.state import cluster, lua
from service.state.domain import StateStoreUnavailable, UserSnapshot, UserStateCorrupt
from service.state.keys import KeySchema, UserKeys

T = TypeVar("T")

# Reply prefixes meaning "Redis cannot serve now", for errors redis-py has no class for (or that
# arrive inside a script's error message), with the reason they report.
_UNAVAILABLE_REPLIES = {"OOM": "full", "READONLY": "read_only", "MASTERDOWN": "unavailable",
                        "LOADING": "unavailable", "CLUSTERDOWN": "unavailable",
                        "TRYAGAIN": "unavailable", "BUSY": "unavailable",
                        "NOREPLICAS": "unavailable", "MISCONF": "unavailable",
                        "NOPERM": "unavailable", "NOAUTH": "unavailable",
                        "EXECABORT": "unavailable"}
READ_RETRIES = 1  # extra attempts of an idempotent read after a connection error


@dataclass
class UserRead:
    """One user's keys as read, and what the compare-and-set must find still there."""

    keys: UserKeys
    blob: bytes | None
    version: str
    pos: str  # '' when absent
    recent: list[str] | None  # None when not read
    seen_event_ids: set[str]
    user_id: str = ""

    @property
    def blob_check(self) -> bytes:
        """What the compare-and-set finds in the stored blob if nobody wrote since this read: its
        header's crc32 and pos (lua.BLOB_TOKEN), b'' when there was no blob."""
        return self.blob[lua.BLOB_TOKEN] if self.blob is not None else b""


@dataclass(frozen=True)
class CasWrite:
    """One user's compare-and-set: what was read, and what to write."""

    read: UserRead
    state: bytes
    version: str
    pos: int
    events: Sequence[tuple[str, str]]  # (external item id, event id or ''), oldest first


class StateRepo:
    """The round trips of one key prefix over a redis.asyncio client (bytes replies)."""

    def __init__(self, redis: aioredis.Redis, keys: KeySchema, *, ttl_seconds: int,
                 recent_cap: int, event_window: int, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000) -> None:
        self.redis = redis
        self.wait_replicas = wait_replicas  # WAIT after each commit (0: none); README "Scaling out"
        self.wait_timeout_ms = wait_timeout_ms
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.recent_cap = recent_cap
        self.event_window = event_window

    async def read_users(self, users: Sequence[tuple[str, Sequence[str]]], *,
                         need_recent: bool) -> list[UserRead]:
        """One pipelined round trip: per (user, event ids) an MGET of blob, version and pos, the
        recent items when `need_recent`, and one EVENT_IDS call telling which ids are stored."""
        plans = [(self.keys.user(user), sorted(set(event_ids))) for user, event_ids in users]
        commands: list[lua.Command] = []
        for keys, event_ids in plans:
            # execute_command: a cluster pipeline blocks mget(); one user's keys share one slot
            commands.append(lambda p, k=keys: p.execute_command("MGET", k.state, k.version, k.pos))
            if need_recent:
                commands.append(lambda p, k=keys: p.lrange(k.recent, 0, -1))
            if event_ids:
                commands.append(lambda p, k=keys, ids=event_ids: lua.EVENT_IDS.queue(
                    p, [k.events], ids))
        owners: list[str] = []
        for (user, _), (keys, event_ids) in zip(users, plans):
            owners.extend([user] * (1 + need_recent + bool(event_ids)))
        replies = self._checked(await self.read(lambda: lua.run_pipelined(self.redis, commands)),
                                owners)
        reads, cursor = [], 0
        for (user, _), (keys, event_ids) in zip(users, plans):
            blob, version, pos = replies[cursor]
            cursor += 1
            recent = None
            if need_recent:
                recent = [text(x) for x in replies[cursor]]
                cursor += 1
            found: list[int] = []
            if event_ids:
                found = replies[cursor]
                cursor += 1
            reads.append(UserRead(keys=keys, blob=blob, version=text(version) if version else "",
                                  pos=text(pos) if pos is not None else "", recent=recent,
                                  seen_event_ids={e for e, hit in zip(event_ids, found) if hit},
                                  user_id=user))
        return reads

    async def read_recent(self, reads: Sequence[UserRead]) -> None:
        """Fill in `recent` of these reads (one round trip)."""
        async def lrange_all() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for read in reads:
                    pipe.lrange(read.keys.recent, 0, -1)
                return await pipe.execute(raise_on_error=False)

        replies = self._checked(await self.read(lrange_all), [r.user_id for r in reads])
        for read, reply in zip(reads, replies):
            read.recent = [text(x) for x in reply]

    async def compare_and_set(self, writes: Sequence[CasWrite]) -> list[int]:
        """Run CAS for every write in one round trip; per write lua.CAS_COMMITTED, CAS_CONFLICT or
        CAS_DUPLICATE."""
        commands = []
        for w in writes:
            args: list[Any] = [w.read.pos, w.read.version, w.read.blob_check, w.state, w.version,
                               w.pos, self.ttl_seconds, self.recent_cap, self.event_window]
            for item_id, event_id in w.events:
                args.extend((item_id, event_id))
            commands.append(lambda p, keys=list(w.read.keys), a=args: lua.CAS.queue(p, keys, a))
        if self.wait_replicas and writes:
            commands.extend(cluster.wait_commands(self.redis, [w.read.keys.state for w in writes],
                                                  self.wait_replicas, self.wait_timeout_ms))
        replies = self._checked(await self.call(lua.run_pipelined(self.redis, commands)),
                                [w.read.user_id for w in writes])
        if self.wait_replicas and writes:
            acked = [int(reply) for reply in replies[len(writes):]]
            if min(acked) < self.wait_replicas:
                raise StateStoreUnavailable(
                    f"only {min(acked)} of {self.wait_replicas} replicas confirmed the commit "
                    f"within {self.wait_timeout_ms} ms (it may still be applied: retry with the "
                    f"same event id)")
        return [int(reply[0]) for reply in replies[:len(writes)]]

    async def snapshot(self, user_id: str) -> UserSnapshot:
        """Everything stored for one user, read in one round trip."""
        keys = self.keys.user(user_id)

        async def read_all() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(keys.state).get(keys.version).get(keys.pos)
                pipe.lrange(keys.recent, 0, -1).lrange(keys.events, 0, -1).ttl(keys.state)
                return await pipe.execute(raise_on_error=False)

        replies = self._checked(await self.read(read_all), [user_id] * 6)
        blob, version, pos, recent, event_ids, ttl = replies
        return UserSnapshot(state=blob, model_version=text(version) if version else None,
                            position=int(pos) if pos is not None else None,
                            recent_items=[text(x) for x in recent],
                            event_ids=[text(x) for x in event_ids], ttl_seconds=int(ttl))

    async def event_applied(self, user_id: str, event_id: str) -> bool:
        """Whether `event_id` is among the user's stored event ids (the de-duplication window)."""
        keys = self.keys.user(user_id)
        replies = self._checked(await self.read(lambda: lua.run_pipelined(
            self.redis, [lambda p: lua.EVENT_IDS.queue(p, [keys.events], [event_id])])),
            [user_id])
        return bool(replies[0][0])

    async def delete(self, user_id: str) -> bool:
        """Remove everything stored for a user. True if there was anything."""
        return bool(await self.call(self.redis.delete(*self.keys.user(user_id))))

    async def ping(self) -> bool:
        """Whether Redis answers (False rather than an exception)."""
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError, *cluster.UNAVAILABLE_ERRORS):
            return False

    async def writable(self, probe_key: str) -> str | None:
        """None when Redis accepts a write now; else the reason (unavailable, read_only, full).

        Writes a 1-byte key that expires after a second (readiness: a read-only replica or a full
        Redis answers PING but refuses every event)."""
        try:
            await self.call(self.redis.set(probe_key, b"1", px=1000))
        except StateStoreUnavailable as error:
            return error.reason
        except (RedisError, OSError):
            return "unavailable"
        return None

    async def read(self, make: Callable[[], Awaitable[T]]) -> T:
        """`call` for an idempotent read: retried (READ_RETRIES times) on a fresh connection when
        the connection failed."""
        for attempt in range(READ_RETRIES + 1):
            try:
                return await self.call(make())
            except StateStoreUnavailable as error:
                if attempt == READ_RETRIES or not isinstance(
                        error.__cause__, (RedisConnectionError, RedisTimeoutError, OSError)):
                    raise
        raise AssertionError("unreachable")

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis call; trouble that means "Redis cannot serve now" becomes
        StateStoreUnavailable."""
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError,
                *cluster.UNAVAILABLE_ERRORS) as err:
            cluster.forget_topology(self.redis, err)
            await self._drop_idle_connections()
            raise StateStoreUnavailable(f"Redis unavailable: {err or type(err).__name__}") from err
        except lua.ScriptsLost as err:
            raise StateStoreUnavailable(str(err)) from err
        except ResponseError as err:
            raise_unavailable_or(err)
            raise

    async def _drop_idle_connections(self) -> None:
        """After a connection error: close the pooled idle connections (opened to a server that
        just failed), so the next calls connect afresh instead of failing one stale socket each."""
        pool = getattr(self.redis, "connection_pool", None)  # a cluster client keeps one per node
        if pool is None:
            return
        try:
            await pool.disconnect(inuse_connections=False)
        except (RedisError, OSError):
            pass

    @staticmethod
    def _checked(replies: list[Any], owners: Sequence[str] | None = None) -> list[Any]:
        """Replies of a pipeline run with errors in place: raise UserStateCorrupt naming every
        user (owners[i]: the user of reply i) whose keys have the wrong type, else the first
        error (as StateStoreUnavailable when it means that)."""
        corrupt = sorted({owners[i] for i, reply in enumerate(replies)
                          if owners is not None and is_wrong_type(reply)})
        if corrupt:
            raise UserStateCorrupt(corrupt)
        for reply in replies:
            if isinstance(reply, Exception):
                raise_unavailable_or(reply)
        return replies


def is_wrong_type(reply: Any) -> bool:
    """A WRONGTYPE error reply (directly, or raised by a script's redis.call)."""
    return isinstance(reply, ResponseError) and "WRONGTYPE" in str(reply)


def unavailable_reason(error: BaseException) -> str | None:
    """The StateStoreUnavailable reason of a Redis error, or None when it means something else."""
    if isinstance(error, ReadOnlyError):
        return "read_only"
    if isinstance(error, OutOfMemoryError):
        return "full"
    if isinstance(error, (RedisConnectionError, RedisTimeoutError, ClusterDownError,
                          TryAgainError, MasterDownError, NoPermissionError, ExecAbortError,
                          *cluster.UNAVAILABLE_ERRORS)):
        return "unavailable"  # (redis-py strips the reply prefix of these classes)
    if isinstance(error, ResponseError):
        message = str(error)
        for prefix, reason in _UNAVAILABLE_REPLIES.items():
            # the prefix starts the reply, or follows a script's "...: " wrapper
            if message.startswith(prefix + " ") or f" {prefix} " in message or message == prefix:
                return reason
    return None


def raise_unavailable_or(error: Exception) -> None:
    """Raise StateStoreUnavailable for an error meaning 'Redis cannot serve now', else `error`."""
    reason = unavailable_reason(error)
    if reason is not None:
        raise StateStoreUnavailable(f"Redis {reason.replace('_', ' ')}: {error}", reason) from error
    raise error


def text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
