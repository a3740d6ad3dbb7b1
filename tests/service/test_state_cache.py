"""The per-process state cache (service/state/cache.py) and the compare-and-set's header check.

Two StateStore instances stand for two processes, as in test_store.py: separate locks, separate
caches, one Redis. A cache entry is only a guess; the compare-and-set decides.
"""
from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from service.state import lua
from service.state.cache import CachedState, StateCache
from service.state.domain import Event
from service.state.keys import KeySchema
from tests.service.helpers import metric, open_store, replay

pytestmark = pytest.mark.anyio

ITEMS = [str(100 + i) for i in (3, 7, 1, 9, 12, 5, 30, 2, 8, 21, 4, 17)]


def cache_counts() -> dict[str, float]:
    return {result: metric("cmnrec_state_cache_total", result=result)
            for result in ("hit", "stale", "miss")}


def delta(before: dict[str, float]) -> dict[str, float]:
    after = cache_counts()
    return {k: after[k] - before[k] for k in after}


def test_cache_is_a_bounded_lru():
    cache = StateCache(2)
    entry = CachedState(b"x", "v", "1", None)
    cache.put("a", entry)
    cache.put("b", entry)
    assert cache.get("a") is entry  # a is now the most recent
    cache.put("c", entry)
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2
    off = StateCache(0)
    off.put("a", entry)
    assert off.get("a") is None and len(off) == 0
    with pytest.raises(ValueError):
        StateCache(-1)


async def test_a_user_committed_here_is_not_read_again(make_settings, engine):
    before = cache_counts()
    async with open_store(make_settings(), engine) as store:
        results = [await store.apply(Event("ann", item, f"a-{k}"), n=3)
                   for k, item in enumerate(ITEMS[:6])]
        snap = await store.snapshot("ann")
    counts = delta(before)
    assert counts == {"hit": 5, "stale": 0, "miss": 1}  # read once, then straight to the CAS
    assert all("state_read" not in r.timings for r in results[1:])
    assert [r.position for r in results] == list(range(1, 7))
    assert snap.state == replay(engine, ITEMS[:6]) and snap.recent_items == ITEMS[:6]


async def test_a_stale_cache_never_commits_with_two_processes(make_settings, engine):
    """Process one caches ben's state; process two commits an event; process one's next commit is
    refused, and it reads, steps and commits on top of process two's event."""
    settings = make_settings()
    before, conflicts = cache_counts(), metric("cmnrec_cas_conflicts_total")
    async with open_store(settings, engine) as one, open_store(settings, engine) as two:
        await one.apply(Event("ben", ITEMS[0], "b-0"))
        await one.apply(Event("ben", ITEMS[1], "b-1"))  # one's cache: ben at pos 2
        await two.apply(Event("ben", ITEMS[2], "b-2"))  # two read ben: pos 3
        stale = await one.apply(Event("ben", ITEMS[3], "b-3"), n=2)
        again = await one.apply(Event("ben", ITEMS[4], "b-4"))  # fresh again: a hit
        repeated = await two.apply(Event("ben", ITEMS[5], "b-3"))  # two's cache is stale now
        snap = await one.snapshot("ben")
    counts = delta(before)
    assert counts["stale"] == 2 and counts["hit"] == 2
    assert metric("cmnrec_cas_conflicts_total") == conflicts + 2
    assert (stale.position, again.position) == (4, 5) and stale.applied and again.applied
    assert not repeated.applied and repeated.position == 5  # b-3 known: a no-op
    assert snap.recent_items == ITEMS[:5] and snap.position == 5
    assert snap.state == replay(engine, ITEMS[:5])  # nothing committed from a stale state


async def test_racing_processes_with_caches_apply_every_event_exactly_once(make_settings, engine):
    settings = make_settings(cas_retry_limit=1000)
    async with open_store(settings, engine) as one, open_store(settings, engine) as two:
        events = [Event(f"r{i % 3}", ITEMS[i % len(ITEMS)], event_id=f"e-{i}") for i in range(60)]
        # every event sent twice, once by each process, in bursts that keep both caches busy
        tasks = [(one if i % 2 else two).apply(e, n=1) for i, e in enumerate(events)]
        tasks += [(two if i % 2 else one).apply(e) for i, e in enumerate(events)]
        results = await asyncio.gather(*tasks)
        snaps = [await one.snapshot(f"r{u}") for u in range(3)]
    assert sum(r.applied for r in results) == 60
    for u, snap in enumerate(snaps):
        assert snap.position == 20
        assert sorted(snap.event_ids) == sorted(f"e-{i}" for i in range(u, 60, 3))
        assert snap.state == replay(engine, snap.recent_items)  # in the committed order


async def test_a_cached_user_deleted_elsewhere_starts_afresh(make_settings, engine):
    settings = make_settings()
    async with open_store(settings, engine) as one, open_store(settings, engine) as two:
        for item in ITEMS[:3]:
            await one.apply(Event("cy", item))
        assert await two.delete_user("cy")
        result = await one.apply(Event("cy", ITEMS[3]))
        snap = await one.snapshot("cy")
    assert result.position == 1 and snap.recent_items == [ITEMS[3]]
    assert snap.state == replay(engine, ITEMS[3:4])


async def test_exclude_seen_reads_until_the_cache_holds_the_recent_items(make_settings, engine):
    before = cache_counts()
    async with open_store(make_settings(), engine) as store:
        await store.apply(Event("di", ITEMS[0]))  # cached without the recent items
        first = await store.apply(Event("di", ITEMS[1]), n=40, exclude_seen=True)  # a miss
        second = await store.apply(Event("di", ITEMS[2]), n=40, exclude_seen=True)  # a hit
    assert delta(before) == {"hit": 1, "stale": 0, "miss": 2}
    assert not {ITEMS[0], ITEMS[1]} & {r.item_id for r in first.recommendations}
    assert not set(ITEMS[:3]) & {r.item_id for r in second.recommendations}


async def test_cas_header_check_refuses_a_changed_state_with_the_same_pos_and_version(
        make_settings, engine, redis_url):
    """Another valid state at the same pos and version (other items): its crc32 differs, so a
    commit based on the old blob is refused, by the script and through a hot cache."""
    settings = make_settings()
    keys = KeySchema(settings.key_prefix).user("eve")
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with open_store(settings, engine) as store:
            for item in ITEMS[:3]:
                await store.apply(Event("eve", item))
            old = await client.get(keys.state)
            changed = replay(engine, ITEMS[5:8])  # also pos 3, same model version
            assert old[lua.BLOB_TOKEN] != changed[lua.BLOB_TOKEN]
            await client.set(keys.state, changed)
            script = client.register_script(lua.CAS.source)
            refused = await script(keys=list(keys), args=[
                "3", engine.version, old[lua.BLOB_TOKEN], b"new", engine.version, 4, 0, 1000, 1000,
                ITEMS[3], "x"])
            assert refused[0] == lua.CAS_CONFLICT and await client.get(keys.state) == changed
            result = await store.apply(Event("eve", ITEMS[3]))  # the cache holds `old`: refused
            stored = await client.get(keys.state)
    finally:
        await client.aclose()
    assert result.position == 4
    assert stored == engine.apply([engine.vocab.encode(ITEMS[3])], [changed]).states[0]


async def test_hot_cache_never_feeds_a_corrupt_blob(make_settings, engine, redis_url):
    """A payload corrupted in Redis with its header intact passes the header check; the process
    that committed the blob steps its own cached copy, so the corrupt bytes are overwritten by
    the correct continuation and never reach the model."""
    settings = make_settings()
    key = KeySchema(settings.key_prefix).user("fay").state
    async with open_store(settings, engine) as store:
        for item in ITEMS[:4]:
            await store.apply(Event("fay", item))
        client = aioredis.Redis.from_url(redis_url)
        try:
            blob = bytearray(await client.get(key))
            blob[-3] ^= 0xFF
            await client.set(key, bytes(blob))
        finally:
            await client.aclose()
        result = await store.apply(Event("fay", ITEMS[4]))
        snap = await store.snapshot("fay")
    assert result.position == 5 and not result.rebuilt
    assert snap.state == replay(engine, ITEMS[:5])


async def test_cache_off_reads_every_time(make_settings, engine):
    before = cache_counts()
    async with open_store(make_settings(state_cache_users=0), engine) as store:
        results = [await store.apply(Event("gus", item)) for item in ITEMS[:3]]
    assert delta(before) == {"hit": 0, "stale": 0, "miss": 0}
    assert all("state_read" in r.timings for r in results)


def test_cache_default_depends_on_the_worker_count(redis_url):
    from service.ops.settings import Settings

    assert Settings(redis_url=redis_url).cache_users == 4096  # one process: on
    assert Settings(redis_url=redis_url, workers=2).cache_users == 0  # users shared at random
    assert Settings(redis_url=redis_url, workers=2, state_cache_users=10).cache_users == 10
    assert Settings(redis_url=redis_url, state_cache_users=0).cache_users == 0


async def test_a_stale_cache_never_commits_across_real_processes(make_settings, engine, artifacts,
                                                                 redis_url):
    """The same story as above with a second OS process: it caches the user, this process commits
    behind its back, and its next commit is refused by Redis, re-read and applied on top."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    settings = make_settings()
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.service.cache_process", str(artifacts["main"]), redis_url,
         settings.key_prefix], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(line: str) -> dict:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(line + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    try:
        assert json.loads(child.stdout.readline()) == {"ready": True}  # type: ignore[union-attr]
        first = ask(f"hal {ITEMS[0]} h-0")
        second = ask(f"hal {ITEMS[1]} h-1")  # a hit: straight to the compare-and-set
        async with open_store(settings, engine) as here:
            mine = await here.apply(Event("hal", ITEMS[2], "h-2"))  # behind the child's back
        third = ask(f"hal {ITEMS[3]} h-3")  # the child's entry is stale: refused, read, applied
        again = ask(f"hal {ITEMS[3]} h-2")  # an id this process committed: a no-op
        child.stdin.close()  # type: ignore[union-attr]
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    async with open_store(settings, engine) as here:
        snap = await here.snapshot("hal")
    assert [first["position"], second["position"], mine.position, third["position"]] == [1, 2, 3, 4]
    assert (second["hit"], second["stale"]) == (1, 0)
    assert (third["hit"], third["stale"]) == (1, 1)
    assert not again["applied"] and again["position"] == 4
    assert snap.recent_items == ITEMS[:4] and snap.event_ids == ["h-0", "h-1", "h-2", "h-3"]
    assert snap.state == replay(engine, ITEMS[:4])
