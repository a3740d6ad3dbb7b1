"""The serving benchmark in one command: HTTP under load (CmnRec and SRMN), the stream worker, state
size per user, stateless recompute versus the incremental update; then bench/REPORT.md and plots.

Everything runs on embedded redis-servers, with paper-size random-weight networks (k=128, H=256,
W=256, b=64, R=1; T=50, M=4) over the MovieLens-100k catalogue:
1. HTTP: a real `cmnrec serve` per model, users spread over the chunk schedule first, then
   POST /v1/events?n=10 at constant arrival rates from bench/loadgen.py in a separate process
   (open loop, latency from each request's due time): throughput and p50/p90/p99 per rate, the
   models' runs interleaved rate by rate;
2. state bytes per user: the blob, and what Redis holds per user (MEMORY USAGE of the five keys)
   after the load and for a user at the caps of the recent-items and event-id windows;
3. stream worker: `cmnrec worker` (subprocess) drains a backlog of MovieLens events, in time order
   and with users taking turns (throughput), then at a steady publishing rate, probe events
   measure publish -> state committed (lag);
4. stateless recompute of the user's whole history (50, 200 events) per request, next to the
   incremental update of the stored state: the engine event by event, the engine's multi-event
   call (apply_sequences), and PyTorch's full-sequence forward.
Writes bench/results/serve.json, then runs bench/report.py (REPORT.md, PNG plots).

    .venv/bin/python bench/serve.py               # about 10 minutes
    .venv/bin/python bench/serve.py --quick       # a smoke run of about 2 minutes
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine_info, now_utc, parse_ints  # noqa: E402
from bench.serve_core import MODELS, brief, engine_timing  # noqa: E402
from bench.serving import (PAPER_DIMS, ServedModel, busy_processes, export_random,  # noqa: E402
                           busy_fraction, load_average, machine_busy,
                           percentiles, phased_pairs, run_load,
                           scratch_dir, stop_tree, process_tree, warm_users, write_events_file)

BLOCK_LEN = 50


# -- 1 + 2: HTTP under load, and what a user costs in Redis ----------------------------------------
def state_footprint(server: ServedModel, engine_state_bytes: int, items: list[str],
                    sample: int = 100) -> dict[str, Any]:
    """Bytes per user in the server's Redis: the five keys of `sample` users after the load, and of
    one user pushed past the recent-items / event-id caps (1000 each by default)."""
    import httpx
    import redis

    from service.state.keys import KeySchema

    keys = KeySchema()
    client = redis.Redis.from_url(server.redis_url())
    try:
        users = []
        for key in client.scan_iter(match="cmnrec:*:pos", count=1000):
            users.append(key.decode().split("{", 1)[1].rsplit("}", 1)[0])
            if len(users) >= sample:
                break

        def usage(user: str) -> dict[str, int]:
            k = keys.user(user)
            return {name: int(client.memory_usage(getattr(k, name), samples=0) or 0)
                    for name in k._fields}

        per_user = [usage(u) for u in users]
        positions = [int(client.get(keys.user(u).pos) or 0) for u in users]
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for start in range(0, 1100, 550):
                events = [{"user_id": "bench-caps", "item_id": items[i % len(items)],
                           "event_id": f"caps-{i}"} for i in range(start, start + 550)]
                http.post("/v1/events/batch", params={"n": 0},
                          json={"events": events}).raise_for_status()
        caps = usage("bench-caps")
    finally:
        client.close()
    fields = per_user[0].keys() if per_user else []
    return {
        "state_blob_bytes": engine_state_bytes,
        "users_sampled": len(per_user),
        "mean_events_per_sampled_user": round(float(np.mean(positions)), 1) if positions else None,
        "redis_bytes_per_user_mean": {f: round(float(np.mean([u[f] for u in per_user])), 1)
                                      for f in fields},
        "redis_bytes_per_user_total_mean": round(float(np.mean([sum(u.values())
                                                                for u in per_user])), 1)
        if per_user else None,
        "user_at_caps": {"events": 1100, "bytes": caps, "total": sum(caps.values())},
    }


@dataclass(frozen=True)
class HttpConfig:
    """One served model under load: which network, how many uvicorn workers, at which rates."""

    model: str  # a key of MODELS
    workers: int
    rates: tuple[int, ...]
    footprint: bool  # measure the Redis bytes per user on this server afterwards

    @property
    def label(self) -> str:
        return f"{self.model}-w{self.workers}"


def http_models(configs: list[HttpConfig], artifacts: dict[str, Path], dataset: Any, *,
                duration: float, warmup: float, scratch: Path) -> list[dict[str, Any]]:
    """Every configuration served at once (an idle server costs next to nothing), then the load
    runs interleaved rate by rate (model A at r, model B at r, ..., then the next rate), so that
    the other jobs on this shared machine weigh on the models alike rather than on whichever ran
    during a busy minute."""
    from service.ops.redis_server import free_port

    warm, load = phased_pairs(dataset, BLOCK_LEN)
    events_file = write_events_file(scratch / "events-http.json", load)
    runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in configs}
    offsets = {c.label: 0 for c in configs}
    out = []
    with contextlib.ExitStack() as stack:
        servers = {c.label: stack.enter_context(
            ServedModel(artifacts[c.model], port=free_port(), workers=c.workers,
                        log_path=scratch / f"serve-{c.label}.log")) for c in configs}
        for server in servers.values():
            warm_users(server.url, warm)
        for rate in sorted({r for c in configs for r in c.rates}):
            for c in (c for c in configs if rate in c.rates):
                summary = run_load(servers[c.label], events_file, rate=rate, duration=duration,
                                   warmup=warmup, run_id=f"{c.label}-{rate}",
                                   offset=offsets[c.label], scratch=scratch)
                offsets[c.label] += int(round(rate * (duration + warmup)))
                summary["server_cpu_ms_per_request"] = round(
                    summary["server_cpu_fraction"] * 1e3 / max(summary["throughput_rps"], 1e-9), 3)
                print(f"  {c.label} {rate}/s: {brief(summary)}", flush=True)
                runs[c.label].append(summary)
        for c in configs:
            extra = {}
            if c.footprint:
                from model.engine import StepEngine

                engine = StepEngine.load(artifacts[c.model])
                extra["footprint"] = state_footprint(servers[c.label], len(engine.initial_state()),
                                                     engine.vocab.ids[1:])
            out.append({"model": c.model, "workers": c.workers, "label": c.label,
                        "runs": runs[c.label], **extra})
    return out


# -- 3: the stream worker --------------------------------------------------------------------------
STREAM_ORDERS = {
    "time": "MovieLens time order (as `cmnrec replay` publishes it: rating sessions, many events "
            "of one user in a row)",
    "turns": "users take turns, each user's events in time order (one event per user per batch "
             "wave: the worst case for batching)",
}


def stream_orders(dataset: Any) -> dict[str, list[list[str]]]:
    """The event orders the stream worker is measured on, as [user_id, item_id] pairs."""
    from service.streams.replay import dataset_events

    _, turns = phased_pairs(dataset, BLOCK_LEN)
    time_order = [[str(e["user_id"]), str(e["item_id"])] for e in dataset_events(dataset)]
    return {"time": time_order, "turns": turns}


def stream_worker(artifact: Path, pairs: list[list[str]], *, order: str, events: int,
                  partitions: int, batch_size: int, steady_seconds: float,
                  scratch: Path) -> dict[str, Any]:
    """Backlog throughput of one `cmnrec worker`, then publish -> committed lag at half the rate."""
    import redis

    from bench.stream_worker import backlog, start_worker, worker_metrics
    from service.state.keys import KeySchema
    from service.ops.redis_server import EmbeddedRedis, free_port
    from service.state.keys import KeySchema
from service.streams.publish import publish_events

    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        keys = KeySchema(prefix)
        backlog_events = [{"user_id": u, "item_id": i, "event_id": f"b-{n}"}
                          for n, (u, i) in enumerate(pairs[:events])]
        for start in range(0, len(backlog_events), 1000):
            publish_events(client, backlog_events[start:start + 1000], partitions=partitions,
                           prefix=prefix)
        port = free_port()
        worker = start_worker(artifact, server.url, prefix, partitions, batch_size, port)
        tree = process_tree(worker.pid)
        try:
            total = len(backlog_events)
            deadline = time.monotonic() + 120
            while backlog(client, keys, partitions) in (0, total):  # not started yet
                if worker.poll() is not None:
                    raise RuntimeError(f"cmnrec worker exited: {worker.stderr.read().decode()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("cmnrec worker did not start consuming in 120 s")
                time.sleep(0.005)
            tic = time.perf_counter()
            while backlog(client, keys, partitions) > 0:
                time.sleep(0.01)
            seconds = time.perf_counter() - tic
            throughput = total / seconds
            drained = worker_metrics([port])
            steady = steady_lag(client, KeySchema(prefix), prefix, pairs, partitions,
                                rate=throughput / 2, seconds=steady_seconds)
        finally:
            stop_tree(worker, tree | process_tree(worker.pid))
            if worker.stderr is not None:
                worker.stderr.close()
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
            client.close()
    return {"events": total, "partitions": partitions, "batch_size": batch_size,
            "order": order, "order_description": STREAM_ORDERS[order],
            "backlog_seconds": round(seconds, 3), "events_per_second": round(throughput, 1),
            "batch_latency_p50_ms": _finite(drained.get("batch_latency_p50_ms"), 2),
            "batch_latency_p99_ms": _finite(drained.get("batch_latency_p99_ms"), 2),
            "mean_batch_entries": _finite(drained.get("mean_batch_entries"), 1),
            "steady": steady}


def _finite(value: float | None, digits: int) -> float | None:
    return round(float(value), digits) if value is not None and np.isfinite(value) else None


def steady_lag(client: Any, user_keys: Any, prefix: str, pairs: list[list[str]], partitions: int,
               *, rate: float, seconds: float, probe_every: float = 0.05) -> dict[str, Any]:
    """Publish `pairs` at `rate` events/s; every `probe_every` s also a probe event of one probe
    user, whose committed position a poller watches (every 2 ms): lag = commit seen - publish."""
    from service.streams.publish import publish_events

    probe_user = f"probe-{uuid.uuid4().hex[:6]}"
    pos_key = user_keys.user(probe_user).pos
    published: list[float] = []  # publish time of probe j (its event makes pos j + 1)
    lags: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        seen = 0
        while not stop.is_set() or seen < len(published):
            pos = int(client.get(pos_key) or 0)
            now = time.perf_counter()
            while seen < pos and seen < len(published):
                lags.append((now - published[seen]) * 1e3)
                seen += 1
            if stop.is_set() and time.perf_counter() - stop_time[0] > 10:
                return
            time.sleep(0.002)

    stop_time = [0.0]
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    sent, probes, begin = 0, 0, time.perf_counter()
    offset = len(pairs) // 2
    while time.perf_counter() - begin < seconds:
        elapsed = time.perf_counter() - begin
        due = int(elapsed * rate)
        if due > sent:
            batch = [{"user_id": u, "item_id": i, "event_id": f"s-{sent + n}"}
                     for n, (u, i) in enumerate(
                         pairs[(offset + sent + k) % len(pairs)] for k in range(due - sent))]
            publish_events(client, batch, partitions=partitions, prefix=prefix)
            sent = due
        if elapsed >= probes * probe_every:
            item = pairs[probes % len(pairs)][1]
            published.append(time.perf_counter())
            publish_events(client, [{"user_id": probe_user, "item_id": item,
                                     "event_id": f"probe-{probes}"}],
                           partitions=partitions, prefix=prefix)
            probes += 1
        time.sleep(0.002)
    stop_time[0] = time.perf_counter()
    stop.set()
    poller.join(timeout=15)
    return {"rate_events_per_second": round(rate, 1), "seconds": seconds, "events": sent,
            "probes": probes, "probes_seen": len(lags),
            "lag_ms": percentiles(lags), "poll_interval_ms": 2.0}


# -- 4: stateless recompute versus incremental -----------------------------------------------------
def recompute_costs(artifact: Path, run_dir: Path, histories: list[int], repeats: int,
                    seed: int = 0) -> dict[str, Any]:
    """Per request, ms: the incremental update (one event on the stored state) against rebuilding
    the state from the whole history (engine event by event; engine.apply_sequences; PyTorch
    full-sequence forward over the history, 1 thread)."""
    import torch

    from model.engine import StepEngine
    from training.checkpoint import load_run

    engine = StepEngine.load(artifact)
    model = load_run(run_dir).model.float().eval()
    rng = np.random.default_rng(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        for length in histories:
            history = [int(x) for x in rng.integers(1, engine.num_items, size=length)]
            nxt = int(rng.integers(1, engine.num_items))
            state = engine.apply_sequences([history], [engine.initial_state()]).states[0]

            def incremental() -> None:
                engine.apply([nxt], [state])

            def loop() -> None:
                s = engine.initial_state()
                for item in history + [nxt]:
                    s = engine.apply([item], [s]).states[0]

            def sequences() -> None:
                engine.apply_sequences([history + [nxt]], [engine.initial_state()], scores=True)

            items = torch.tensor([history + [nxt]], dtype=torch.long)

            def forward() -> None:
                with torch.no_grad():
                    model(items, model.initial_state(1))

            row = {}
            for name, fn in (("incremental", incremental), ("stateless_engine_loop", loop),
                             ("stateless_engine_sequences", sequences),
                             ("stateless_torch_forward", forward)):
                fn()
                times = []
                for _ in range(repeats if name != "incremental" else repeats * 10):
                    tic = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - tic) * 1e3)
                row[name] = percentiles(times)
            base = row["incremental"]["p50"]
            row["ratio_p50"] = {k: round(v["p50"] / base, 1) for k, v in row.items()
                                if k != "incremental"}
            out[str(length)] = row
    finally:
        torch.set_num_threads(threads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,200,300,400,500", help="requests/s per model")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per rate")
    parser.add_argument("--two-workers-rates", default="300,500",
                        help="rates for CmnRec with `--workers 2` ('' to skip)")
    parser.add_argument("--stream-events", type=int, default=20000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steady-seconds", type=float, default=10.0)
    parser.add_argument("--histories", default="50,200")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve.json")
    parser.add_argument("--no-report", action="store_true", help="do not run bench/report.py")
    args = parser.parse_args()
    rates = parse_ints(args.rates)
    two_rates = parse_ints(args.two_workers_rates) if args.two_workers_rates.strip() else []
    histories = parse_ints(args.histories)
    if args.quick:
        rates, two_rates = [100, 300], [300]
        args.duration, args.warmup, args.stream_events = 3.0, 1.0, 3000
        args.steady_seconds, args.repeats = 3.0, 3

    from bench.common import benchmark_dataset

    started, load_start, busy0 = time.perf_counter(), load_average(), machine_busy()
    payload: dict[str, Any] = {"benchmark": "serve", "date": now_utc(), "machine": machine_info(),
                               "load_average_start": load_start,
                               "busy_processes_at_start": busy_processes(), "quick": args.quick}
    dataset = benchmark_dataset("ml-100k")
    with scratch_dir() as scratch:
        artifacts = {name: export_random(scratch, name, dataset, model=model, rule=rule,
                                         block_len=BLOCK_LEN)
                     for name, (model, rule) in MODELS.items()}
        print("engine per event (B=1)...", flush=True)
        payload["engine"] = {name: engine_timing(path, 300 if args.quick else 2000)
                             for name, path in artifacts.items()}
        print("HTTP: cmnrec serve + bench/loadgen.py...", flush=True)
        configs = [HttpConfig(name, 1, tuple(rates), True) for name in MODELS]
        if two_rates:
            configs.append(HttpConfig("cmnrec", 2, tuple(two_rates), False))
        payload["http"] = http_models(configs, artifacts, dataset, duration=args.duration,
                                      warmup=args.warmup, scratch=scratch)
        print("stream worker...", flush=True)
        payload["stream_worker"] = []
        for order, pairs in stream_orders(dataset).items():
            result = stream_worker(artifacts["cmnrec"], pairs, order=order,
                                   events=args.stream_events, partitions=args.partitions,
                                   batch_size=args.batch_size, steady_seconds=args.steady_seconds,
                                   scratch=scratch)
            payload["stream_worker"].append(result)
            print(f"  {order}: {result['events_per_second']:.0f} events/s; steady lag "
                  f"{result['steady']['lag_ms']}", flush=True)
        print("stateless recompute vs incremental...", flush=True)
        payload["recompute"] = {
            name: recompute_costs(artifacts[name], scratch / "runs" / name, histories,
                                  args.repeats) for name in MODELS}
        for name, rows in payload["recompute"].items():
            for length, row in rows.items():
                print(f"  {name} history {length}: incremental {row['incremental']['p50']} ms, "
                      f"ratios {row['ratio_p50']}", flush=True)
    busy1 = machine_busy()
    payload["settings"] = {"rates": rates, "two_workers_rates": two_rates,
                           "duration_s": args.duration, "warmup_s": args.warmup,
                           "dims": PAPER_DIMS, "block_len": BLOCK_LEN, "slots": 4,
                           "num_items": dataset.num_items, "n": 10, "weights": "random",
                           "stream_events": args.stream_events, "partitions": args.partitions,
                           "batch_size": args.batch_size, "histories": histories}
    payload["load_average_end"] = load_average()
    payload["machine_busy_during_run"] = busy_fraction(busy0, busy1)
    payload["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out} in {payload['seconds']} s")
    if not args.no_report:
        subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "report.py")],
                       check=True)


if __name__ == "__main__":
    main()
