"""Cluster specifics: a slot without a master (CLUSTERDOWN) is retried with a bounded back-off, then
answered 503; a batch whose users sit on every master."""
from __future__ import annotations

import asyncio

import pytest

from service.state.cluster import is_cluster, node_of
from service.state.domain import Event, StateStoreUnavailable
from service.state.keys import KeySchema
from tests.service.helpers import metric, open_store, sync_redis

pytestmark = [pytest.mark.anyio, pytest.mark.redis_modes("cluster")]

ITEMS = [str(100 + i) for i in range(1, 40)]


def slot_owner(redis_url: str, key: str):
    """(a client of the master serving `key`'s slot, the slot)."""
    import redis

    client = sync_redis(redis_url)
    try:
        slot = client.keyslot(key)
        node = client.get_node_from_key(key)
        return redis.Redis(host=node.host, port=node.port), slot
    finally:
        client.close()


async def test_a_slot_without_a_master_is_retried_then_answered_unavailable(
        make_settings, engine, redis_url, key_prefix):
    settings = make_settings()
    key = KeySchema(key_prefix).user("orphan").state
    master, slot = slot_owner(redis_url, key)
    try:
        async with open_store(settings, engine) as store:
            assert is_cluster(store.redis)
            await store.apply(Event("orphan", ITEMS[0], "e-0"))
            master.execute_command("CLUSTER", "DELSLOTS", slot)  # its master stops serving it

            async def serve_again_soon() -> None:
                await asyncio.sleep(0.12)
                master.execute_command("CLUSTER", "ADDSLOTS", slot)

            # CLUSTERDOWN "Hash slot not served": sent again after 50 and 100 ms, and then served
            restore = asyncio.create_task(serve_again_soon())
            recovered = await store.apply(Event("orphan", ITEMS[1], "e-1"))
            await restore
            assert recovered.applied and recovered.position == 2
            # not served for longer than the back-off: 503 (StateStoreUnavailable), nothing written
            master.execute_command("CLUSTER", "DELSLOTS", slot)
            with pytest.raises(StateStoreUnavailable):
                await store.apply(Event("orphan", ITEMS[2], "e-2"))
            master.execute_command("CLUSTER", "ADDSLOTS", slot)
            snap = await store.snapshot("orphan")
        assert snap.position == 2 and snap.event_ids == ["e-0", "e-1"]
    finally:
        try:
            master.execute_command("CLUSTER", "ADDSLOTS", slot)
        except Exception:  # noqa: BLE001 - already served again
            pass
        master.close()
        wait_every_slot_assigned(redis_url)


def wait_every_slot_assigned(redis_url: str, timeout: float = 15.0) -> None:
    """Until every node sees all 16384 slots assigned again (gossip), for the tests that follow."""
    import time

    client = sync_redis(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            infos = client.cluster_info(target_nodes=client.ALL_NODES)
            if all(int(info["cluster_slots_assigned"]) == 16384 for info in infos.values()):
                return
            assert time.monotonic() < deadline, infos
            time.sleep(0.05)
    finally:
        client.close()


async def test_a_batch_over_users_on_every_master_is_one_apply(make_settings, engine):
    """The users of one batch sit on all three masters: one apply call reads and commits them all
    (redis-py's cluster pipeline sends each node its part, the nodes at the same time)."""
    async with open_store(make_settings(), engine) as store:
        users = [f"spread-{i}" for i in range(30)]
        keys = KeySchema(store.keys.prefix)
        await store.ping()
        nodes = {node_of(store.redis, keys.user(u).state).name for u in users}
        assert len(nodes) == 3
        before = metric("cmnrec_batch_size_events_count")
        results = await store.apply_batch([Event(u, ITEMS[i % 39], f"{u}-0")
                                           for i, u in enumerate(users)])
        assert metric("cmnrec_batch_size_events_count") == before + 1
        assert all(r.applied and r.position == 1 for r in results)


async def test_wait_replicas_acknowledges_once_the_replica_has_the_commit(
        make_settings, engine, redis_url):
    """WAIT 1 after the commit: when apply returns, the slot's replica holds the new position."""
    import redis

    settings = make_settings(redis_wait_replicas=1, redis_wait_timeout_ms=1000)
    async with open_store(settings, engine) as store:
        results = await store.apply_batch([Event(f"w-{i}", ITEMS[i], f"w-{i}") for i in range(6)])
    assert all(r.applied for r in results)
    client = sync_redis(redis_url)
    try:
        for i in range(6):
            key = KeySchema(settings.key_prefix).user(f"w-{i}").pos
            master = client.get_node_from_key(key)
            info = client.info("replication", target_nodes=master)
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            assert replicas, info
            for replica in replicas:
                on_replica = redis.Redis(host=replica["ip"], port=int(replica["port"]))
                try:
                    on_replica.execute_command("READONLY")
                    assert on_replica.get(key) == b"1"
                finally:
                    on_replica.close()
    finally:
        client.close()
