"""Throughput of one stream worker (`cmnrec worker`, a real subprocess) on embedded Redis.

For each model size: export a random-weight CmnRec (TSC, M=4, T=50) over the MovieLens-100k catalogue
(I=1683), publish the first N MovieLens-100k events in time order into P partitions, start one worker
on that backlog and time it from its first commit until every entry is acknowledged. Then, at a steady
publishing rate of half that throughput, the mean end-to-end lag (backlog / rate, Little's law, from
XINFO GROUPS lag + pending sampled every 20 ms). Batch latency and size come from the worker's own
/metrics. Writes bench/results/stream_worker.json and .md.

    .venv/bin/python bench/stream_worker.py [--events 20000] [--sizes tiny,small,paper]
                                            [--orders time,interleaved] [--workers 1]
    .venv/bin/python bench/stream_worker.py --sizes paper --partitions 12 --workers 4 \
        --events 60000 --out bench/results/stream_worker_w4.json   # processes share the partitions
    .venv/bin/python bench/stream_worker.py --sizes paper --partitions 12 --events 100000 \
        --batch-sizes 1024,4096 --workers 1,2 --rounds 3 --out bench/results/stream_worker_sweep.json

With several batch sizes, worker counts or rounds, every combination runs once per round, in turn
(so a change of the machine's speed hits each alike), and a second table gives the median and
range over the rounds. On this shared 2-core machine the same configuration's events/s moves by
+-25% from one run to the next: rank configurations on the medians only.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    DIMS,
    RESULTS_DIR,
    benchmark_dataset,
    machine_info,
    markdown_table,
    now_utc,
    parse_ints,
    save_results,
)
from service.ops.redis_server import EmbeddedRedis, free_port  # noqa: E402
from service.ops.settings import Settings  # noqa: E402
from service.state.keys import KeySchema
from service.streams.publish import publish_events  # noqa: E402
from service.streams.replay import dataset_events  # noqa: E402

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 16, "hidden_dim": 32, "mem_width": 16, "attn_dim": 16, "read_heads": 1},
    "small": DIMS["small"],
    "paper": DIMS["paper"],  # k=128, H=256, W=256, b=64, R=1
}
GROUP = "cmnrec-workers"


def export_model(root: Path, size: str, dataset: Any) -> Path:
    """A random-weight CmnRec export over the data set's catalogue (throughput needs no training)."""
    import torch

    from model.config import ModelConfig
    from model.network import build_model
    from training.checkpoint import save_run
    from training.export_run import export_run

    config = ModelConfig(num_items=dataset.num_items, model="cmnrec", rule="tsc", block_len=50,
                         slots=4, **SIZES[size])
    torch.manual_seed(0)
    run_dir = save_run(root / "runs" / size, build_model(config), dataset.vocab,
                       dataset.item_counts(), {"benchmark": "stream_worker"}).parent
    return Path(export_run(run_dir, root / "artifacts" / size))


def interleaved_events(dataset: Any, limit: int) -> list[dict]:
    """Every user active at once: users take turns, one event each, each user's events in order.

    MovieLens timestamps are rating-entry times: one user rates dozens of films in a burst, so in
    time order a batch holds few users with many events each, and a user's events must be stepped one
    after the other (one engine call per event of the busiest user). This order is the other extreme.
    """
    per_user = {}
    for event in dataset_events(dataset):
        per_user.setdefault(event["user_id"], []).append(event)
    queues = list(per_user.values())
    out: list[dict] = []
    turn = 0
    while len(out) < limit and any(queues):
        for queue in queues:
            if turn < len(queue):
                out.append(queue[turn])
                if len(out) == limit:
                    break
        turn += 1
    return out


def backlog(client: redis.Redis, keys: KeySchema, partitions: int) -> int:
    """Entries not yet delivered + delivered but not acknowledged, over all partitions (one round
    trip: this is polled every 10 ms while the worker runs on the same 2 cores)."""
    with client.pipeline(transaction=False) as pipe:
        for p in range(partitions):
            pipe.xinfo_groups(keys.stream(p))
        replies = pipe.execute(raise_on_error=False)
    total = 0
    for groups in replies:
        if isinstance(groups, Exception):  # the stream does not exist yet
            continue
        for group in groups:
            if group["name"].decode() == GROUP:
                total += int(group["lag"] or 0) + int(group["pending"])
    return total


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def start_worker(artifact: Path, url: str, prefix: str, partitions: int, batch_size: int,
                 port: int, consumer: str = "bench") -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": url, "CMNREC_KEY_PREFIX": prefix}
    command = [str(Path(sys.executable).parent / "cmnrec"), "worker", "--artifact", str(artifact),
               "--partitions", str(partitions), "--batch-size", str(batch_size),
               "--metrics-port", str(port), "--consumer", consumer]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative (upper bound, count) buckets."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def worker_metrics(ports: list[int]) -> dict[str, float]:
    """Batch latency quantiles and mean batch size over the workers' /metrics (buckets summed)."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "cmnrec_worker_batch_latency_seconds":
                for sample in family.samples:
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + sample.value
            if family.name == "cmnrec_worker_batch_size_entries":
                values = {sample.name: sample.value for sample in family.samples}
                count += values.get("cmnrec_worker_batch_size_entries_count", 0)
                total += values.get("cmnrec_worker_batch_size_entries_sum", 0)
    cumulative = sorted(buckets.items())
    out: dict[str, float] = {"batches": count, "mean_batch_entries": total / max(count, 1)}
    if cumulative:
        out["batch_latency_p50_ms"] = histogram_quantile(cumulative, 0.5) * 1000
        out["batch_latency_p99_ms"] = histogram_quantile(cumulative, 0.99) * 1000
    return out


def wait_for_balanced_leases(client: redis.Redis, keys: KeySchema, partitions: int,
                             workers: list[subprocess.Popen], timeout: float = 60.0) -> None:
    """Block until every partition's lease is held and each worker holds its share."""
    share = -(-partitions // len(workers))  # ceil(P / N), what each worker aims at
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                raise RuntimeError(worker.stderr.read().decode())
        owners = [client.get(keys.lease(p)) for p in range(partitions)]
        held = [o for o in owners if o is not None]
        per_worker = [held.count(o) for o in set(held)]
        if len(held) == partitions and len(per_worker) == len(workers) and max(per_worker) <= share:
            return
        time.sleep(0.05)
    raise RuntimeError(f"leases not balanced over {len(workers)} workers in {timeout:.0f} s")


def measure(size: str, order: str, artifact: Path, url: str, events: list[dict], partitions: int,
            batch_size: int, steady_seconds: float, num_workers: int = 1) -> dict[str, Any]:
    """One worker: the backlog is published first and timed from the worker's first commit.
    Several: the workers start on empty partitions, share the leases, and the time runs from the
    start of publishing (which it then includes) until the backlog is drained."""
    load_before = os.getloadavg()[0]  # other people share the 2 cores: note how busy they were
    client = redis.Redis.from_url(url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    keys = KeySchema(prefix)
    total = len(events)
    if num_workers == 1:
        publish_events(client, events, partitions=partitions, prefix=prefix)
    ports = [free_port() for _ in range(num_workers)]
    workers = [start_worker(artifact, url, prefix, partitions, batch_size, port, f"bench-{i}")
               for i, port in enumerate(ports)]
    try:
        if num_workers == 1:
            while backlog(client, keys, partitions) in (0, total):  # no groups yet, or untouched
                if workers[0].poll() is not None:
                    raise RuntimeError(workers[0].stderr.read().decode())
                time.sleep(0.005)
        else:
            wait_for_balanced_leases(client, keys, partitions, workers)
        started = time.perf_counter()
        cpu_started = ([process_cpu_seconds(w.pid) for w in workers], redis_cpu_seconds(client))
        if num_workers > 1:
            publish_events(client, events, partitions=partitions, prefix=prefix)
        while backlog(client, keys, partitions) > 0:
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        worker_cpu = sum(process_cpu_seconds(w.pid) - c for w, c in zip(workers, cpu_started[0]))
        redis_cpu = redis_cpu_seconds(client) - cpu_started[1]
        load_after = os.getloadavg()[0]
        throughput = total / seconds
        figures = worker_metrics(ports)

        # steady state at half the throughput: fresh event ids, same users and items
        rate = throughput / 2
        steady = [dict(e, event_id=f"steady-{i}") for i, e in enumerate(events)]
        samples, sent, tick = [], 0, 0.02
        begin = time.perf_counter()
        while time.perf_counter() - begin < steady_seconds and sent < len(steady):
            due = int((time.perf_counter() - begin) * rate)
            if due > sent:
                publish_events(client, steady[sent:due], partitions=partitions, prefix=prefix)
                sent = due
            samples.append(backlog(client, keys, partitions))
            time.sleep(tick)
        mean_backlog = float(np.mean(samples)) if samples else float("nan")
        return {
            "size": size, "order": order, "dims": SIZES[size], "events": total, "partitions": partitions,
            "workers": num_workers,
            "batch_size": batch_size, "seconds": round(seconds, 3),
            "events_per_second": round(throughput, 1),
            "load_average_1m_before_after": [round(load_before, 2), round(load_after, 2)],
            # CPU per event (less sensitive to the other users of the cores than events/s); the
            # Redis figure also holds this benchmark's own backlog polling
            "worker_cpu_us_per_event": round(worker_cpu / total * 1e6, 1),
            "redis_cpu_us_per_event": round(redis_cpu / total * 1e6, 1),
            "batch_latency_p50_ms": round(figures.get("batch_latency_p50_ms", float("nan")), 2),
            "batch_latency_p99_ms": round(figures.get("batch_latency_p99_ms", float("nan")), 2),
            "mean_batch_entries": round(figures.get("mean_batch_entries", float("nan")), 1),
            "steady_rate_events_per_second": round(rate, 1),
            "steady_mean_backlog_entries": round(mean_backlog, 1),
            "steady_mean_lag_ms": round(mean_backlog / rate * 1000, 2),
        }
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            worker.stderr.close()
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--sizes", default="tiny,small,paper")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-sizes", "--batch-size", dest="batch_sizes", default=None,
                        help="entries per worker batch, comma-separated (default: the Settings')")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every configuration, in turn")
    parser.add_argument("--orders", default="time,interleaved",
                        help="event orders: time (MovieLens time order), interleaved (users take turns)")
    parser.add_argument("--steady-seconds", type=float, default=5.0)
    parser.add_argument("--workers", default="1",
                        help="worker processes sharing the partitions, comma-separated (each <= "
                             "--partitions)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "stream_worker.json")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; known: {list(SIZES)}")
    try:
        worker_counts = parse_ints(args.workers)
        batch_sizes = (parse_ints(args.batch_sizes) if args.batch_sizes
                       else [Settings.model_fields["stream_batch_size"].default])
    except ValueError as error:
        parser.error(f"--workers/--batch-sizes: {error}")
    if not all(1 <= w <= args.partitions for w in worker_counts):
        parser.error(f"--workers: expected 1 to --partitions ({args.partitions}), got {args.workers}")
    if min(batch_sizes) < 1 or args.rounds < 1:
        parser.error("--batch-sizes and --rounds must be >= 1")
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    if not set(orders) <= {"time", "interleaved"}:
        parser.error(f"--orders: expected time and/or interleaved, got {args.orders!r}")
    dataset = benchmark_dataset("ml-100k")
    streams = {"time": dataset_events(dataset, limit=args.events),
               "interleaved": interleaved_events(dataset, args.events)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmnrec-bench-") as scratch, EmbeddedRedis() as server:
        artifacts = {size: export_model(Path(scratch), size, dataset) for size in sizes}
        for round_index in range(args.rounds):
            for size in sizes:
                for batch_size in batch_sizes:
                    for workers in worker_counts:
                        for order in orders:
                            row = measure(size, order, artifacts[size], server.url, streams[order],
                                          args.partitions, batch_size, args.steady_seconds, workers)
                            row["round"] = round_index
                            print(row, flush=True)
                            rows.append(row)
    payload = {"benchmark": "stream_worker", "date": now_utc(), "machine": machine_info(),
               "dataset": "ml-100k", "orders": orders, "model": "cmnrec tsc M=4 T=50",
               "num_items": dataset.num_items, "rounds": args.rounds, "results": rows,
               "summary": summarise(rows)}
    table = markdown_table(
        ["size", "k/H/W", "order", "workers", "batch", "round", "events", "events/s", "batch p50 ms",
         "batch p99 ms", "mean batch", "lag at half rate (ms)", "worker CPU µs/event",
         "Redis CPU µs/event", "load 1m before/after"],
        [[r["size"], f'{r["dims"]["embed_dim"]}/{r["dims"]["hidden_dim"]}/{r["dims"]["mem_width"]}',
          r["order"], r["workers"], r["batch_size"], r["round"], r["events"],
          f'{r["events_per_second"]:.0f}', f'{r["batch_latency_p50_ms"]:.1f}',
          f'{r["batch_latency_p99_ms"]:.1f}', f'{r["mean_batch_entries"]:.0f}',
          f'{r["steady_mean_lag_ms"]:.1f}', f'{r["worker_cpu_us_per_event"]:.0f}',
          f'{r["redis_cpu_us_per_event"]:.0f}',
          "{:.2f}/{:.2f}".format(*r["load_average_1m_before_after"])] for r in rows])
    summary = markdown_table(
        ["size", "order", "workers", "batch", "runs", "events/s median", "events/s min-max",
         "worker CPU µs/event median", "Redis CPU µs/event median"],
        [[s["size"], s["order"], s["workers"], s["batch_size"], s["runs"],
          f'{s["events_per_second_median"]:.0f}',
          f'{s["events_per_second_min"]:.0f}-{s["events_per_second_max"]:.0f}',
          f'{s["worker_cpu_us_per_event_median"]:.0f}', f'{s["redis_cpu_us_per_event_median"]:.0f}']
         for s in payload["summary"]])
    title = ("One stream worker" if worker_counts == [1]
             else f"{', '.join(map(str, worker_counts))} stream workers")
    markdown = (f"# {title}, embedded Redis ({payload['date']})\n\n"
                f"CmnRec TSC M=4 T=50, random weights, I={dataset.num_items}; {args.partitions} "
                f"partitions, batch {', '.join(map(str, batch_sizes))} entries; the first "
                f"{args.events} MovieLens-100k events in time order (few users per batch, each with "
                f"many events), or interleaved (users take turns); {args.rounds} round(s), the "
                f"configurations in turn within each. Load average at start: "
                f"{payload['machine']['load_average_1_5_15']}.\n\n"
                + (f"Median over the rounds:\n\n{summary}\n\nEvery run:\n\n" if args.rounds > 1
                   or len(batch_sizes) > 1 or len(worker_counts) > 1 else "")
                + f"{table}\n")
    json_path, md_path = save_results(args.out, payload, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range of each (size, order, workers, batch size) over the rounds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["size"], row["order"], row["workers"], row["batch_size"])
        groups.setdefault(key, []).append(row)
    out = []
    for (size, order, workers, batch_size), runs in groups.items():
        rates = [r["events_per_second"] for r in runs]
        out.append({"size": size, "order": order, "workers": workers, "batch_size": batch_size,
                    "runs": len(runs), "events_per_second_median": float(np.median(rates)),
                    "events_per_second_min": min(rates), "events_per_second_max": max(rates),
                    "worker_cpu_us_per_event_median":
                        float(np.median([r["worker_cpu_us_per_event"] for r in runs])),
                    "redis_cpu_us_per_event_median":
                        float(np.median([r["redis_cpu_us_per_event"] for r in runs]))})
    return out


if __name__ == "__main__":
    main()
