"""Serving core, from one run: engine time per event, Redis read/commit time, HTTP latency.

Paper-size networks (k=128, H=256, W=256, b=64, R=1; T=50, M=4) over the MovieLens-100k catalogue
(I=1683) with random weights (the work per event does not depend on the weights):
1. engine: `StepEngine.apply` for one user (B=1), chunk and non-chunk events apart, CmnRec TSC and
   SRMN (memory on every event);
2. Redis: `StateStore.apply` on an embedded redis-server, one event at a time: the pipelined state
   read and the compare-and-set commit (the store's own stage timings), and a bare GET round trip;
3. HTTP: real `cmnrec serve` processes (uvicorn, each with its own embedded Redis) serving CmnRec,
   users first spread over the chunk schedule (bench/serving.py phased_pairs), then
   POST /v1/events?n=10 at constant arrival rates from bench/loadgen.py in a separate process (open
   loop: latency counted from each request's due time). For every worker count (--workers) one
   server per variant (--variants: settings as environment variables) runs at once, and the
   variants take turns at each rate, so that A/B figures share the same machine load. Per run:
   client-side p50/p90/p99, the server's stage timings from the responses, CPU ms per request of
   the service processes (uvicorn) and of redis-server apart, the generator's CPU, the machine's
   busy share and load average.
Writes bench/results/serve_core.json and .md. Aims (issue 13): p99 at most 10 ms at 1,000 requests/s
offered with the best worker count; service + Redis CPU at most 1.0 ms per request.

    .venv/bin/python bench/serve_core.py      # 500/1,000/1,500 req/s x 1 and 2 workers, 20 s each
    .venv/bin/python bench/serve_core.py --variants "default;cache_off:CMNREC_STATE_CACHE_USERS=0"
    .venv/bin/python bench/serve_core.py --quick      # a smoke run of a few minutes
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
    cpu_seconds,
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
AIM_RATE = 1000.0
AIM_CPU_MS = 1.0  # service + Redis CPU per request
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


def parse_variants(text: str) -> dict[str, dict[str, str]]:
    """"a;b:K=V,K2=V2" -> {"a": {}, "b": {"K": "V", "K2": "V2"}}: server settings per variant."""
    variants: dict[str, dict[str, str]] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, _, assignments = part.partition(":")
        env = {}
        for assignment in (a.strip() for a in assignments.split(",") if a.strip()):
            key, sep, value = assignment.partition("=")
            if not sep or not key:
                raise ValueError(f"variant {name!r}: expected KEY=VALUE, got {assignment!r}")
            env[key] = value
        variants[name.strip()] = env
    if not variants:
        raise ValueError(f"no variant in {text!r}")
    return variants


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def http_rates(artifact: Path, dataset: Any, *, rates: list[int], duration: float, warmup: float,
               workers: int, scratch: Path, label: str, block_len: int = 50,
               variants: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """One `cmnrec serve` per variant, all up at once; users spread over the schedule; then at each
    rate one load run per variant, in turn. Returns one config (variant) with its runs each."""
    from contextlib import ExitStack

    from service.ops.redis_server import free_port

    variants = variants or {"default": {}}
    warm, load = phased_pairs(dataset, block_len)
    events_file = write_events_file(scratch / f"events-{label}.json", load)
    configs = {name: {"model": label, "variant": name, "env": env, "workers": workers,
                      "runs": []} for name, env in variants.items()}
    with ExitStack() as stack:
        servers = {}
        for name, env in variants.items():
            server = stack.enter_context(ServedModel(
                artifact, port=free_port(), workers=workers, env=env,
                log_path=scratch / f"serve-{label}-{name}-{workers}.log"))
            tic = time.perf_counter()
            configs[name]["warm_events"] = warm_users(server.url, warm)
            configs[name]["warm_seconds"] = round(time.perf_counter() - tic, 2)
            servers[name] = server
        offset = 0
        for rate in rates:
            for name, server in servers.items():
                tree = server.pids()
                redis_pids = {p for p in tree if "redis" in _name(p)}
                service0, redis0 = cpu_seconds(tree - redis_pids), cpu_seconds(redis_pids)
                load_start = load_average()
                summary = run_load(server, events_file, rate=rate, duration=duration,
                                   warmup=warmup, run_id=f"{label}-{name}-{rate}", offset=offset,
                                   scratch=scratch)
                tree = server.pids()
                redis_pids = {p for p in tree if "redis" in _name(p)} | redis_pids
                sent = int(round(rate * (duration + warmup)))  # the warm-up is served too
                summary["service_cpu_ms_per_request"] = round(
                    (cpu_seconds(tree - redis_pids) - service0) * 1e3 / sent, 3)
                summary["redis_cpu_ms_per_request"] = round(
                    (cpu_seconds(redis_pids) - redis0) * 1e3 / sent, 3)
                summary["server_cpu_ms_per_request"] = round(
                    summary["service_cpu_ms_per_request"] + summary["redis_cpu_ms_per_request"], 3)
                summary.pop("cdf", None)  # 18 runs of CDF points would bloat the file
                summary["load_average_start"] = load_start
                summary["load_average_end"] = load_average()
                print(f"  {label} {name} workers={workers} {rate}/s: " + brief(summary),
                      flush=True)
                configs[name]["runs"].append(summary)
            offset += int(round(rate * (duration + warmup)))
    return list(configs.values())


def brief(summary: dict[str, Any]) -> str:
    lat = summary["latency_ms"]
    return (f"{summary['throughput_rps']:.0f} req/s, p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} "
            f"p99 {lat['p99']:.1f} ms, errors {sum(summary['errors'].values())}, server CPU "
            f"{summary['server_cpu_fraction']:.2f} cores ("
            f"{summary.get('service_cpu_ms_per_request', float('nan')):.2f} + "
            f"{summary.get('redis_cpu_ms_per_request', float('nan')):.2f} ms/request service + "
            f"Redis), load {summary.get('load_average_start', ['?'])[0]}, generator "
            f"{summary['generator_cpu_fraction']:.2f}, machine busy "
            f"{summary['machine_busy_fraction']:.0%}")


def diagnose(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the runs say about the aims: the best config (variant, workers) at AIM_RATE."""
    out: dict[str, Any] = {"aim": f"p99 <= {AIM_P99_MS:g} ms at {AIM_RATE:g} requests/s offered, "
                                  f"service + Redis CPU <= {AIM_CPU_MS:g} ms per request"}
    at_aim = [(c, r) for c in configs for r in c["runs"] if r["offered_rate"] == AIM_RATE]
    if not at_aim:
        return out
    config, run = min(at_aim, key=lambda cr: cr[1]["latency_ms"]["p99"] or float("inf"))
    cpu = min(at_aim, key=lambda cr: cr[1]["server_cpu_ms_per_request"])
    out.update({
        "best_p99": {"variant": config["variant"], "workers": config["workers"],
                     "p99_ms": run["latency_ms"]["p99"], "throughput_rps": run["throughput_rps"],
                     "load_average_start": run["load_average_start"],
                     "machine_busy": run["machine_busy_fraction"]},
        "p99_met": bool(run["latency_ms"]["p99"] is not None
                        and run["latency_ms"]["p99"] <= AIM_P99_MS
                        and run["throughput_rps"] >= 0.98 * AIM_RATE),
        "least_cpu": {"variant": cpu[0]["variant"], "workers": cpu[0]["workers"],
                      "service_ms": cpu[1]["service_cpu_ms_per_request"],
                      "redis_ms": cpu[1]["redis_cpu_ms_per_request"]},
        "cpu_met": bool(cpu[1]["server_cpu_ms_per_request"] <= AIM_CPU_MS),
    })
    return out


def markdown(payload: dict[str, Any]) -> str:
    from bench.common import markdown_table

    rows = []
    for config in payload["matrix"]:
        for r in config["runs"]:
            lat = r["latency_ms"]
            rows.append([config["variant"], config["workers"], f"{r['offered_rate']:.0f}",
                         f"{r['throughput_rps']:.0f}", f"{lat['p50']:.1f}", f"{lat['p90']:.1f}",
                         f"{lat['p99']:.1f}", sum(r["errors"].values()),
                         f"{r['service_cpu_ms_per_request']:.3f}",
                         f"{r['redis_cpu_ms_per_request']:.3f}",
                         f"{r['generator_cpu_fraction']:.2f}",
                         f"{100 * r['machine_busy_fraction']:.0f}%",
                         f"{r['load_average_start'][0]:.1f}"])
    d = payload["diagnosis"]
    variants = "; ".join(f"{c['variant']} = {c['env'] or 'the defaults'}"
                         for c in payload["matrix"] if c["workers"] == payload["matrix"][0]["workers"])
    return (f"# Serving core, HTTP ({payload['date']})\n\n"
            f"`cmnrec serve`, paper-size CmnRec TSC (random weights, I={payload['settings']['num_items']}),"
            f" POST /v1/events?n=10 from bench/loadgen.py (open loop, 64 connections); "
            f"{payload['settings']['duration_s']} s measured per run after "
            f"{payload['settings']['warmup_s']} s of warm-up. Variants ({variants}) run in turn "
            f"at each rate. Latency in ms from each request's due time; CPU in ms per request, "
            f"service (uvicorn processes) and redis-server apart; load = 1-minute load average "
            f"at the start of the run (2 cores).\n\n"
            + markdown_table(["variant", "workers", "offered/s", "achieved/s", "p50", "p90", "p99",
                              "errors", "service CPU ms/req", "Redis CPU ms/req", "generator cores",
                              "machine busy", "load"], rows)
            + f"\n\nAim: {d['aim']}. p99: {'met' if d.get('p99_met') else 'not met'} in this run "
              f"(best: {d.get('best_p99')}); CPU: {'met' if d.get('cpu_met') else 'not met'} "
              f"(least: {d.get('least_cpu')}).\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="500,1000,1500", help="requests/s, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per rate")
    parser.add_argument("--workers", default="1,2", help="uvicorn workers, comma-separated")
    parser.add_argument("--variants", default="default",
                        help='server settings to compare, "name:KEY=V,KEY=V;name2:..."')
    parser.add_argument("--skip-core", action="store_true",
                        help="HTTP only (no in-process engine and store timings)")
    parser.add_argument("--engine-events", type=int, default=3000)
    parser.add_argument("--store-events", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="smoke run: short and small")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "serve_core.json")
    args = parser.parse_args()
    rates, worker_counts = parse_ints(args.rates), parse_ints(args.workers)
    variants = parse_variants(args.variants)
    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
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
        if not args.skip_core:
            print("engine (B=1, in-process)...", flush=True)
            payload["engine"] = {name: engine_timing(path, args.engine_events)
                                 for name, path in artifacts.items()}
            for name, figures in payload["engine"].items():
                print(f"  {name}: non-chunk p50 {figures['non_chunk']['total_ms']['p50']} ms, "
                      f"chunk p50 {figures['chunk']['total_ms']['p50']} ms", flush=True)
            print("state store on embedded Redis (one event at a time)...", flush=True)
            payload["redis"] = store_timing(artifacts["cmnrec"], args.store_events)
            stages = payload["redis"]["stages_ms"]
            print(f"  read p50 {stages.get('state_read', {}).get('p50')} ms, commit p50 "
                  f"{stages['state_write']['p50']} ms", flush=True)
        print("HTTP: cmnrec serve + bench/loadgen.py...", flush=True)
        payload["matrix"] = []
        for workers in worker_counts:
            payload["matrix"] += http_rates(artifacts["cmnrec"], dataset, rates=rates,
                                            duration=args.duration, warmup=args.warmup,
                                            workers=workers, scratch=scratch, label="cmnrec",
                                            variants=variants)
        payload["http"] = payload["matrix"][0]  # bench/report.py reads this one
    busy1 = machine_busy()
    payload["settings"] = {"rates": rates, "duration_s": args.duration, "warmup_s": args.warmup,
                           "workers": worker_counts, "variants": variants, "dims": PAPER_DIMS,
                           "block_len": 50,
                           "slots": 4, "num_items": dataset.num_items, "n": 10,
                           "weights": "random"}
    payload["diagnosis"] = diagnose(payload["matrix"])
    payload["load_average_end"] = load_average()
    payload["machine_busy_during_run"] = busy_fraction(busy0, busy1)
    payload["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    report = markdown(payload)
    args.out.with_suffix(".md").write_text(report)
    print(report)
    print(f"wrote {args.out} and its .md in {payload['seconds']} s")


if __name__ == "__main__":
    main()
