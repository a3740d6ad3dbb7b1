"""The Redis round trips of the state store: reads, compare-and-set, snapshot, delete.

Every call maps Redis trouble to StateStoreUnavailable (connection lost, timeout, or a reply that
means "cannot serve now": read-only replica, out of memory, loading...); NOSCRIPT is handled by
service/state/lua.py. The algorithm that decides what to write is service/state/store.py.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.state import cluster, lua
from service.state.domain import StateStoreUnavailable, UserSnapshot
from service.state.keys import KeySchema, UserKeys

T = TypeVar("T")

_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN",
                        "BUSY", "NOREPLICAS", "MISCONF")


@dataclass
class UserRead:
    """One user's keys as read, and what the compare-and-set must find still there."""

    keys: UserKeys
    blob: bytes | None
    version: str
    pos: str  # '' when absent
    recent: list[str] | None  # None when not read
    seen_event_ids: set[str]

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.blob).hexdigest() if self.blob is not None else ""


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
        replies = self._checked(await self.call(lua.run_pipelined(self.redis, commands)))
        reads, cursor = [], 0
        for keys, event_ids in plans:
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
                                  seen_event_ids={e for e, hit in zip(event_ids, found) if hit}))
        return reads

    async def read_recent(self, reads: Sequence[UserRead]) -> None:
        """Fill in `recent` of these reads (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for read in reads:
                pipe.lrange(read.keys.recent, 0, -1)
            replies = await self.call(pipe.execute())
        for read, reply in zip(reads, replies):
            read.recent = [text(x) for x in reply]

    async def compare_and_set(self, writes: Sequence[CasWrite]) -> list[int]:
        """Run CAS for every write in one round trip; per write lua.CAS_COMMITTED, CAS_CONFLICT or
        CAS_DUPLICATE."""
        commands = []
        for w in writes:
            args: list[Any] = [w.read.pos, w.read.version, w.read.digest, w.state, w.version,
                               w.pos, self.ttl_seconds, self.recent_cap, self.event_window]
            for item_id, event_id in w.events:
                args.extend((item_id, event_id))
            commands.append(lambda p, keys=list(w.read.keys), a=args: lua.CAS.queue(p, keys, a))
        if self.wait_replicas and writes:
            commands.extend(cluster.wait_commands(self.redis, [w.read.keys.state for w in writes],
                                                  self.wait_replicas, self.wait_timeout_ms))
        replies = self._checked(await self.call(lua.run_pipelined(self.redis, commands)))
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.state).get(keys.version).get(keys.pos)
            pipe.lrange(keys.recent, 0, -1).lrange(keys.events, 0, -1).ttl(keys.state)
            blob, version, pos, recent, event_ids, ttl = await self.call(pipe.execute())
        return UserSnapshot(state=blob, model_version=text(version) if version else None,
                            position=int(pos) if pos is not None else None,
                            recent_items=[text(x) for x in recent],
                            event_ids=[text(x) for x in event_ids], ttl_seconds=int(ttl))

    async def delete(self, user_id: str) -> bool:
        """Remove everything stored for a user. True if there was anything."""
        return bool(await self.call(self.redis.delete(*self.keys.user(user_id))))

    async def ping(self) -> bool:
        """Whether Redis answers (False rather than an exception)."""
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError, *cluster.UNAVAILABLE_ERRORS):
            return False

    async def call(self, awaitable: Awaitable[T]) -> T:
        """Await a Redis call; trouble that means "Redis cannot serve now" becomes
        StateStoreUnavailable."""
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError,
                *cluster.UNAVAILABLE_ERRORS) as err:
            cluster.forget_topology(self.redis, err)
            raise StateStoreUnavailable(f"Redis unavailable: {err or type(err).__name__}") from err
        except lua.ScriptsLost as err:
            raise StateStoreUnavailable(str(err)) from err
        except ResponseError as err:
            raise_unavailable_or(err)
            raise

    @staticmethod
    def _checked(replies: list[Any]) -> list[Any]:
        """Replies of a pipeline run with errors in place: raise the first error."""
        for reply in replies:
            if isinstance(reply, Exception):
                raise_unavailable_or(reply)
        return replies


def raise_unavailable_or(error: Exception) -> None:
    """Raise StateStoreUnavailable for an error meaning 'Redis cannot serve now', else `error`."""
    if isinstance(error, (RedisConnectionError, RedisTimeoutError,
                          *cluster.UNAVAILABLE_ERRORS)) or (
            isinstance(error, ResponseError)
            and str(error).split(" ", 1)[0] in _UNAVAILABLE_REPLIES):
        raise StateStoreUnavailable(f"Redis unavailable: {error}") from error
    raise error


def text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
