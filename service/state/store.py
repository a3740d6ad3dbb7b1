"""The apply algorithm: per-user model state in Redis, stepped by the engine, committed by an atomic
compare-and-set (the round trips are in service/state/repo.py, the scripts in service/state/lua.py).

Per user (keys in service/state/keys.py, all under one hash tag):
    state    the state blob (model/codec.py layout, stamped with the model version and pos)
    version  the model version that made the blob
    pos      events absorbed by the blob
    recent   the user's last `recent_cap` external item ids, oldest first
    events   the user's last `event_window` event ids, oldest first (de-duplication)

Applying events (`StateStore.apply_batch`, the one code path of the HTTP API and the stream worker):
1. read every touched user in one pipelined round trip: per user one MGET (blob, version, pos)
   and, when its events carry ids, one EVENT_IDS call telling which ids are stored (the
   recent items too when excluding seen items). Without recommendations (n = 0, the stream
   worker, where a stored id comes back only when a failed batch is redelivered) the first
   attempt leaves the ids to the compare-and-set, which checks them anyway (step 5): a user whose
   commit it refuses for a stored id is read again with the lookup, which costs no attempt;
2. a blob of another model version (or a corrupt one) is never fed to the model: the user's state
   is rebuilt by replaying the stored recent items from the initial state (cmnrec_state_rebuilds_total);
   Every blob the engine steps has thus been checked (codec.check, in _stale_reason) or made by
   this process (the initial state, a rebuild, the state cache), so the engine does not compute
   its crc32 again (`verified=True`);
3. events whose id is already stored, or repeated inside the batch, are no-ops (applied=false);
4. the rest is stepped in waves: the k-th new event of every user goes into wave k, so one user's
   events keep their order and different users share each graph run. Without recommendations
   (n = 0, the stream worker) the whole batch is one engine.apply_sequences call (states decoded
   and encoded once, no output layer); with n > 0, one engine.apply call per wave (scores after
   every event);
5. each user's new blob is committed by CAS, which writes only if pos, version and the blob
   (its header's crc32 and pos) are still what step 1 read and none of the event ids arrived
   meanwhile; a user that lost the race is read and stepped again (at most `retry_limit` attempts;
   cmnrec_cas_conflicts_total).
Within one process, a per-user lock keeps a process from racing itself; the compare-and-set is what
makes concurrent processes and machines safe.

The state cache (service/state/cache.py): a user whose state this process committed last skips the
read of step 1; the cached blob, version and pos stand in for it, and the compare-and-set checks
them as it checks a read. A refused commit drops the entry and the user is read and stepped again
(no attempt spent: the entry was stale, nobody raced); a duplicate event id refused by the
compare-and-set is read again with the id lookup, as for n = 0.

Per-user outcomes (`apply_each`): one user's conflict after `retry_limit` attempts, or Redis failing
while a user was still pending, answers that user's events with the error and no other user's;
`apply_batch` raises the first such error instead (after every other user was committed).

Limitation of the rebuild: when a user has more than `recent_cap` events, only the last
`recent_cap` are replayed, so the rebuilt state (and its position) covers those events only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis.asyncio as aioredis

from model.codec import StateFormatError, StateVersionError
from model.engine import Engine
from service.ops import metrics
from service.ops.labels import CacheResult, RebuildReason, Stage
from service.ops.settings import Settings
from service.ops.timer import StageTimer
from service.state.cache import CachedState, StateCache
from service.state.domain import (
    ApplyResult,
    Event,
    Recommendation,
    StateConflictError,
    StateStoreUnavailable,
    UnknownItemError,
    UserRecommendations,
    UserSnapshot,
)
from service.state.keys import KeySchema
from service.state.locks import KeyedLocks
from service.state.lua import CAS_COMMITTED, CAS_CONFLICT, CAS_DUPLICATE
from service.state.repo import CasWrite, StateRepo, UserRead

log = logging.getLogger(__name__)

_ENGINE_STAGES = {"decode": Stage.STATE_DECODE, "controller": Stage.CONTROLLER,
                  "memory": Stage.MEMORY, "output": Stage.OUTPUT, "encode": Stage.STATE_ENCODE}

Outcome = tuple[bool, int, bool]  # applied, position after the event, chunk time
ApplyFailure = StateConflictError | StateStoreUnavailable  # what apply_each answers instead


@dataclass
class _UserWork:
    """One user's part of an apply call in one attempt."""

    user_id: str
    indices: list[int]  # positions of the user's events in the call, in order
    read: UserRead | None = None
    cached: bool = False  # `read` came from the state cache, not from Redis
    start_state: bytes = b""
    rebuilt: bool = False
    to_apply: list[int] = field(default_factory=list)  # indices of events to step, in order
    states_after: list[bytes] = field(default_factory=list)  # n > 0: state after each applied event
    final_state: bytes | None = None  # state after the last applied event (None: none applied)
    outcome: dict[int, Outcome] = field(default_factory=dict)  # event index -> outcome

    @property
    def committed_state(self) -> bytes:
        """The state this attempt commits: after the applied events, or as read (or rebuilt)."""
        return self.final_state if self.final_state is not None else self.start_state


class StateStore:
    """Per-user state in Redis + the step engine. One instance per process, shared by all requests.

    redis: a redis.asyncio client (bytes replies) whose pool the owner opens and closes.
    """

    def __init__(self, redis: aioredis.Redis, engine: Engine, *, keys: KeySchema | None = None,
                 ttl_seconds: int = 0, recent_cap: int = 1000, event_window: int = 1000,
                 retry_limit: int = 64, cache_users: int = 0, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000, model_thread: bool = False) -> None:
        if recent_cap < 1 or event_window < 1 or retry_limit < 1 or ttl_seconds < 0:
            raise ValueError("recent_cap, event_window, retry_limit must be >= 1, ttl >= 0")
        self.redis = redis
        self.engine = engine
        self.keys = keys or KeySchema()
        self.repo = StateRepo(redis, self.keys, ttl_seconds=ttl_seconds, recent_cap=recent_cap,
                              event_window=event_window, wait_replicas=wait_replicas,
                              wait_timeout_ms=wait_timeout_ms)
        self.retry_limit = retry_limit
        self.recent_cap = recent_cap
        self.model_thread = model_thread  # run the engine of each batch on a worker thread
        self.cache = StateCache(cache_users)
        self._locks = KeyedLocks()
        self._initial_state: bytes = engine.initial_state()

    @classmethod
    def from_settings(cls, redis: aioredis.Redis, engine: Engine, settings: Settings) -> "StateStore":
        return cls(redis, engine, keys=KeySchema(settings.key_prefix),
                   ttl_seconds=settings.state_ttl_seconds, recent_cap=settings.recent_items_cap,
                   event_window=settings.event_id_window, retry_limit=settings.cas_retry_limit,
                   cache_users=settings.cache_users,
                   wait_replicas=settings.redis_wait_replicas,
                   wait_timeout_ms=settings.redis_wait_timeout_ms,
                   model_thread=settings.model_thread)

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
        touching Redis if any item is unknown; otherwise the first failure of `apply_each`
        (StateStoreUnavailable, or StateConflictError after `retry_limit` lost races on one user),
        once every other user of the call is done. Users committed before such an error keep their
        committed events.
        """
        outcomes = await self.apply_each(events, n=n, exclude_seen=exclude_seen)
        for outcome in outcomes:
            if not isinstance(outcome, ApplyResult):
                raise outcome
        return outcomes  # type: ignore[return-value]  # no failure above

    async def apply_each(self, events: Sequence[Event], *, n: int = 0,
                         exclude_seen: bool = False) -> list[ApplyResult | ApplyFailure]:
        """`apply_batch` with per-user outcomes: one entry per event, its ApplyResult, or the error
        that stopped its user (StateConflictError after `retry_limit` lost races,
        StateStoreUnavailable when Redis failed while the user was not yet committed: its events
        may or may not have committed, and a retry with the same event ids is safe). The other
        users' events are applied and answered as if they had come alone. Raises UnknownItemError
        (before touching Redis) if any item is unknown.
        """
        if not events:
            return []
        timer = StageTimer()
        items = self._encode_items(events)
        by_user: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            by_user.setdefault(event.user_id, []).append(index)
        metrics.BATCH_SIZE_EVENTS.observe(len(events))
        outcomes: dict[int, Outcome] = {}
        failures: dict[str, ApplyFailure] = {}
        rebuilt_users: set[str] = set()
        recs: dict[int, list[Recommendation]] = {}
        check_ids = n > 0  # n = 0: the first attempt leaves stored ids to the compare-and-set
        use_cache = self.cache.capacity > 0
        async with self._locks.hold(by_user):
            pending = dict(by_user)
            attempt = 0
            try:
                while pending:
                    work = [_UserWork(user, indices) for user, indices in pending.items()]
                    await self._read(work, events, timer, n > 0 and exclude_seen, check_ids,
                                     use_cache)
                    await self._rebuild_stale(work, timer)
                    self._mark_duplicates(work, events)
                    if self.model_thread:  # the loop serves other requests meanwhile
                        wave_recs = await asyncio.to_thread(self._run_model, work, items, n,
                                                            exclude_seen, timer)
                    else:
                        wave_recs = self._run_model(work, items, n, exclude_seen, timer)
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
                    cached = {w.user_id for w in work if w.cached}
                    if cached:
                        stale = sum(1 for u in cached if lost.get(u) == CAS_CONFLICT)
                        metrics.STATE_CACHE_TOTAL.labels(CacheResult.HIT.value).inc(
                            len(cached) - stale)
                        metrics.STATE_CACHE_TOTAL.labels(CacheResult.STALE.value).inc(stale)
                        metrics.CAS_CONFLICTS_TOTAL.inc(stale)
                    for user in lost:
                        self.cache.drop(user)
                    pending = {user: pending[user] for user in lost}
                    if not pending:
                        break
                    # A stale cache entry or an id not looked up beforehand raced with nobody:
                    # read again, no attempt spent.
                    conflicts = [u for u, code in lost.items() if u not in cached
                                 and (check_ids or code != CAS_DUPLICATE)]
                    check_ids = True
                    if not conflicts:
                        continue
                    metrics.CAS_CONFLICTS_TOTAL.inc(len(conflicts))
                    attempt += 1
                    if attempt >= self.retry_limit:
                        for user in conflicts:
                            failures[user] = StateConflictError(user, self.retry_limit)
                            del pending[user]
                        continue
                    # Jittered back-off so that racing writers do not collide again in lock-step.
                    await asyncio.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
            except StateStoreUnavailable as error:
                for user in pending:  # their commit may or may not have happened
                    failures[user] = error
                    self.cache.drop(user)
        timings = timer.observe()
        version = self.model_version
        return [ApplyResult(event=events[i], applied=outcomes[i][0], position=outcomes[i][1],
                            chunk_time=outcomes[i][2], model_version=version,
                            recommendations=recs.get(i, []), timings=timings,
                            rebuilt=events[i].user_id in rebuilt_users)
                if i in outcomes else failures[events[i].user_id]
                for i in range(len(events))]

    async def recommend(self, user_id: str, *, n: int = 10,
                        exclude_seen: bool = False) -> UserRecommendations:
        """Top-n from the stored state without applying anything; popularity for an unknown user.

        A stored state of another model version is rebuilt (and saved if nobody wrote meanwhile).
        """
        timer = StageTimer()
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
            with timer.stage(Stage.TOPN):
                if known:
                    scores = self.engine.scores([work.start_state])
                else:
                    scores = np.asarray(self.engine.popularity_scores())[None, :]
                exclude = [self._seen_ids(work.read, [])] if (exclude_seen and known) else None
                recommendations = self._to_recommendations(
                    self.engine.top_n(scores, n, exclude))[0]
        return UserRecommendations(user_id=user_id, known=known, position=position,
                                   model_version=self.model_version,
                                   recommendations=recommendations, timings=timer.observe())

    async def delete_user(self, user_id: str) -> bool:
        """Remove everything stored for a user. True if there was anything."""
        async with self._locks.hold([user_id]):
            self.cache.drop(user_id)
            return await self.repo.delete(user_id)

    async def snapshot(self, user_id: str) -> UserSnapshot:
        """Everything stored for one user, read in one round trip."""
        return await self.repo.snapshot(user_id)

    async def ping(self) -> bool:
        """Whether Redis answers (False rather than an exception)."""
        return await self.repo.ping()

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

    async def _read(self, work: list[_UserWork], events: Sequence[Event], timer: StageTimer,
                    need_recent: bool, check_ids: bool = True, use_cache: bool = False) -> None:
        """The users this process committed last from the state cache (when `use_cache`), the
        others in one round trip (service/state/repo.py StateRepo.read_users)."""
        to_read = work
        if use_cache:
            to_read = []
            for w in work:
                entry = self.cache.get(w.user_id)
                if entry is None or (need_recent and entry.recent is None):
                    to_read.append(w)
                    continue
                w.read = UserRead(keys=self.keys.user(w.user_id), blob=entry.blob,
                                  version=entry.version, pos=entry.pos,
                                  recent=None if entry.recent is None else list(entry.recent),
                                  seen_event_ids=set())
                w.start_state, w.cached = entry.blob, True
            if to_read:
                metrics.STATE_CACHE_TOTAL.labels(CacheResult.MISS.value).inc(len(to_read))
            else:
                return
        with timer.stage(Stage.STATE_READ):
            reads = await self.repo.read_users(
                [(w.user_id, [events[i].event_id for i in w.indices if events[i].event_id]
                  if check_ids else []) for w in to_read], need_recent=need_recent)
        for w, read in zip(to_read, reads):
            w.read = read
            w.start_state = read.blob if read.blob is not None else self._initial_state

    async def _rebuild_stale(self, work: list[_UserWork], timer: StageTimer) -> None:
        """Replace a blob of another model version (or a corrupt one) by a replay of the user's
        stored recent items from the initial state."""
        stale: list[_UserWork] = []
        for w in work:
            assert w.read is not None
            if w.read.blob is None or w.cached:  # a cached blob is one this process committed
                continue
            reason = self._stale_reason(w.read)
            if reason is not None:
                metrics.STATE_REBUILDS_TOTAL.labels(reason.value).inc()
                log.info("rebuilding the state of user %r (%s)", w.user_id, reason.value)
                stale.append(w)
        if not stale:
            return
        with timer.stage(Stage.REBUILD):
            missing = [w.read for w in stale if w.read is not None and w.read.recent is None]
            if missing:  # a second round trip, only after a model change
                await self.repo.read_recent(missing)
            vocab = self.engine.vocab
            replays = [[vocab.encode(x) for x in (w.read.recent or []) if x in vocab]
                       for w in stale if w.read is not None]
            for w, state in zip(stale, self._replay(replays)):
                w.start_state, w.rebuilt = state, True

    def _stale_reason(self, read: UserRead) -> RebuildReason | None:
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

    def _run_model(self, work: list[_UserWork], items: list[int], n: int, exclude_seen: bool,
                   timer: StageTimer) -> dict[int, list[Recommendation]]:
        """The engine's part of a batch (no Redis, no shared mutable state of the store): the new
        states of every user and the recommendations, duplicates included."""
        recs = self._step_waves(work, items, n, exclude_seen, timer)
        self._recommend_duplicates(work, items, n, exclude_seen, recs, timer)
        return recs

    def _step_waves(self, work: list[_UserWork], items: list[int], n: int, exclude_seen: bool,
                    timer: StageTimer) -> dict[int, list[Recommendation]]:
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
            with timer.stage(Stage.MODEL):
                result = self.engine.apply([items[i] for i in indices], states, verified=True)
            self._add_engine_timings(timer, result.timings, len(rows))
            for j, (w, index) in enumerate(zip(rows, indices)):
                w.states_after.append(result.states[j])
                w.final_state = result.states[j]
                w.outcome[index] = (True, int(result.positions[j]), bool(result.chunk[j]))
            with timer.stage(Stage.TOPN):
                exclude = None
                if exclude_seen:
                    for w, index in zip(rows, indices):
                        seen[w.user_id].add(items[index])
                    exclude = [seen[w.user_id] for w in rows]
                ranked = self._to_recommendations(self.engine.top_n(result.scores, n, exclude))
                for index, ranking in zip(indices, ranked):
                    recs[index] = ranking
        return recs

    def _step_sequences(self, work: list[_UserWork], items: list[int], timer: StageTimer) -> None:
        """n = 0: every user's new events in one engine call; only the final states are kept.
        Event j of a user ends at position (start position + j + 1)."""
        rows = [w for w in work if w.to_apply]
        if not rows:
            return
        with timer.stage(Stage.MODEL):
            result = self.engine.apply_sequences([[items[i] for i in w.to_apply] for w in rows],
                                                 [w.start_state for w in rows], verified=True)
        self._add_engine_timings(timer, result.timings, len(rows))
        for w, state, end, flags in zip(rows, result.states, result.positions.tolist(),
                                        result.chunk):
            w.final_state = state
            first = end - len(w.to_apply) + 1
            for j, (index, chunk) in enumerate(zip(w.to_apply, flags.tolist())):
                w.outcome[index] = (True, first + j, chunk)

    @staticmethod
    def _add_engine_timings(timer: StageTimer, timings: dict[str, float], rows: int) -> None:
        for name, stage_seconds in timings.items():
            if name in _ENGINE_STAGES:
                timer.add(_ENGINE_STAGES[name], stage_seconds)
        metrics.ENGINE_BATCH_ROWS.observe(rows)

    def _recommend_duplicates(self, work: list[_UserWork], items: list[int], n: int,
                              exclude_seen: bool, recs: dict[int, list[Recommendation]],
                              timer: StageTimer) -> None:
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
        with timer.stage(Stage.TOPN):
            scores = self.engine.scores([state for _, state, _ in rows])
            ranked = self._to_recommendations(self.engine.top_n(
                scores, n, [exclude for _, _, exclude in rows] if exclude_seen else None))
            for (index, _, _), ranking in zip(rows, ranked):
                recs[index] = ranking

    async def _commit(self, work: list[_UserWork], events: Sequence[Event],
                      timer: StageTimer) -> dict[str, int]:
        """Compare-and-set every changed user in one round trip. Returns the users that lost,
        with the script's answer (CAS_CONFLICT or CAS_DUPLICATE)."""
        changed = [w for w in work if w.to_apply or w.rebuilt]
        if not changed:
            return {}
        writes = []
        for w in changed:
            assert w.read is not None
            final = w.committed_state
            writes.append(CasWrite(
                read=w.read, state=final, version=self.model_version,
                pos=int(self.engine.state_pos(final)),
                events=[(events[i].item_id, events[i].event_id or "") for i in w.to_apply]))
        with timer.stage(Stage.STATE_WRITE):
            codes = await self.repo.compare_and_set(writes)
        lost = {}
        for w, write, code in zip(changed, writes, codes):
            if code == CAS_COMMITTED:
                metrics.STATE_BYTES.observe(len(write.state))
                self._remember(w, write)
            else:
                lost[w.user_id] = code
        return lost

    def _remember(self, w: _UserWork, write: CasWrite) -> None:
        """Cache what a compare-and-set just committed (the recent items too when they were read)."""
        if self.cache.capacity == 0:
            return
        recent = None
        if write.read.recent is not None:
            items = write.read.recent + [item_id for item_id, _ in write.events]
            recent = tuple(items[-self.recent_cap:])
        self.cache.put(w.user_id, CachedState(write.state, write.version, str(write.pos), recent))

    # -- helpers -----------------------------------------------------------------------------------------
    def _seen_ids(self, read: UserRead | None, extra: list[int]) -> set[int]:
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
    def _count_outcomes(outcomes: Iterable[Outcome]) -> None:
        """Count events as applied (and at a chunk time) or duplicate."""
        applied = duplicates = chunks = 0
        for was_applied, _, chunk in outcomes:
            applied += was_applied
            duplicates += not was_applied
            chunks += was_applied and chunk
        if applied:
            metrics.EVENTS_APPLIED.inc(applied)
        if duplicates:
            metrics.EVENTS_DUPLICATE.inc(duplicates)
        if chunks:
            metrics.CHUNK_EVENTS_TOTAL.inc(chunks)
