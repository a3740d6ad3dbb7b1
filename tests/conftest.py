"""Shared fixtures: a real Redis server for the whole session.

REDIS_URL set: the tests use that server (each test under its own key prefix, keys deleted after).
Unset: an embedded redis-server (service/ops/redis_server.py) runs on a free port for the session and
is stopped at the end. Never a fake Redis.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from service.ops.redis_server import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis server."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A fresh key prefix for one test; every key under it is deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    delete_prefix(redis_url, prefix)


def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN, never KEYS). Returns how many."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def movielens() -> Any:
    """The real MovieLens-100k data set (read from the cached recbole wheel)."""
    from data.loaders import load_dataset

    return load_dataset("ml-100k")
