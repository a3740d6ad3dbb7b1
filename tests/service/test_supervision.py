"""Issue 12, probes 4 and 5: no orphan workers after `kill -9` of `cmnrec serve`; one bad stream key
(or an entry in the wrong partition) is isolated and reported, the other partitions keep flowing."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
import uuid

import httpx
import pytest
import redis

from service.ops.redis_server import free_port
from service.state.connection import open_redis
from service.state.keys import KeySchema
from service.streams.health import WorkerHealthServer, loop_status
from service.streams.publish import publish_events
from service.streams.records import partition_of
from tests.conftest import delete_prefix
from tests.service.helpers import metric
from tests.service.served import ServedProcess, alive, descendants, left_running
from tests.service.test_worker import (
    PARTITIONS,
    _drained,
    check_states,
    items_by_user,
    make_worker,
    run_until,
)

pytestmark = pytest.mark.anyio

ITEM = "101"


# -- probe 4 -----------------------------------------------------------------------------------------------
def test_kill_9_of_the_serve_parent_leaves_no_orphan_and_the_port_is_free(artifacts, redis_url):
    prefix = f"test-orphans-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {"REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": prefix}
    first = ServedProcess(artifacts["main"], port, workers=2, env=env)
    second = None
    try:
        first.wait_ready()
        workers = descendants(first.process.pid)
        assert len(workers) >= 2
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        assert not left_running(workers, timeout=20), "uvicorn workers outlived their parent"
        second = ServedProcess(artifacts["main"], port, workers=1, env=env)  # same port
        second.wait_ready()
        answer = httpx.post(f"{second.url}/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                             "event_id": "e"}, timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        for pid in descendants(first.process.pid) if alive(first.process.pid) else ():
            os.kill(pid, signal.SIGKILL)
        if second is not None:
            second.stop()
        delete_prefix(redis_url, prefix)


# -- probe 5 -----------------------------------------------------------------------------------------------
def _user_in(partition: int, taken: set[str]) -> str:
    k = 0
    while True:
        user = f"user-{k}"
        if partition_of(user, PARTITIONS) == partition and user not in taken:
            return user
        k += 1


async def test_a_wrong_type_stream_key_sets_its_partition_aside_and_the_others_flow(
        make_settings, engine, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    sync = redis.Redis.from_url(redis_url)
    users: dict[int, str] = {}
    for p in range(PARTITIONS):
        users[p] = _user_in(p, set(users.values()))
    events = [{"user_id": users[p], "item_id": ITEM, "event_id": f"e{p}-{k}"}
              for k in range(5) for p in range(PARTITIONS) if p != 1]
    sync.set(keys.stream(1), "x")  # the probe: SET cmnrec:events:{1} x
    publish_events(sync, events, partitions=PARTITIONS, prefix=key_prefix)
    client = open_redis(redis_url, settings)
    failures = metric("cmnrec_worker_batch_failures_total")
    try:
        worker = make_worker(client, settings, engine, "w-broken")
        health = WorkerHealthServer("127.0.0.1", 0, loop_status(worker, max_loop_age_s=10))

        async def others_applied() -> bool:
            return worker.totals.applied == len(events)

        try:
            await run_until([worker], others_applied, timeout=60)
            with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz") as response:
                status = response.status, json.loads(response.read())
        finally:
            health.close()
        assert worker.reader.broken == {1: "string"}
        assert status[0] == 200 and status[1]["broken_partitions"] == {"1": "string"}
        assert 'cmnrec_worker_broken_partitions{partition="1"} 1.0' in metric_text()
        await check_states(worker.store, engine, items_by_user(events))
        # repaired: the partition is taken back and its events flow
        sync.delete(keys.stream(1))
        late = [{"user_id": users[1], "item_id": ITEM, "event_id": "late"}]
        publish_events(sync, late, partitions=PARTITIONS, prefix=key_prefix)
        worker2 = make_worker(client, settings, engine, "w-broken")
        worker2.reader.broken = dict(worker.reader.broken)
        await run_until([worker2], lambda: _drained(client, keys, settings), timeout=60)
        assert worker2.reader.broken == {}
        assert (await worker2.store.snapshot(users[1])).position == 1
    finally:
        await client.aclose()
        sync.close()
    # a broken partition is isolated, not a failing batch loop
    assert metric("cmnrec_worker_batch_failures_total") - failures <= 1


def metric_text() -> str:
    from service.ops import metrics

    return metrics.render_latest()[0].decode()


async def test_a_stalled_loop_fails_the_worker_health_check(make_settings, engine, redis_url):
    settings = make_settings(stream_partitions=PARTITIONS)
    client = open_redis(redis_url, settings)
    try:
        worker = make_worker(client, settings, engine, "w-stalled")
        health = WorkerHealthServer("127.0.0.1", 0, loop_status(worker, max_loop_age_s=0.2))
        try:
            await asyncio.sleep(0.5)  # the loop never ran
            with pytest.raises(urllib.error.HTTPError) as stalled:
                urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz")
            worker._mark_loop()
            with urllib.request.urlopen(f"http://127.0.0.1:{health.port}/healthz") as response:
                assert response.status == 200
        finally:
            health.close()
    finally:
        await client.aclose()
    assert stalled.value.code == 503


async def test_an_entry_in_the_wrong_partition_and_a_corrupt_user_are_dead_lettered(
        make_settings, engine, redis_url, key_prefix):
    settings = make_settings(stream_partitions=PARTITIONS)
    keys = KeySchema(key_prefix)
    sync = redis.Redis.from_url(redis_url)
    good = [{"user_id": f"g{i}", "item_id": ITEM, "event_id": f"g{i}"} for i in range(6)]
    publish_events(sync, good, partitions=PARTITIONS, prefix=key_prefix)
    wrong_user = "misplaced"
    wrong = (partition_of(wrong_user, PARTITIONS) + 1) % PARTITIONS
    sync.xadd(keys.stream(wrong), {"user_id": wrong_user, "item_id": ITEM, "event_id": "w"})
    sync.set(f"{key_prefix}:{{corrupt}}:events", "not a list")
    publish_events(sync, [{"user_id": "corrupt", "item_id": ITEM, "event_id": "c"}],
                   partitions=PARTITIONS, prefix=key_prefix)
    client = open_redis(redis_url, settings)
    try:
        worker = make_worker(client, settings, engine, "w-dead")
        await run_until([worker], lambda: _drained(client, keys, settings), timeout=60)
        dead = {}
        for p in range(PARTITIONS):
            for _, fields in sync.xrange(keys.dead_letter(p)):
                record = {k.decode(): v.decode() for k, v in fields.items()}
                dead[record["user_id"]] = (record["dead.reason"], p)
        assert dead == {wrong_user: ("wrong_partition", wrong),
                        "corrupt": ("state_corrupt", partition_of("corrupt", PARTITIONS))}
        # The corrupt user is found by the compare-and-set, which committed the others in the same
        # round trip: their second pass finds their event ids (counted as duplicates), so every
        # good event is applied exactly once.
        assert worker.totals.applied + worker.totals.duplicates == len(good)
        for event in good:
            snap = await worker.store.snapshot(event["user_id"])
            assert (snap.position, snap.event_ids) == (1, [event["event_id"]])
        assert (await worker.store.snapshot(wrong_user)).position is None  # not applied
    finally:
        await client.aclose()
        sync.close()


async def test_the_worker_health_check_fails_while_redis_is_down(make_settings, engine):
    from service.ops.redis_server import EmbeddedRedis

    def healthz(port: int) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    with EmbeddedRedis() as server:
        settings = make_settings(redis_url=server.url, stream_partitions=PARTITIONS,
                                 redis_timeout_seconds=0.5)
        client = open_redis(server.url, settings)
        worker = make_worker(client, settings, engine, "w-down")
        health = WorkerHealthServer("127.0.0.1", 0, loop_status(worker, max_loop_age_s=1.0))
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            await asyncio.sleep(0.5)
            up = healthz(health.port)
            server.stop()
            await asyncio.sleep(2.0)
            down = healthz(health.port)
        finally:
            stop.set()
            await task
            health.close()
            await client.aclose()
    assert (up, down) == (200, 503)
    assert worker.totals.failed_batches == 0  # no batch was in flight: the reads failed
