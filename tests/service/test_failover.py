"""Failover on a real local Redis Cluster: SIGKILL a master under load of events with ids, its
replica cut off for the last 0.5 s before.

With CMNREC_REDIS_WAIT_REPLICAS=1 every acknowledged event survives the loss of its master and none
is applied twice; the service answers 503 (never 500) only for the users of the killed master's
slots, only until a replica serves them again in sync, and recovers by itself. (Without WAIT the
loss is measured, not asserted: bench/cluster.py.)
"""
from __future__ import annotations

import pytest

from service.ops.redis_cluster import LocalRedisCluster
from service.ops.redis_server import RedisServerNotFound
from service.ops.settings import Settings
from tests.service.failover import run_failover

pytestmark = pytest.mark.anyio


@pytest.fixture
def cluster():
    try:
        with LocalRedisCluster(node_timeout_ms=1000) as running:
            yield running
    except RedisServerNotFound as error:  # a missing binary; a failure to form fails the test
        pytest.skip(f"no local Redis Cluster: {error}")


async def test_sigkilled_master_with_wait_replicas_loses_no_acknowledged_event(
        cluster, artifacts, engine):
    settings = Settings(artifact_dir=artifacts["main"], redis_url=cluster.url,
                        key_prefix="failover", redis_wait_replicas=1,
                        redis_wait_timeout_ms=500, redis_timeout_seconds=2.0,
                        # one request per apply: with coalescing, users of the healthy masters
                        # that share a batch with a killed master's user get its 503 too (one
                        # commit pipeline per batch; README, Scaling out), which the last
                        # assertion below would count against them
                        coalesce=False)
    # the replica is cut off 0.5 s before its master dies: without WAIT the events acknowledged
    # in those 0.5 s are lost (bench/cluster.py measures it); with WAIT they never were acknowledged
    report = await run_failover(cluster, settings, engine, users=12, events_per_user=25,
                                restart_killed=True, lagging_replica_s=0.5)
    summary = report.summary()
    print(summary)
    assert set(report.statuses) <= {200, 503}, summary  # never a 500
    assert set(report.codes) <= {"state_store_unavailable"}, summary
    assert report.killed_users and report.t_promoted > report.t_kill and report.t_healed, summary
    # every event acknowledged in the end, and held exactly once, in order
    for user, ids in report.acknowledged.items():
        assert len(ids) == report.events_per_user, (user, summary)
        assert report.final_event_ids[user] == ids, user
        assert report.final_positions[user] == len(ids), user
    assert report.lost == 0 and report.doubled == 0
    # 503 only for the users whose master died, and only until their slots were served again
    assert {user for user, _ in report.unavailable} <= report.killed_users, summary
    assert all(report.t_pause <= t <= report.t_healed + 2.0 for _, t in report.unavailable), summary
