"""Serving core, from one run: engine time per event, Redis read/commit time, HTTP latency.

Paper-size networks (k=128, H=256, W=256, b=64, R=1; T=50, M=4) over the MovieLens-100k catalogue
(I=1683) with random weights (the work per event does not depend on the weights):
1. engine: `StepEngine.apply` for one user (B=1), chunk and non-chunk events apart, CmnRec TSC and
   SRMN (memory on every event);
2. Redis: `StateStore.apply` on an embedded redis-server, one event at a time: the pipelined state
   read and the compare-and-set commit (the store's own stage timings), and a bare GET round trip;
3. HTTP: a real `cmnrec serve` (uvicorn, its own embedded Redis) serving CmnRec, users first spread
   over the chunk schedule (bench/serving.py phased_pairs), then POST /v1/events?n=10 at constant
   arrival rates from bench/loadgen.py in a separate process (open loop: latency counted from each
   request's due time). Client-side p50/p90/p99, the server's own stage timings from the responses,
   and the CPU used by the server (its process tree), the generator and the whole machine.
Writes bench/results/serve_core.json. The aim: p99 under 10 ms at 500 requests/s on this machine.

    .venv/bin/python bench/serve_core.py [--rates 100,250,500] [--duration 20] [--workers 1]
    .venv/bin/python bench/serve_core.py --quick      # a smoke run of about a minute
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, machine_info, now_utc, parse_ints  # noqa: E402
from bench.serving import (  # noqa: E402
    PAPER_DIMS,
    ServedModel,
    busy_fraction,
    busy_processes,
    export_random,
    load_average,
    machine_busy,
    percentiles,
    phased_pairs,
    run_load,
    scratch_dir,
    warm_users,
    write_events_file,
)

AIM_P99_MS = 10.0
AIM_RATE = 500.0
MODELS = {"cmnrec": ("cmnrec", "tsc"), "srmn": ("srmn", "every")}


def engine_timing(artifact: Path, events: int, seed: int = 0) -> dict[str, Any]:
    """StepEngine.apply for one user, event after event (B=1): wall ms per event and per stage,
    chunk and non-chunk events apart, and CPU ms per event."""
    from model.engine import StepEngine

    engine = StepEngine.load(artifact)
    rng = np.random.default_rng(seed)
    items = rng.integers(1, engine.num_items, size=events + 100)
    state = engine.initial_state()
    for item in items[:100]:  # warm the sessions up
        state = engine.apply([int(item)], [state]).states[0]
    rows: dict[bool, list[tuple[float, dict[str, float]]]] = {True: [], False: []}
    cpu0 = time.process_time()
    for item in items[100:]:
        tic = time.perf_counter()
        result = engine.apply([int(item)], [state])
        seconds = time.perf_counter() - tic
        state = result.states[0]
        rows[bool(result.chunk[0])].append((seconds, result.timings))
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = {"events": events, "cpu_ms_per_event": round(cpu / events * 1e3, 4),
                           "state_bytes": len(state), "config": engine.config.to_dict()}
    for label, chunk in (("non_chunk", False), ("chunk", True)):
        data = rows[chunk]
        out[label] = {"events": len(data),
                      "total_ms": percentiles([s * 1e3 for s, _ in data]),
                      "stages_ms_p50": {
                          stage: round(float(np.median([t[stage] for _, t in data])) * 1e3, 4)
                          for stage in (data[0][1] if data else {})}}
    return out


async def _store_timing(artifact: Path, url: str, events: int, users: int,
                        seed: int) -> dict[str, Any]:
    from model.engine import StepEngine
    from service.ops.settings import Settings
    from service.state.connection import open_redis
    from service.state.domain import Event
    from service.state.store import StateStore

    engine = StepEngine.load(artifact)
    settings = Settings(redis_url=url, key_prefix="bench-core")
    redis = open_redis(url, settings)
    try:
        store = StateStore.from_settings(redis, engine, settings)
        vocab = engine.vocab.ids
        rng = np.random.default_rng(seed)
        for i in range(min(200, events)):  # warm-up: pool connections, script, sessions
            await store.apply(Event(f"w{i % 50}", vocab[int(rng.integers(1, len(vocab)))],
                                    f"warm-{i}"), n=10)
        timings, cpu0 = [], time.process_time()
        for i in range(events):
            item = vocab[int(rng.integers(1, len(vocab)))]
            result = await store.apply(Event(f"u{i % users}", item, f"e-{i}"), n=10)
            timings.append(result.timings)
        cpu = time.process_time() - cpu0
        gets, tic = [], 0.0
        for _ in range(1000):
            tic = time.perf_counter()
            await redis.get("bench-core:missing")
            gets.append((time.perf_counter() - tic) * 1e3)
        async for key in redis.scan_iter(match="bench-core:*", count=1000):
            await redis.delete(key)
    finally:
        await redis.aclose()
    stages = sorted({k for t in timings for k in t})
    return {"events": events, "users": users, "n": 10,
            "cpu_ms_per_event": round(cpu / events * 1e3, 4),
            "stages_ms": {stage: percentiles([t.get(stage, 0.0) * 1e3 for t in timings])
                          for stage in stages},
            "bare_get_round_trip_ms": percentiles(gets)}


def store_timing(artifact: Path, events: int, users: int = 500, seed: int = 0) -> dict[str, Any]:
    """StateStore.apply, one event at a time, on a fresh embedded redis-server."""
    from service.ops.redis_server import EmbeddedRedis

    with EmbeddedRedis() as server:
        return asyncio.run(_store_timing(artifact, server.url, events, users, seed))


def http_rates(artifact: Path, dataset: Any, *, rates: list[int], duration: float, warmup: float,
               workers: int, scratch: Path, label: str, block_len: int = 50) -> dict[str, Any]:
    """`cmnrec serve` on the artifact; users spread over the schedule; one load run per rate."""
    from service.ops.redis_server import free_port

    warm, load = phased_pairs(dataset, block_len)
    events_file = write_events_file(scratch / f"events-{label}.json", load)
    runs, offset = [], 0
    with ServedModel(artifact, port=free_port(), workers=workers,
                     log_path=scratch / f"serve-{label}.log") as server:
        tic = time.perf_counter()
        warmed = warm_users(server.url, warm)
        warm_seconds = time.perf_counter() - tic
        for rate in rates:
            summary = run_load(server, events_file, rate=rate, duration=duration, warmup=warmup,
                               run_id=f"{label}-{rate}", offset=offset, scratch=scratch)
            offset += int(round(rate * (duration + warmup)))
            summary["server_cpu_ms_per_request"] = round(
                summary["server_cpu_fraction"] * 1e3 / max(summary["throughput_rps"], 1e-9), 3)
            print(f"  {label} workers={workers} {rate}/s: " + brief(summary), flush=True)
            runs.append(summary)
    return {"model": label, "workers": workers, "warm_events": warmed,
            "warm_seconds": round(warm_seconds, 2), "runs": runs}


def brief(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    return (f"{summary['throughput_rps']:.0f} req/s, p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} "
            f"p99 {lat['p99']:.1f} ms, errors {sum(summary['errors'].values())}, server CPU "
            f"{summary['server_cpu_fraction']:.2f} cores, generator "
            f"{summary['generator_cpu_fraction']:.2f}, machine busy "
            f"{summary['machine_busy_fraction']:.0%}")


def diagnose(http: dict[str, Any]) -> dict[str, Any]:
    """What the runs say about the 10 ms / 500 req/s aim."""
    runs = http["runs"]
    at_aim = next((r for r in runs if r["offered_rate"] == AIM_RATE), runs[-1] if runs else None)
    light = min(runs, key=lambda r: r["offered_rate"]) if runs else None
    out: dict[str, Any] = {"aim": f"p99 < {AIM_P99_MS:g} ms at {AIM_RATE:g} requests/s"}
    if at_aim is None:
        return out
    cpu_per_request = float(np.median([r["server_cpu_ms_per_request"] for r in runs]))
    out.update({
        "rate": at_aim["offered_rate"], "p99_ms": at_aim["latency_ms"]["p99"],
        "throughput_rps": at_aim["throughput_rps"],
        "met": bool(at_aim["offered_rate"] >= AIM_RATE
                    and at_aim["latency_ms"]["p99"] < AIM_P99_MS
                    and at_aim["throughput_rps"] >= 0.98 * AIM_RATE),
        "server_cpu_ms_per_request": round(cpu_per_request, 3),
        "server_cores_needed_at_aim": round(cpu_per_request * AIM_RATE / 1e3, 2),
        "server_cores_obtained_at_aim": at_aim["server_cpu_fraction"],
        "generator_cores_at_aim": at_aim["generator_cpu_fraction"],
        "machine_busy_at_aim": at_aim["machine_busy_fraction"],
    })
    if light is not None:
        stages = light["server_stages_ms"]["non_chunk"]
        out["server_stage_p50_ms_at_lowest_rate"] = {
            k: v["p50"] for k, v in stages.items() if isinstance(v, dict)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,250,500", help="requests/s, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per rate")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of cmnrec serve")
    parser.add_argument("--engine-events", type=int, default=3000)
    parser.add_argument("--store-events", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_core.json")
    args = parser.parse_args()
    rates = parse_ints(args.rates)
    if args.quick:
        rates, args.duration, args.warmup = rates[:2], 3.0, 1.0
        args.engine_events, args.store_events = 300, 300

    from bench.common import benchmark_dataset

    started, load_start, busy0 = time.perf_counter(), load_average(), machine_busy()
    others = busy_processes()
    payload: dict[str, Any] = {"benchmark": "serve_core", "date": now_utc(),
                               "machine": machine_info(), "load_average_start": load_start,
                               "busy_processes_at_start": others, "quick": args.quick}
    dataset = benchmark_dataset("ml-100k")
    with scratch_dir() as scratch:
        artifacts = {name: export_random(scratch, name, dataset, model=model, rule=rule)
                     for name, (model, rule) in MODELS.items()}
        print("engine (B=1, in-process)...", flush=True)
        payload["engine"] = {name: engine_timing(path, args.engine_events)
                             for name, path in artifacts.items()}
        for name, figures in payload["engine"].items():
            print(f"  {name}: non-chunk p50 {figures['non_chunk']['total_ms']['p50']} ms, "
                  f"chunk p50 {figures['chunk']['total_ms']['p50']} ms", flush=True)
        print("state store on embedded Redis (one event at a time)...", flush=True)
        payload["redis"] = store_timing(artifacts["cmnrec"], args.store_events)
        stages = payload["redis"]["stages_ms"]
        print(f"  read p50 {stages['state_read']['p50']} ms, commit p50 "
              f"{stages['state_write']['p50']} ms", flush=True)
        print("HTTP: cmnrec serve + bench/loadgen.py...", flush=True)
        payload["http"] = http_rates(artifacts["cmnrec"], dataset, rates=rates,
                                     duration=args.duration, warmup=args.warmup,
                                     workers=args.workers, scratch=scratch, label="cmnrec")
    busy1 = machine_busy()
    payload["settings"] = {"rates": rates, "duration_s": args.duration, "warmup_s": args.warmup,
                           "workers": args.workers, "dims": PAPER_DIMS, "block_len": 50,
                           "slots": 4, "num_items": dataset.num_items, "n": 10,
                           "weights": "random"}
    payload["diagnosis"] = diagnose(payload["http"])
    payload["load_average_end"] = load_average()
    payload["machine_busy_during_run"] = busy_fraction(busy0, busy1)
    payload["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    d = payload["diagnosis"]
    print(f"aim {d['aim']}: {'met' if d.get('met') else 'missed'} (p99 {d.get('p99_ms')} ms at "
          f"{d.get('rate')}/s; server {d.get('server_cpu_ms_per_request')} ms CPU per request)")
    print(f"wrote {args.out} in {payload['seconds']} s")


if __name__ == "__main__":
    main()
