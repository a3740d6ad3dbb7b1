"""A/B of the state store's per-event CPU, in-process, with the variants interleaved in one run.

What issue 13 changed in the store, toggled one at a time on the same embedded redis-server and
the same paper-size CmnRec (random weights, MovieLens-100k catalogue):
- cache: the per-process state cache (service/state/cache.py) on or off;
- check: what the compare-and-set compares the stored blob with: its header's crc32 + pos
  (GETRANGE, the default) or the SHA-1 of the whole blob (the check before issue 13; the script
  still takes a 40-character digest, used here through a StateRepo whose CAS sends one);
- packer: how redis-py turns commands into bytes: hiredis's C packer (service/state/connection.py,
  the default) or redis-py's asyncio Python packer.
Two shapes of work: "http" = StateStore.apply of one event at a time with n=10 (the HTTP path
without HTTP), users taking turns; "stream" = apply_batch of 1,000 events with n=0, one event
per user (the stream worker's users-take-turns order). The variants run in turn, block after
block, so that a busy machine slows all of them alike. CPU per event: this process (the store,
engine and redis-py) and redis-server (INFO cpu) apart. Like the serving processes, the benchmark
freezes its start-up heap (service/ops/heap.py) before measuring, unless --no-freeze.

    .venv/bin/python bench/store_ab.py [--rounds 4] [--http-events 400] [--stream-events 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    benchmark_dataset,
    markdown_table,
    now_utc,
    save_results,
)
from bench.serving import export_random  # noqa: E402
from bench.stream_worker import interleaved_events  # noqa: E402
from service.state import lua  # noqa: E402
from service.state.repo import CasWrite, StateRepo  # noqa: E402

VARIANTS = {  # name: (state cache users, CAS blob check, command packer)
    "cache+header": (4096, "header", "hiredis"),
    "cache+header+pypack": (4096, "header", "python"),
    "header": (0, "header", "hiredis"),
    "sha1": (0, "sha1", "hiredis"),
}


class Sha1Repo(StateRepo):
    """The compare-and-set as before issue 13: the script hashes the whole stored blob."""

    async def compare_and_set(self, writes: list[CasWrite]) -> list[int]:  # type: ignore[override]
        commands = []
        for w in writes:
            digest = hashlib.sha1(w.read.blob).hexdigest() if w.read.blob is not None else ""
            args: list[Any] = [w.read.pos, w.read.version, digest, w.state, w.version, w.pos,
                               self.ttl_seconds, self.recent_cap, self.event_window]
            for item_id, event_id in w.events:
                args.extend((item_id, event_id))
            commands.append(lambda p, keys=list(w.read.keys), a=args: lua.CAS.queue(p, keys, a))
        replies = self._checked(await self.call(lua.run_pipelined(self.redis, commands)))
        return [int(reply[0]) for reply in replies]


async def measure(url: str, engine: Any, events: list[dict], args: argparse.Namespace
                  ) -> dict[str, Any]:
    from redis.asyncio.connection import Connection

    from service.ops.settings import Settings
    from service.state.connection import open_redis
    from service.state.domain import Event
    from service.state.store import StateStore

    stores, clients = {}, []
    for name, (cache, check, packer) in VARIANTS.items():
        settings = Settings(redis_url=url, key_prefix=f"ab-{abs(hash(name)) % 10**6}",
                            state_cache_users=cache)
        client = open_redis(url, settings)
        if packer == "python":
            client.connection_pool.connection_class = Connection
        clients.append(client)
        store = StateStore.from_settings(client, engine, settings)
        if check == "sha1":
            store.repo = Sha1Repo(client, store.keys, ttl_seconds=0, recent_cap=1000,
                                  event_window=1000)
        stores[name] = store
    as_events = [Event(str(e["user_id"]), str(e["item_id"])) for e in events]
    totals = {(name, shape): [0.0, 0.0, 0] for name in VARIANTS for shape in ("http", "stream")}
    info = clients[0]

    async def redis_cpu() -> float:
        cpu = await info.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    cursor = {name: 0 for name in VARIANTS}
    load = [os.getloadavg()[0]]
    try:
        for name, store in stores.items():  # warm-up: every user stored once, sessions warm
            await store.apply_batch(as_events[:1000])
            cursor[name] = 1000
        for _ in range(args.rounds):
            for shape, size in (("http", args.http_events), ("stream", args.stream_events)):
                for name, store in stores.items():
                    chunk = as_events[cursor[name]:cursor[name] + size]
                    cursor[name] += size
                    redis0, cpu0 = await redis_cpu(), time.process_time()
                    if shape == "http":
                        for event in chunk:
                            await store.apply(event, n=10)
                    else:
                        for start in range(0, len(chunk), 1000):
                            await store.apply_batch(chunk[start:start + 1000])
                    cpu = time.process_time() - cpu0
                    redis = await redis_cpu() - redis0
                    row = totals[(name, shape)]
                    row[0] += cpu
                    row[1] += redis
                    row[2] += len(chunk)
            load.append(os.getloadavg()[0])
        for store in stores.values():
            async for key in store.redis.scan_iter(match=f"{store.keys.prefix}:*", count=1000):
                await store.redis.delete(key)
    finally:
        for client in clients:
            await client.aclose()
    rows = [{"variant": name, "shape": shape, "events": n,
             "client_cpu_us_per_event": round(cpu / n * 1e6, 1),
             "redis_cpu_us_per_event": round(redis / n * 1e6, 1)}
            for (name, shape), (cpu, redis, n) in totals.items()]
    return {"rows": rows, "load_average_1m": [round(x, 2) for x in load]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--http-events", type=int, default=400)
    parser.add_argument("--stream-events", type=int, default=2000)
    parser.add_argument("--no-freeze", action="store_true",
                        help="leave the start-up heap to the garbage collector")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "store_ab.json")
    args = parser.parse_args()
    from model.engine import StepEngine
    from service.ops.redis_server import EmbeddedRedis

    dataset = benchmark_dataset("ml-100k")
    needed = 1000 + args.rounds * (args.http_events + args.stream_events)
    events = interleaved_events(dataset, needed)
    if len(events) < needed:
        parser.error(f"needs {needed} events, the data set has {len(events)}")
    with tempfile.TemporaryDirectory(prefix="cmnrec-ab-") as scratch, EmbeddedRedis() as server:
        artifact = export_random(Path(scratch), "cmnrec", dataset, model="cmnrec", rule="tsc")
        engine = StepEngine.load(artifact)
        if not args.no_freeze:
            from service.ops.heap import freeze_startup_heap

            freeze_startup_heap()
        figures = asyncio.run(measure(server.url, engine, events, args))
    payload = {"benchmark": "store_ab", "date": now_utc(), "settings": vars(args) | {
        "out": str(args.out)}, "variants": {k: {"cache_users": c, "check": v, "packer": p}
                                            for k, (c, v, p) in VARIANTS.items()}, **figures}
    table = markdown_table(
        ["shape", "variant", "events", "store process CPU µs/event", "redis-server CPU µs/event"],
        [[r["shape"], r["variant"], r["events"], f"{r['client_cpu_us_per_event']:.0f}",
          f"{r['redis_cpu_us_per_event']:.0f}"]
         for r in sorted(figures["rows"], key=lambda r: r["shape"])])
    markdown = (f"# State store A/B, in-process ({payload['date']})\n\n"
                f"Paper-size CmnRec TSC, embedded Redis. http = `StateStore.apply` one event at a "
                f"time, n=10; stream = `apply_batch` of 1,000 events, n=0, one event per user. "
                f"Variants (state cache users, CAS check, command packer): "
                f"{'; '.join(f'{k} = {c}, {v}, {p}' for k, (c, v, p) in VARIANTS.items())}. "
                f"Variants interleaved, {args.rounds} rounds; start-up heap "
                f"{'left to the GC' if args.no_freeze else 'frozen'}. 1-minute load average during the "
                f"run: {figures['load_average_1m']} (2 cores).\n\n{table}\n")
    save_results(args.out, payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
