"""A master failover under load, shared by tests/service/test_failover.py and bench/cluster.py.

`run_failover`: the app (in-process, its real lifespan) on a LocalRedisCluster; `users` lanes each
POST `events_per_user` events with ids, in order, one at a time, retrying a 503 with the same event
id until it is answered 200. Once a third of the events are acknowledged, the master of the first
user's slot is SIGKILLed; its replica takes over (cluster-node-timeout); with `restart_killed` the
killed node is started again and rejoins as a replica. With `lagging_replica_s`, the master's
replica is paused (SIGSTOP) and its replication connection closed that long before the kill, and
resumed right after it: the writes of those seconds reached the master only (a replica cut off or
behind). Returns what was answered when, and what the cluster holds in the end.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from service.ops.redis_cluster import LocalRedisCluster
from service.state.keys import KeySchema
from tests.service.helpers import serving, sync_redis

ITEMS = [str(100 + i) for i in range(1, 40)]


@dataclass
class FailoverReport:
    users: int
    events_per_user: int
    wait_replicas: int
    lagging_replica_s: float = 0.0
    statuses: Counter = field(default_factory=Counter)  # HTTP status -> answers
    codes: Counter = field(default_factory=Counter)  # error code -> answers
    unavailable: list[tuple[str, float]] = field(default_factory=list)  # (user, t) of each 503
    messages: Counter = field(default_factory=Counter)  # (user on the killed master?, message)
    acknowledged: dict[str, list[str]] = field(default_factory=dict)  # user -> event ids, in order
    killed_users: set[str] = field(default_factory=set)  # users whose slot the killed master held
    t_pause: float = 0.0  # the replica paused (== t_kill without a lagging replica)
    t_kill: float = 0.0
    t_promoted: float = 0.0  # a replica serves the slot
    t_healed: float = 0.0  # every node healthy again (the killed one back as a replica), or 0
    final_positions: dict[str, int] = field(default_factory=dict)
    final_event_ids: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        """Acknowledged events the cluster does not hold in the end."""
        return sum(len(set(ids) - set(self.final_event_ids.get(user, [])))
                   for user, ids in self.acknowledged.items())

    @property
    def doubled(self) -> int:
        """Events held more than once, or positions beyond the events held."""
        extra = 0
        for user, ids in self.final_event_ids.items():
            extra += len(ids) - len(set(ids))
            extra += max(0, self.final_positions.get(user, 0) - len(ids))
        return extra

    def summary(self) -> dict[str, Any]:
        return {"users": self.users, "events_per_user": self.events_per_user,
                "wait_replicas": self.wait_replicas,
                "lagging_replica_s": self.lagging_replica_s, "statuses": dict(self.statuses),
                "error_codes": dict(self.codes), "acknowledged": sum(
                    len(v) for v in self.acknowledged.values()),
                "lost": self.lost, "doubled": self.doubled,
                "users_on_killed_master": len(self.killed_users),
                "unavailable_answers": len(self.unavailable),
                "promoted_after_s": round(self.t_promoted - self.t_kill, 3),
                "healed_after_s": round(self.t_healed - self.t_kill, 3) if self.t_healed else None,
                "last_503_after_kill_s": round(max(t for _, t in self.unavailable) - self.t_kill, 3)
                if self.unavailable else None, "seconds": round(self.seconds, 3)}


async def _watch_failover(cluster: LocalRedisCluster, key: str, killed_port: int, restart: bool,
                          report: FailoverReport) -> None:
    """Note when a replica serves `key`'s slot; then (restart) start the killed node again.

    Runs on the event loop's thread: a node started from another thread would get SIGTERM when
    that thread ends (PR_SET_PDEATHSIG, service/ops/redis_server.py)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            port = await asyncio.to_thread(cluster.master_port_of, key)
            if port != killed_port and await asyncio.to_thread(cluster.health_problem) is None:
                break
        except Exception:  # noqa: BLE001 - nodes disagree for a moment during the election
            pass
        await asyncio.sleep(0.05)
    report.t_promoted = time.monotonic()
    if restart:
        cluster.restart_node(killed_port)
        while await asyncio.to_thread(cluster.health_problem) is not None:
            assert time.monotonic() < deadline + 60, "the cluster did not heal"
            await asyncio.sleep(0.05)
        report.t_healed = time.monotonic()


async def run_failover(cluster: LocalRedisCluster, settings: Any, engine: Any, *, users: int,
                       events_per_user: int, restart_killed: bool,
                       lagging_replica_s: float = 0.0, deadline_s: float = 90.0) -> FailoverReport:
    report = FailoverReport(users, events_per_user, settings.redis_wait_replicas,
                            lagging_replica_s=lagging_replica_s)
    names = [f"fo-{u}" for u in range(users)]
    keys = KeySchema(settings.key_prefix)
    total = users * events_per_user
    acked = 0
    kill_at = total // 3
    killed = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    started = time.monotonic()

    async def kill() -> None:
        nonlocal watcher
        port = cluster.master_port_of(keys.user(names[0]).state)
        report.killed_users = {u for u in names
                               if cluster.master_port_of(keys.user(u).state) == port}
        replicas = cluster.replica_ports_of(port) if lagging_replica_s > 0 else []
        report.t_pause = time.monotonic()
        for replica in replicas:  # it stops taking the master's writes, which go on
            cluster.pause_node(replica)
        if replicas:
            cluster.drop_replica_links(port)
        await asyncio.sleep(lagging_replica_s)
        report.t_kill = time.monotonic()
        cluster.kill_node(port)
        for replica in replicas:
            cluster.pause_node(replica, paused=False)
        watcher = asyncio.create_task(_watch_failover(
            cluster, keys.user(names[0]).state, port, restart_killed, report))

    async with serving(settings, engine) as client:
        async def lane(user: str) -> None:
            nonlocal acked
            report.acknowledged[user] = []
            for k in range(events_per_user):
                event = {"user_id": user, "item_id": ITEMS[(7 * k + len(user)) % len(ITEMS)],
                         "event_id": f"{user}:{k}"}
                while True:
                    response = await client.post("/v1/events?n=0", json=event)
                    report.statuses[response.status_code] += 1
                    if response.status_code == 200:
                        break
                    report.codes[response.json()["error"]["code"]] += 1
                    if response.status_code != 503:
                        return  # not retried: the test fails on it
                    report.unavailable.append((user, time.monotonic()))
                    report.messages[(user in report.killed_users,
                                     response.json()["error"]["message"][:90])] += 1
                    if time.monotonic() - started > deadline_s:
                        return
                    await asyncio.sleep(0.05)
                report.acknowledged[user].append(event["event_id"])
                acked += 1
                if acked >= kill_at and not killed.is_set():
                    killed.set()
                    await kill()

        try:
            await asyncio.gather(*(lane(u) for u in names))
        finally:
            if watcher is not None:
                await watcher
    report.seconds = time.monotonic() - started
    client = sync_redis(cluster.url)
    try:
        for user in names:
            k = keys.user(user)
            report.final_positions[user] = int(client.get(k.pos) or 0)
            report.final_event_ids[user] = [x.decode() for x in client.lrange(k.events, 0, -1)]
    finally:
        client.close()
    return report
