"""One Redis vs a local 3-master Redis Cluster (1 replica each), in the same run, on this machine.

Per backend (an EmbeddedRedis; a LocalRedisCluster from the same redis-server binary):
- stream worker: publish the first N MovieLens-100k events (time order) into P partitions, start one
  `cmnrec worker` (a real subprocess) and time it until every event is applied: events/s;
- HTTP: `cmnrec serve` (one uvicorn worker) driven by `drive_http` (service/streams/replay.py): M
  events, one POST /v1/events?n=0 each, C concurrent senders: events/s and request latency p50/p99;
- on the cluster, both again with CMNREC_REDIS_WAIT_REPLICAS=1 (the cost of WAIT).
Then failover runs (tests/service/failover.py: SIGKILL a master under load, events with ids, 503s
retried) with WAIT_REPLICAS 0 (how many acknowledged events were lost) and 1, with the replica in
step, and with the replica cut off for 0.5 s before the kill.

Random-weight CmnRec "small" (TSC, M=4, T=50) over the ML-100k catalogue. Writes
bench/results/cluster.json and .md.

    .venv/bin/python bench/cluster.py [--events 20000] [--http-events 3000] [--failover-runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    benchmark_dataset,
    machine_info,
    markdown_table,
    now_utc,
    save_results,
)
from bench.stream_worker import export_model  # noqa: E402
from service.ops.redis_cluster import LocalRedisCluster  # noqa: E402
from service.ops.redis_server import EmbeddedRedis, free_port  # noqa: E402
from service.state.cluster import open_sync  # noqa: E402
from service.state.keys import KeySchema  # noqa: E402
from service.streams.replay import dataset_events, drive_http, publish_replay  # noqa: E402

CMNREC = str(Path(sys.executable).parent / "cmnrec")


def applied_events(url: str, prefix: str, users: list[str]) -> int:
    client = open_sync(url)
    try:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.get(KeySchema(prefix).user(user).pos)
        return sum(int(x or 0) for x in pipe.execute())
    finally:
        client.close()


def measure_worker(url: str, artifact: Path, events: list[dict], partitions: int,
                   wait_replicas: int) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    client = open_sync(url)
    try:
        publish_replay(client, events, partitions=partitions, prefix=prefix)
    finally:
        client.close()
    users = sorted({str(e["user_id"]) for e in events})
    env = {**os.environ, "REDIS_URL": url, "CMNREC_KEY_PREFIX": prefix,
           "CMNREC_REDIS_WAIT_REPLICAS": str(wait_replicas), "CMNREC_STREAM_BLOCK_MS": "50"}
    process = subprocess.Popen([CMNREC, "worker", "--artifact", str(artifact), "--partitions",
                                str(partitions), "--metrics-port", "0", "--consumer", "bench"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = None
        while True:
            done = applied_events(url, prefix, users)
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done >= len(events):
                break
            if process.poll() is not None:
                raise RuntimeError(process.stderr.read().decode()[-2000:])
            time.sleep(0.02)
        assert first is not None
        seconds = now - first[0]
        rate = (done - first[1]) / seconds if seconds > 0 else float("nan")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()
    return {"events": len(events), "events_per_second": round(rate, 1),
            "seconds": round(seconds, 3)}


def measure_http(url: str, artifact: Path, events: list[dict], concurrency: int,
                 wait_replicas: int) -> dict[str, Any]:
    from tests.service.served import ServedProcess, left_running

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    served = ServedProcess(artifact, free_port(), env={
        "REDIS_URL": url, "CMNREC_KEY_PREFIX": prefix,
        "CMNREC_REDIS_WAIT_REPLICAS": str(wait_replicas)})
    try:
        served.wait_ready()
        asyncio.run(drive_http(served.url, events[:200], batch_size=1, concurrency=concurrency))
        report = asyncio.run(drive_http(served.url, events[200:], batch_size=1,
                                        concurrency=concurrency))
    finally:
        tree = served.stop()
    assert not left_running(tree)
    return {"events": report.events, "errors": report.errors,
            "events_per_second": round(report.events_per_second, 1),
            "latency_ms": {f"p{q}": round(report.latency_percentile(q), 2) for q in (50, 90, 99)}}


def failover_runs(artifact: Path, runs: int, wait_replicas: int,
                  lagging_replica_s: float) -> list[dict[str, Any]]:
    from model.engine import StepEngine
    from service.ops.settings import Settings
    from tests.service.failover import run_failover

    engine = StepEngine.load(artifact)
    out = []
    for _ in range(runs):
        with LocalRedisCluster() as cluster:
            settings = Settings(artifact_dir=artifact, redis_url=cluster.url, key_prefix="fo",
                                redis_wait_replicas=wait_replicas, redis_wait_timeout_ms=500,
                                redis_timeout_seconds=2.0)
            report = asyncio.run(run_failover(cluster, settings, engine, users=24,
                                              events_per_user=40,
                                              restart_killed=wait_replicas > 0,
                                              lagging_replica_s=lagging_replica_s))
        out.append(report.summary())
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="stream worker events")
    parser.add_argument("--http-events", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--failover-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cluster.json")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(1)
    dataset = benchmark_dataset("ml-100k")
    events = dataset_events(dataset)[:max(args.events, args.http_events)]
    started = now_utc()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cmnrec-bench-cluster-") as tmp:
        artifact = export_model(Path(tmp), "small", dataset)
        for backend in ("one Redis", "3-master cluster"):
            holder = EmbeddedRedis() if backend == "one Redis" else LocalRedisCluster()
            with holder as server:
                url = server.url
                for wait in ((0,) if backend == "one Redis" else (0, 1)):
                    print(f"{backend}, WAIT {wait}: worker", flush=True)
                    worker = measure_worker(url, artifact, events[:args.events], args.partitions,
                                            wait)
                    print(f"{backend}, WAIT {wait}: http", flush=True)
                    http = measure_http(url, artifact, events[:args.http_events],
                                        args.concurrency, wait)
                    rows.append({"backend": backend, "wait_replicas": wait, "worker": worker,
                                 "http": http})
                    print(rows[-1], flush=True)
        failover: dict[str, list[dict[str, Any]]] = {}
        for lag in (0.0, 0.5):
            for wait in (0, 1):
                if args.failover_runs:
                    print(f"failover, replica cut off {lag} s, WAIT {wait}", flush=True)
                    failover[f"lag {lag} s, WAIT {wait}"] = failover_runs(
                        artifact, args.failover_runs, wait, lag)
    load_after = os.getloadavg()
    payload = {"started": started, "machine": machine_info(), "load_before": load_before,
               "load_after": load_after, "model": "CmnRec small (64/128/64), TSC M=4 T=50, "
               "random weights, ML-100k catalogue",
               "args": {k: str(v) for k, v in vars(args).items()},
               "rows": rows, "failover": failover}
    table = markdown_table(
        ["backend", "WAIT replicas", "worker events/s", "HTTP events/s", "HTTP p50 ms",
         "HTTP p99 ms", "HTTP errors"],
        [[r["backend"], r["wait_replicas"], r["worker"]["events_per_second"],
          r["http"]["events_per_second"], r["http"]["latency_ms"]["p50"],
          r["http"]["latency_ms"]["p99"], r["http"]["errors"] or "none"] for r in rows])
    fo_rows = [[run["lagging_replica_s"], run["wait_replicas"], run["acknowledged"], run["lost"],
                run["doubled"], run["unavailable_answers"],
                run["promoted_after_s"], run["last_503_after_kill_s"], run["statuses"]]
               for runs in failover.values() for run in runs]
    fo_table = markdown_table(["replica cut off before the kill (s)", "WAIT replicas",
                               "acknowledged", "lost", "doubled", "503 answers",
                               "replica promoted after s", "last 503 after kill s", "statuses"],
                              fo_rows) if fo_rows else "(not run)"
    markdown = f"""# One Redis vs a local 3-master Redis Cluster ({started})

{payload['model']}. Stream worker: the first {args.events} MovieLens-100k events in time order,
{args.partitions} partitions, one `cmnrec worker`. HTTP: `cmnrec serve` (1 uvicorn worker),
{args.http_events - 200} events after 200 warm-up, one POST /v1/events?n=0 each, {args.concurrency}
concurrent senders. Every process (6 redis-servers of the cluster included) shares this machine's
{os.cpu_count()} cores with other work: load average {load_before[0]:.2f} before, {load_after[0]:.2f}
after. Command: `.venv/bin/python bench/cluster.py`.

{table}

## Failover: SIGKILL one master under load (24 users x 40 events with ids, 503s retried)

"Replica cut off": the master's replica is paused (SIGSTOP) and its replication connection closed
that long before the master is SIGKILLed, then resumed: what a replica that is behind looks like.
Without it, the replica on this machine has every acknowledged write by the time it takes over.
With WAIT 1 the killed node is restarted (it rejoins as the new master's replica): until then
WAIT 1 cannot be met for its slots, which answer 503.

{fo_table}
"""
    json_path, md_path = save_results(args.out, payload, markdown)
    print(markdown)
    print(f"saved {json_path} and {md_path}")


if __name__ == "__main__":
    main()
