"""`cmnrec serve` for real: two uvicorn workers, merged metrics, 500 concurrent events of one user
applied exactly once, torch-free serving, and a shutdown that leaves nothing running."""
from __future__ import annotations

import asyncio
import glob
import os
import re
import uuid

import httpx
import pytest

from model.engine import StepEngine
from service.ops.redis_server import free_port
from service.ops.settings import Settings
from tests.conftest import delete_prefix
from tests.service.helpers import open_store, replay
from tests.service.served import ServedProcess, descendants, left_running

ITEMS = [str(100 + i) for i in range(1, 40)]


@pytest.fixture(scope="module")
def served(artifacts, redis_url):
    prefix = f"test-served-{uuid.uuid4().hex[:8]}"
    process = ServedProcess(artifacts["main"], free_port(), workers=2,
                            env={"REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": prefix,
                                 "CMNREC_CAS_RETRY_LIMIT": "1000"})
    process.wait_ready()
    yield process, prefix
    process.stop()
    delete_prefix(redis_url, prefix)
    log = process.output()
    assert "unhandled error" not in log and "Traceback" not in log, log  # no 500 in its log


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name}{labels}")


def multiproc_dir_of(pid: int) -> str | None:
    with open(f"/proc/{pid}/environ", "rb") as env:
        for entry in env.read().split(b"\0"):
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return entry.split(b"=", 1)[1].decode()
    return None


def test_metrics_are_merged_over_the_workers(served):
    process, _ = served
    workers = [pid for pid in descendants(process.process.pid)
               if multiproc_dir_of(pid) is not None]
    assert len(workers) >= 2, "expected two uvicorn workers in multiprocess mode"
    directory = multiproc_dir_of(workers[0])
    assert directory and all(multiproc_dir_of(pid) == directory for pid in workers)

    async def send_all() -> None:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            responses = await asyncio.gather(*(
                client.post("/v1/events?n=0", json={"user_id": f"metrics-{i}",
                                                    "item_id": ITEMS[i % 39],
                                                    "event_id": f"m-{i}"})
                for i in range(40)))
        assert all(r.status_code == 200 for r in responses)

    asyncio.run(send_all())
    pids_with_files = {re.search(r"_(\d+)\.db$", path).group(1)  # type: ignore[union-attr]
                       for path in glob.glob(os.path.join(directory, "*.db"))}
    assert len(pids_with_files) >= 2
    for _ in range(4):  # whichever worker answers the scrape, it reports the sum over workers
        text = httpx.get(f"{process.url}/metrics").text
        assert sample(text, "cmnrec_events_total", outcome="applied") == 40
        assert sample(text, "cmnrec_request_latency_seconds_count", method="POST",
                      route="/v1/events") == 40


@pytest.mark.redis_modes("system", "cluster")
def test_500_events_of_one_user_from_50_clients_apply_exactly_once(served, artifacts,
                                                                   redis_url):
    process, prefix = served
    user, total, clients = "hot-user", 500, 50
    events = [{"user_id": user, "item_id": ITEMS[(7 * k) % 39], "event_id": f"ev-{k}"}
              for k in range(total)]

    async def client_task(client: httpx.AsyncClient, mine: list[dict]) -> list[dict]:
        answers = []
        for event in mine:
            for _ in range(20):  # a 409 (lost too many races) is retried with the same event id
                response = await client.post("/v1/events?n=0", json=event)
                if response.status_code != 409:
                    break
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers

    async def run() -> list[dict]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=process.url, timeout=60, limits=limits) as client:
            shares = [events[i::clients] for i in range(clients)]
            results = await asyncio.gather(*(client_task(client, s) for s in shares))
        return [answer for answers in results for answer in answers]

    answers = asyncio.run(run())
    assert len(answers) == total and all(a["applied"] for a in answers)
    assert sorted(a["position"] for a in answers) == list(range(1, total + 1))

    engine = StepEngine.load(artifacts["main"])
    settings = Settings(redis_url=redis_url, key_prefix=prefix)

    async def stored():
        async with open_store(settings, engine) as store:
            return await store.snapshot(user)

    snap = asyncio.run(stored())
    assert snap.position == total
    assert sorted(snap.event_ids) == sorted(e["event_id"] for e in events)  # each exactly once
    by_position = {a["position"]: a["item_id"] for a in answers}
    assert snap.recent_items == [by_position[p] for p in range(1, total + 1)]
    assert snap.state == replay(engine, snap.recent_items)  # the committed order, offline


def test_serving_needs_no_torch(artifacts, redis_url):
    prefix = f"test-torchfree-{uuid.uuid4().hex[:8]}"
    process = ServedProcess(artifacts["main"], free_port(), workers=1, block_torch=True,
                            env={"REDIS_URL": redis_url, "CMNREC_KEY_PREFIX": prefix})
    try:
        process.wait_ready()
        response = httpx.post(f"{process.url}/v1/events?n=3",
                              json={"user_id": "u", "item_id": ITEMS[0], "event_id": "e0"})
        recs = httpx.get(f"{process.url}/v1/users/u/recommendations?n=3")
    finally:
        process.stop()
        delete_prefix(redis_url, prefix)
    assert response.status_code == 200, response.text
    assert response.json()["position"] == 1 and len(response.json()["recommendations"]) == 3
    assert recs.json()["source"] == "model"
    assert process.process.returncode in (0, -15, 143)


def test_sigterm_stops_every_worker_and_cleans_up(served):
    process, _ = served
    workers = [pid for pid in descendants(process.process.pid)
               if multiproc_dir_of(pid) is not None]
    directory = multiproc_dir_of(workers[0])
    tree = process.stop()
    assert tree and not left_running(tree)
    assert directory and not os.path.exists(directory)  # the metrics directory is removed


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_embedded_redis_and_workers_stop_with_the_command(artifacts, sig):
    import signal

    env = {k: "" for k in ("REDIS_URL", "CMNREC_REDIS_URL")}
    process = ServedProcess(artifacts["main"], free_port(), workers=2, env=env)
    try:
        process.wait_ready()
        assert httpx.post(f"{process.url}/v1/events",
                          json={"user_id": "u", "item_id": ITEMS[0],
                                "event_id": "e0"}).status_code == 200
        tree = descendants(process.process.pid)
        redis_pids = [pid for pid in tree
                      if "redis-server" in open(f"/proc/{pid}/cmdline").read()]
        assert len(redis_pids) == 1
    finally:
        tree = process.stop(getattr(signal, sig))
    assert not left_running(tree)
