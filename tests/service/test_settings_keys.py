"""Settings from the environment, key layout (one Cluster slot per user), worker environment."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.crc import key_slot

from service.http.runner import multiprocess_metrics, settings_environment
from service.ops.settings import Settings
from service.state.keys import KeySchema


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("CMNREC_KEY_PREFIX", "shop-a")
    monkeypatch.setenv("CMNREC_STATE_TTL_SECONDS", "3600")
    monkeypatch.setenv("CMNREC_ARTIFACT_DIR", "/models/ml")
    settings = Settings()
    assert settings.redis_url == "redis://cache:6379/2"  # REDIS_URL as-is, no prefix
    assert settings.key_prefix == "shop-a" and settings.state_ttl_seconds == 3600
    assert settings.artifact_dir == Path("/models/ml")
    monkeypatch.delenv("REDIS_URL")
    assert Settings().redis_url is None  # unset: the embedded server (serve/demo)


@pytest.mark.parametrize("field,value", [("state_ttl_seconds", -1), ("max_n", 0),
                                         ("key_prefix", "bad prefix*"), ("workers", 0),
                                         ("log_level", "loud")])
def test_settings_reject_bad_values(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_a_users_keys_share_one_cluster_slot():
    schema = KeySchema("cmnrec")
    keys = schema.user("user-42")
    assert keys.state == "cmnrec:{user-42}:state" and keys.events == "cmnrec:{user-42}:events"
    assert len({key_slot(k.encode()) for k in keys}) == 1
    slots = {key_slot(schema.user(f"user-{i}").state.encode()) for i in range(50)}
    assert len(slots) > 40  # users spread over the cluster
    assert KeySchema("test-x").user("u").pos == "test-x:{u}:pos"


def test_workers_get_the_same_settings_through_the_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("CMNREC_") or name == "REDIS_URL":
            monkeypatch.delenv(name)
    original = Settings(artifact_dir=Path("/a/b"), redis_url="redis://h:1/0", key_prefix="p",
                        max_batch_size=7, engine_threads=3, state_ttl_seconds=60)
    for name, value in settings_environment(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


def test_multiprocess_metrics_directory_lives_for_the_block(monkeypatch, tmp_path):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with multiprocess_metrics(Settings(workers=1)) as single:
        assert single is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with multiprocess_metrics(Settings(workers=2)) as directory:
        assert directory and os.path.isdir(directory)
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
    assert not os.path.exists(directory) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    chosen = tmp_path / "metrics"
    with multiprocess_metrics(Settings(workers=2, metrics_multiproc_dir=chosen)) as directory:
        assert directory == str(chosen)
    assert chosen.is_dir()  # a directory the operator chose is left in place
