"""Per-user CmnRec state in Redis, updated by the step engine with an atomic compare-and-set.

Per user (keys in service/state/keys.py, all under one hash tag):
    state    the state blob (model/codec.py layout, stamped with the model version and pos)
    version  the model version that made the blob
    pos      events absorbed by the blob
    recent   the user's last `recent_cap` external item ids, oldest first
    events   the user's last `event_window` event ids, oldest first (de-duplication)

Applying events (`StateStore.apply_batch`, the one code path of the HTTP API and the stream worker):
1. read every touched user in one pipelined round trip: per user one MGET (blob, version, pos)
   and, when its events carry ids, one EVENT_IDS_SCRIPT call telling which ids are stored (the
   recent items too when excluding seen items). Without recommendations (n = 0, the stream
   worker, where a stored id comes back only when a failed batch is redelivered) the first
   attempt leaves the ids to the compare-and-set, which checks them anyway (step 5): a user whose
   commit it refuses for a stored id is read again with the lookup, which costs no attempt;
2. a blob of another model version (or a corrupt one) is never fed to the model: the user's state
   is rebuilt by replaying the stored recent items from the initial state (cmnrec_state_rebuilds_total);
3. events whose id is already stored, or repeated inside the batch, are no-ops (applied=false);
4. the rest is stepped in waves: the k-th new event of every user goes into wave k, so one user's
   events keep their order and different users share each graph run. Without recommendations
   (n = 0, the stream worker) the whole batch is one engine.apply_sequences call (states decoded
   and encoded once, no output layer); with n > 0, one engine.apply call per wave (scores after
   every event);
5. each user's new blob is committed by CAS_SCRIPT, which writes only if pos, version and the blob
   are still what step 1 read and none of the event ids arrived meanwhile; a user that lost the race
   is read and stepped again (at most `retry_limit` attempts; cmnrec_cas_conflicts_total).
Within one process, a per-user lock keeps a process from racing itself; the compare-and-set is what
makes concurrent processes and machines safe.

Limitation of the rebuild: when a user has more than `recent_cap` events, only the last
`recent_cap` are replayed, so the rebuilt state (and its position) covers those events only.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model.codec import StateFormatError, StateVersionError
from service.ops import metrics
from service.state.keys import KeySchema, UserKeys
from service.ops.labels import EventOutcome, RebuildReason, Stage
from service.state.locks import KeyedLocks
from service.ops.settings import Settings

log = logging.getLogger(__name__)

CAS_SCRIPT = """
-- cmnrec: compare-and-set of one user's state, with the events that produced it.
-- KEYS[1] state blob   KEYS[2] model version   KEYS[3] pos   KEYS[4] recent items (list)
-- KEYS[5] recent event ids (list)
-- ARGV[1] expected pos             ('' = the user has no state)
-- ARGV[2] expected model version   ('' = none)
-- ARGV[3] expected sha1 hex of the stored blob ('' = none)
-- ARGV[4] new state blob   ARGV[5] new model version   ARGV[6] new pos
-- ARGV[7] ttl seconds (0 = keys do not expire)   ARGV[8] recent-items cap   ARGV[9] event-id window
-- ARGV[10..] the applied events, oldest first, as pairs: external item id, event id ('' = none)
-- Returns {1, new pos}: committed. {0, stored pos}: somebody committed since the read, nothing
-- written. {2, event id}: that event id was committed since the read, nothing written.
local pos = redis.call('GET', KEYS[3]) or ''
local version = redis.call('GET', KEYS[2]) or ''
if pos ~= ARGV[1] or version ~= ARGV[2] then
  return {0, pos}
end
local blob = redis.call('GET', KEYS[1])
local digest = ''
if blob then
  digest = redis.sha1hex(blob)
end
if digest ~= ARGV[3] then
  return {0, pos}
end
for i = 11, #ARGV, 2 do
  if ARGV[i] ~= '' and redis.call('LPOS', KEYS[5], ARGV[i]) then
    return {2, ARGV[i]}
  end
end
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SET', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[6])
for i = 10, #ARGV, 2 do
  redis.call('RPUSH', KEYS[4], ARGV[i])
  if ARGV[i + 1] ~= '' then
    redis.call('RPUSH', KEYS[5], ARGV[i + 1])
  end
end
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[8]), -1)
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[9]), -1)
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  for k = 1, 5 do
    redis.call('EXPIRE', KEYS[k], ttl)
  end
else
  redis.call('PERSIST', KEYS[4])
  redis.call('PERSIST', KEYS[5])
end
return {1, ARGV[6]}
"""
CAS_COMMITTED, CAS_CONFLICT, CAS_DUPLICATE = 1, 0, 2
_CAS_FIXED_ARGS = 9

EVENT_IDS_SCRIPT = """
-- cmnrec: which event ids one user's recent event-id list holds (reads only).
-- KEYS[1] recent event ids (list)
-- ARGV[1..] event ids
-- Returns one integer per ARGV, in order: 1 when the list holds that id, 0 otherwise.
local found = {}
for i = 1, #ARGV do
  if redis.call('LPOS', KEYS[1], ARGV[i]) then
    found[i] = 1
  else
    found[i] = 0
  end
end
return found
"""

_UNAVAILABLE_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "CLUSTERDOWN", "TRYAGAIN",
                        "BUSY", "NOREPLICAS", "MISCONF")


# -- public data types --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """One interaction: the user consumed the item. Ids are external (the vocabulary's strings)."""

    user_id: str
    item_id: str
    event_id: str | None = None  # unique per user; a repeated one is a no-op
    timestamp: float | None = None  # seconds since the epoch, informative only


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    title: str | None = None


@dataclass
class ApplyResult:
    """What happened to one event."""

    event: Event
    applied: bool  # False for a repeated event id (nothing changed)
    position: int  # events absorbed by the user's state after this event
    chunk_time: bool  # the event fell on a chunk time (memory written and read)
    model_version: str
    recommendations: list[Recommendation]  # top-n after this event (empty when n = 0)
    timings: dict[str, float]  # seconds per Stage value for the whole apply call
    rebuilt: bool = False  # the stored state was rebuilt for the current model first


@dataclass
class UserRecommendations:
    user_id: str
    known: bool  # False: no stored state, popularity answered
    position: int
    model_version: str
    recommendations: list[Recommendation]
    timings: dict[str, float]


@dataclass
class UserSnapshot:
    """Everything stored for one user (for tests, tooling and offline replays)."""

    state: bytes | None
    model_version: str | None
    position: int | None
    recent_items: list[str]
    event_ids: list[str]
    ttl_seconds: int  # remaining TTL of the state key: -1 none, -2 missing


class UnknownItemError(ValueError):
    """An event's item is not in the model's vocabulary; nothing was applied."""

    def __init__(self, index: int, item_id: str) -> None:
        super().__init__(f"events[{index}].item_id: unknown item {item_id!r}")
        self.index, self.item_id = index, item_id


class StateStoreUnavailable(RuntimeError):
    """Redis did not answer (down, unreachable, loading, read-only...)."""


class StateConflictError(RuntimeError):
    """A user's state kept changing under us for `retry_limit` attempts."""

    def __init__(self, user_id: str, attempts: int) -> None:
        super().__init__(f"user {user_id!r}: state changed concurrently {attempts} times in a row;"
                         " retry the request")
        self.user_id, self.attempts = user_id, attempts


# -- internal bookkeeping --------------------------------------------------------------------------------
class _Timer:
    """Accumulates seconds per stage for one apply call."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, stage: Stage | str, seconds: float) -> None:
        self.seconds[stage.value if isinstance(stage, Stage) else stage] += seconds

    def observe(self) -> dict[str, float]:
        """Export the Stage timings to Prometheus; returns every timing (incl. "total")."""
        for stage, seconds in self.seconds.items():
            if stage in _STAGE_VALUES:
                metrics.STAGE_LATENCY_SECONDS.labels(stage).observe(seconds)
        return dict(self.seconds)


_STAGE_VALUES = frozenset(stage.value for stage in Stage)


_ENGINE_STAGES = {"decode": Stage.STATE_DECODE, "controller": Stage.CONTROLLER,
                  "memory": Stage.MEMORY, "output": Stage.OUTPUT, "encode": Stage.STATE_ENCODE}


@dataclass
class _UserRead:
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


@dataclass
class _UserWork:
    """One user's part of an apply call in one attempt."""

    user_id: str
    indices: list[int]  # positions of the user's events in the call, in order
    read: _UserRead | None = None
    start_state: bytes = b""
    rebuilt: bool = False
    to_apply: list[int] = field(default_factory=list)  # indices of events to step, in order
    states_after: list[bytes] = field(default_factory=list)  # n > 0: state after each applied event
    final_state: bytes | None = None  # state after the last applied event (None: none applied)
    outcome: dict[int, tuple[bool, int, bool]] = field(default_factory=dict)  # idx -> applied,pos,chunk

    @property
    def committed_state(self) -> bytes:
        """The state this attempt commits: after the applied events, or as read (or rebuilt)."""
        return self.final_state if self.final_state is not None else self.start_state


class StateStore:
    """Per-user state in Redis + the step engine. One instance per process, shared by all requests.

    redis: a redis.asyncio client (bytes replies, decode_responses=False) whose pool the owner opens
    and closes; engine: model.engine.StepEngine (any object with its API).
    """

    def __init__(self, redis: aioredis.Redis, engine: Any, *, keys: KeySchema | None = None,
                 ttl_seconds: int = 0, recent_cap: int = 1000, event_window: int = 1000,
                 retry_limit: int = 64) -> None:
        if recent_cap < 1 or event_window < 1 or retry_limit < 1 or ttl_seconds < 0:
            raise ValueError("recent_cap, event_window, retry_limit must be >= 1, ttl >= 0")
        self.redis = redis
        self.engine = engine
        self.keys = keys or KeySchema()
        self.ttl_seconds = ttl_seconds
        self.recent_cap = recent_cap
        self.event_window = event_window
        self.retry_limit = retry_limit
        self._cas = redis.register_script(CAS_SCRIPT)
        self._event_ids = redis.register_script(EVENT_IDS_SCRIPT)
        self._locks = KeyedLocks()
        self._initial_state: bytes = engine.initial_state()

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, engine: Any, settings: Settings) -> "StateStore":
        return cls(redis, engine, keys=KeySchema(settings.key_prefix),
                   ttl_seconds=settings.state_ttl_seconds, recent_cap=settings.recent_items_cap,
                   event_window=settings.event_id_window, retry_limit=settings.cas_retry_limit)

    @property
    def model_version(self) -> str:
        return str(self.engine.version)

    # -- public API -------------------------------------------------------------------------------------
    async def apply(self, event: Event, *, n: int = 0, exclude_seen: bool = False) -> ApplyResult:
        """Apply one event; see `apply_batch`."""
        return (await self.apply_batch([event], n=n, exclude_seen=exclude_seen))[0]

    async def apply_batch(self, events: Sequence[Event], *, n: int = 0,
                          exclude_seen: bool = False) -> list[ApplyResult]:
        """Apply events exactly once each, in the given order per user; one result per event.

        n > 0 adds the top-n recommendations after each event (excluding the user's stored recent
        items and the batch's earlier items when exclude_seen). Raises UnknownItemError before
        touching Redis if any item is unknown, StateStoreUnavailable if Redis does not answer,
        StateConflictError after `retry_limit` lost races on one user. Users whose commit succeeded
        before such an error keep their committed events.
        """
        if not events:
            return []
        started = time.perf_counter()
        items = self._encode_items(events)
        by_user: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            by_user.setdefault(event.user_id, []).append(index)
        metrics.BATCH_SIZE_EVENTS.observe(len(events))
        timer = _Timer()
        outcomes: dict[int, tuple[bool, int, bool]] = {}
        rebuilt_users: set[str] = set()
        recs: dict[int, list[Recommendation]] = {}
        check_ids = n > 0  # n = 0: the first attempt leaves stored ids to the compare-and-set
        async with self._locks.hold(by_user):
            pending = dict(by_user)
            attempt = 0
            while True:
                work = [_UserWork(user, indices) for user, indices in pending.items()]
                need_recent = n > 0 and exclude_seen
                await self._read(work, events, timer, need_recent, check_ids)
                await self._rebuild_stale(work, timer)
                self._mark_duplicates(work, events)
                wave_recs = self._step_waves(work, items, n, exclude_seen, timer)
                self._recommend_duplicates(work, items, n, exclude_seen, wave_recs, timer)
                lost = await self._commit(work, events, timer)
                committed = [w for w in work if w.user_id not in lost]
                # committed: counted even if a later attempt for another user fails
                self._count_outcomes(o for w in committed for o in w.outcome.values())
                for w in committed:
                    outcomes.update(w.outcome)
                    if w.rebuilt:
                        rebuilt_users.add(w.user_id)
                    for index in w.indices:
                        recs[index] = wave_recs.get(index, [])
                pending = {user: pending[user] for user in lost}
                if not pending:
                    break
                conflicts = [u for u, code in lost.items() if check_ids or code != CAS_DUPLICATE]
                check_ids = True
                if not conflicts:
                    continue  # only ids stored before this batch: read them, no attempt spent
                metrics.CAS_CONFLICTS_TOTAL.inc(len(conflicts))
                attempt += 1
                if attempt >= self.retry_limit:
                    raise StateConflictError(conflicts[0], self.retry_limit)
                # Jittered back-off so that racing writers do not collide again in lock-step.
                await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
        timer.add("total", time.perf_counter() - started)
        timings = timer.observe()
        version = self.model_version
        return [ApplyResult(event=events[i], applied=outcomes[i][0], position=outcomes[i][1],
                            chunk_time=outcomes[i][2], model_version=version,
                            recommendations=recs.get(i, []), timings=timings,
                            rebuilt=events[i].user_id in rebuilt_users)
                for i in range(len(events))]

    async def recommend(self, user_id: str, *, n: int = 10,
                        exclude_seen: bool = False) -> UserRecommendations:
        """Top-n from the stored state without applying anything; popularity for an unknown user.

        A stored state of another model version is rebuilt (and saved if nobody wrote meanwhile).
        """
        started = time.perf_counter()
        timer = _Timer()
        async with self._locks.hold([user_id]):
            work = _UserWork(user_id, [])
            await self._read([work], [], timer, need_recent=exclude_seen)
            await self._rebuild_stale([work], timer)
            if work.rebuilt:
                await self._commit([work], [], timer)  # a lost race only means someone else saved
        known = work.read is not None and work.read.blob is not None
        position = self.engine.state_pos(work.start_state) if known else 0
        recommendations: list[Recommendation] = []
        if n > 0:
            tic = time.perf_counter()
            if known:
                scores = self.engine.scores([work.start_state])
            else:
                scores = np.asarray(self.engine.popularity_scores())[None, :]
            exclude = [self._seen_ids(work.read, [])] if (exclude_seen and known) else None
            recommendations = self._to_recommendations(self.engine.top_n(scores, n, exclude))[0]
            timer.add(Stage.TOPN, time.perf_counter() - tic)
        timer.add("total", time.perf_counter() - started)
        return UserRecommendations(user_id=user_id, known=known, position=position,
                                   model_version=self.model_version,
                                   recommendations=recommendations, timings=timer.observe())

    async def delete_user(self, user_id: str) -> bool:
        """Remove everything stored for a user. True if there was anything."""
        async with self._locks.hold([user_id]):
            removed = await self._call(self.redis.delete(*self.keys.user(user_id)))
        return bool(removed)

    async def snapshot(self, user_id: str) -> UserSnapshot:
        """Everything stored for one user, read in one round trip."""
        keys = self.keys.user(user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(keys.state).get(keys.version).get(keys.pos)
            pipe.lrange(keys.recent, 0, -1).lrange(keys.events, 0, -1).ttl(keys.state)
            blob, version, pos, recent, event_ids, ttl = await self._call(pipe.execute())
        return UserSnapshot(state=blob, model_version=_text(version) if version else None,
                            position=int(pos) if pos is not None else None,
                            recent_items=[_text(x) for x in recent],
                            event_ids=[_text(x) for x in event_ids], ttl_seconds=int(ttl))

    async def ping(self) -> bool:
        """Whether Redis answers (False rather than an exception)."""
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    # -- steps of apply_batch ------------------------------------------------------------------------------
    def _encode_items(self, events: Sequence[Event]) -> list[int]:
        vocab = self.engine.vocab
        encoded = []
        for index, event in enumerate(events):
            try:
                encoded.append(vocab.encode(event.item_id))
            except KeyError:
                raise UnknownItemError(index, event.item_id) from None
        return encoded

    async def _read(self, work: list[_UserWork], events: Sequence[Event], timer: _Timer,
                    need_recent: bool, check_ids: bool = True) -> None:
        """One pipelined round trip: per user an MGET of blob, version and pos, one
        EVENT_IDS_SCRIPT call for the event ids of its events when `check_ids` (+ its recent
        items)."""
        tic = time.perf_counter()
        plans = []
        for w in work:
            keys = self.keys.user(w.user_id)
            event_ids = (sorted({events[i].event_id for i in w.indices if events[i].event_id})
                         if check_ids else [])
            plans.append((keys, event_ids))
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, event_ids in plans:
                    pipe.mget(keys.state, keys.version, keys.pos)
                    if need_recent:
                        pipe.lrange(keys.recent, 0, -1)
                    if event_ids:
                        pipe.evalsha(self._event_ids.sha, 1, keys.events, *event_ids)
                replies = await self._call(pipe.execute(raise_on_error=False))
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                break
            if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
                # Redis lost its scripts (restart, SCRIPT FLUSH): load and read again.
                await self._call(self.redis.script_load(EVENT_IDS_SCRIPT))
                continue
            error = next((e for e in errors if not isinstance(e, NoScriptError)), errors[0])
            self._raise_unavailable_or(error)
        cursor = 0
        for w, (keys, event_ids) in zip(work, plans):
            blob, version, pos = replies[cursor]
            cursor += 1
            recent = None
            if need_recent:
                recent = [_text(x) for x in replies[cursor]]
                cursor += 1
            found: list[int] = []
            if event_ids:
                found = replies[cursor]
                cursor += 1
            w.read = _UserRead(keys=keys, blob=blob, version=_text(version) if version else "",
                               pos=_text(pos) if pos is not None else "", recent=recent,
                               seen_event_ids={e for e, hit in zip(event_ids, found) if hit})
            w.start_state = blob if blob is not None else self._initial_state
        timer.add(Stage.STATE_READ, time.perf_counter() - tic)

    async def _rebuild_stale(self, work: list[_UserWork], timer: _Timer) -> None:
        """Replace a blob of another model version (or a corrupt one) by a replay of the user's
        stored recent items from the initial state."""
        stale: list[_UserWork] = []
        for w in work:
            assert w.read is not None
            if w.read.blob is None:
                continue
            reason = self._stale_reason(w.read)
            if reason is not None:
                metrics.STATE_REBUILDS_TOTAL.labels(reason.value).inc()
                log.info("rebuilding the state of user %r (%s)", w.user_id, reason.value)
                stale.append(w)
        if not stale:
            return
        tic = time.perf_counter()
        missing = [w for w in stale if w.read is not None and w.read.recent is None]
        if missing:  # a second round trip, only after a model change
            async with self.redis.pipeline(transaction=False) as pipe:
                for w in missing:
                    assert w.read is not None
                    pipe.lrange(w.read.keys.recent, 0, -1)
                replies = await self._call(pipe.execute())
            for w, reply in zip(missing, replies):
                assert w.read is not None
                w.read.recent = [_text(x) for x in reply]
        vocab = self.engine.vocab
        replays = [[vocab.encode(x) for x in (w.read.recent or []) if x in vocab]
                   for w in stale if w.read is not None]
        for w, state in zip(stale, self._replay(replays)):
            w.start_state, w.rebuilt = state, True
        timer.add(Stage.REBUILD, time.perf_counter() - tic)

    def _stale_reason(self, read: _UserRead) -> RebuildReason | None:
        assert read.blob is not None
        try:
            self.engine.codec.check(read.blob)
        except StateVersionError:
            return RebuildReason.VERSION_MISMATCH
        except StateFormatError:
            return RebuildReason.CORRUPT_STATE
        if read.version != self.model_version:
            return RebuildReason.VERSION_MISMATCH
        return None

    def _replay(self, replays: list[list[int]]) -> list[bytes]:
        """States after stepping each item list from the initial state, users batched per wave."""
        return self.engine.apply_sequences(replays, [self._initial_state] * len(replays)).states

    @staticmethod
    def _mark_duplicates(work: list[_UserWork], events: Sequence[Event]) -> None:
        """Split each user's events into those to step and repeated event ids (no-ops)."""
        for w in work:
            assert w.read is not None
            seen = set(w.read.seen_event_ids)
            w.to_apply, w.states_after, w.final_state, w.outcome = [], [], None, {}
            for index in w.indices:
                event_id = events[index].event_id
                if event_id and event_id in seen:
                    w.outcome[index] = (False, -1, False)  # position filled in after stepping
                    continue
                if event_id:
                    seen.add(event_id)
                w.to_apply.append(index)

    def _step_waves(self, work: list[_UserWork], items: list[int], n: int, exclude_seen: bool,
                    timer: _Timer) -> dict[int, list[Recommendation]]:
        """Wave k steps the k-th new event of every user (see the module docstring)."""
        if n == 0:
            self._step_sequences(work, items, timer)
            return {}
        recs: dict[int, list[Recommendation]] = {}
        seen = {w.user_id: self._seen_ids(w.read, []) for w in work} if exclude_seen else {}
        for k in range(max((len(w.to_apply) for w in work), default=0)):
            rows = [w for w in work if len(w.to_apply) > k]
            indices = [w.to_apply[k] for w in rows]
            states = [w.states_after[-1] if w.states_after else w.start_state for w in rows]
            tic = time.perf_counter()
            result = self.engine.apply([items[i] for i in indices], states)
            self._add_engine_timings(timer, time.perf_counter() - tic, result.timings, len(rows))
            for j, (w, index) in enumerate(zip(rows, indices)):
                w.states_after.append(result.states[j])
                w.final_state = result.states[j]
                w.outcome[index] = (True, int(result.positions[j]), bool(result.chunk[j]))
            tic = time.perf_counter()
            exclude = None
            if exclude_seen:
                for w, index in zip(rows, indices):
                    seen[w.user_id].add(items[index])
                exclude = [seen[w.user_id] for w in rows]
            ranked = self._to_recommendations(self.engine.top_n(result.scores, n, exclude))
            for index, ranking in zip(indices, ranked):
                recs[index] = ranking
            timer.add(Stage.TOPN, time.perf_counter() - tic)
        return recs

    def _step_sequences(self, work: list[_UserWork], items: list[int], timer: _Timer) -> None:
        """n = 0: every user's new events in one engine call; only the final states are kept.
        Event j of a user ends at position (start position + j + 1)."""
        rows = [w for w in work if w.to_apply]
        if not rows:
            return
        tic = time.perf_counter()
        result = self.engine.apply_sequences([[items[i] for i in w.to_apply] for w in rows],
                                             [w.start_state for w in rows])
        self._add_engine_timings(timer, time.perf_counter() - tic, result.timings, len(rows))
        for w, state, end, flags in zip(rows, result.states, result.positions.tolist(),
                                        result.chunk):
            w.final_state = state
            first = end - len(w.to_apply) + 1
            for j, (index, chunk) in enumerate(zip(w.to_apply, flags.tolist())):
                w.outcome[index] = (True, first + j, chunk)

    @staticmethod
    def _add_engine_timings(timer: _Timer, seconds: float, timings: dict[str, float],
                            rows: int) -> None:
        timer.add(Stage.MODEL, seconds)
        for name, stage_seconds in timings.items():
            if name in _ENGINE_STAGES:
                timer.add(_ENGINE_STAGES[name], stage_seconds)
        metrics.ENGINE_BATCH_ROWS.observe(rows)

    def _recommend_duplicates(self, work: list[_UserWork], items: list[int], n: int,
                              exclude_seen: bool, recs: dict[int, list[Recommendation]],
                              timer: _Timer) -> None:
        """Fill in position (and recommendations) of no-op events: the position of the state at
        that point is the start position plus the events applied before it."""
        rows: list[tuple[int, bytes, set[int]]] = []
        for w in work:
            if len(w.to_apply) == len(w.indices):
                continue  # no no-op events
            start_pos = int(self.engine.state_pos(w.start_state))
            applied_before: list[int] = []
            for index in w.indices:
                if w.outcome[index][0]:
                    applied_before.append(index)
                    continue
                w.outcome[index] = (False, start_pos + len(applied_before), False)
                if n > 0:
                    state = (w.states_after[len(applied_before) - 1] if applied_before
                             else w.start_state)
                    exclude = (self._seen_ids(w.read, [items[i] for i in applied_before])
                               if exclude_seen else set())
                    rows.append((index, state, exclude))
        if not rows:
            return
        tic = time.perf_counter()
        scores = self.engine.scores([state for _, state, _ in rows])
        ranked = self._to_recommendations(self.engine.top_n(
            scores, n, [exclude for _, _, exclude in rows] if exclude_seen else None))
        for (index, _, _), ranking in zip(rows, ranked):
            recs[index] = ranking
        timer.add(Stage.TOPN, time.perf_counter() - tic)

    async def _commit(self, work: list[_UserWork], events: Sequence[Event],
                      timer: _Timer) -> dict[str, int]:
        """Compare-and-set every changed user in one round trip. Returns the users that lost,
        with the script's answer (CAS_CONFLICT or CAS_DUPLICATE)."""
        changed = [w for w in work if w.to_apply or w.rebuilt]
        if not changed:
            return {}
        calls = []
        finals = []
        for w in changed:
            assert w.read is not None
            final = w.committed_state
            args: list[Any] = [w.read.pos, w.read.version, w.read.digest, final,
                               self.model_version, int(self.engine.state_pos(final)),
                               self.ttl_seconds, self.recent_cap, self.event_window]
            for index in w.to_apply:
                args.extend((events[index].item_id, events[index].event_id or ""))
            calls.append((list(w.read.keys), args))
            finals.append(final)
        tic = time.perf_counter()
        replies = await self._run_cas(calls)
        timer.add(Stage.STATE_WRITE, time.perf_counter() - tic)
        lost = {}
        for w, final, reply in zip(changed, finals, replies):
            code = int(reply[0])
            if code == CAS_COMMITTED:
                metrics.STATE_BYTES.observe(len(final))
            else:
                lost[w.user_id] = code
        return lost

    async def _run_cas(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """EVALSHA the registered script once per call, pipelined; reloads it where Redis lost it
        (after a restart) and re-runs exactly those calls (they wrote nothing)."""
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.evalsha(self._cas.sha, len(keys), *keys, *args)
                results = await self._call(pipe.execute(raise_on_error=False))
            missing = []
            for i, result in zip(todo, results):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, Exception):
                    self._raise_unavailable_or(result)
                else:
                    replies[i] = result
            if not missing:
                return replies
            if attempt == 0:
                await self._call(self.redis.script_load(CAS_SCRIPT))
            todo = missing
        raise StateStoreUnavailable("Redis keeps forgetting the compare-and-set script")

    # -- helpers -----------------------------------------------------------------------------------------
    def _seen_ids(self, read: _UserRead | None, extra: list[int]) -> set[int]:
        """Internal ids of the user's stored recent items (known to this model) plus `extra`."""
        vocab = self.engine.vocab
        seen = {vocab.encode(x) for x in (read.recent if read and read.recent else []) if x in vocab}
        seen.update(extra)
        return seen

    def _to_recommendations(self, ranked: list[list[tuple[int, float]]]) -> list[list[Recommendation]]:
        vocab = self.engine.vocab
        out = []
        for row in ranked:
            entries = []
            for index, score in row:
                item_id = vocab.decode(int(index))
                entries.append(Recommendation(item_id, float(score), vocab.title(item_id)))
            out.append(entries)
        return out

    @staticmethod
    def _count_outcomes(outcomes: Iterable[tuple[bool, int, bool]]) -> None:
        """Count events as applied (and at a chunk time) or duplicate."""
        applied = duplicates = chunks = 0
        for was_applied, _, chunk in outcomes:
            applied += was_applied
            duplicates += not was_applied
            chunks += was_applied and chunk
        metrics.EVENTS_TOTAL.labels(EventOutcome.APPLIED.value).inc(applied)
        metrics.EVENTS_TOTAL.labels(EventOutcome.DUPLICATE.value).inc(duplicates)
        metrics.CHUNK_EVENTS_TOTAL.inc(chunks)

    async def _call(self, awaitable: Any) -> Any:
        """Await a Redis call; connection trouble becomes StateStoreUnavailable."""
        try:
            return await awaitable
        except (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError) as err:
            raise StateStoreUnavailable(f"Redis unavailable: {err or type(err).__name__}") from err
        except ResponseError as err:
            self._raise_unavailable_or(err)
            raise

    @staticmethod
    def _raise_unavailable_or(error: Exception) -> None:
        """Raise StateStoreUnavailable for a reply meaning 'Redis cannot serve now', else `error`."""
        if isinstance(error, (RedisConnectionError, RedisTimeoutError)) or (
                isinstance(error, ResponseError)
                and str(error).split(" ", 1)[0] in _UNAVAILABLE_REPLIES):
            raise StateStoreUnavailable(f"Redis unavailable: {error}") from error
        raise error


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def open_redis(url: str, settings: Settings) -> aioredis.Redis:
    """A redis.asyncio client with its own blocking pool (the caller closes it with `aclose()`).

    No automatic command retries: a retried compare-and-set whose reply was lost could apply an
    event without an event id twice; the caller gets StateStoreUnavailable (503) instead.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0), decode_responses=False)
    return aioredis.Redis(connection_pool=pool)
