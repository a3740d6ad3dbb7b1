"""Open-loop load generator for POST /v1/events: constant arrival rate, no coordinated omission.

Run as its own process (the benchmarks start it with `python bench/loadgen.py ...`), so that its
CPU use is visible and separate from the server's. Request i is due at `start + i / rate`, whether
or not earlier answers came back; its latency is measured from that due time (not from when the
generator managed to send it), so a server that stalls is charged for every request that waited,
as wrk2 and HdrHistogram's "corrected" figures do. Requests go over --connections keep-alive
connections (one aiohttp session); a request finding every connection busy waits for one, and that
wait counts. aiohttp rather than httpx: on this machine httpx costs about 1.5 ms of client CPU per
request and aiohttp about 0.25 ms; at 500 requests/s on 2 cores that difference is most of a core.

Input: a JSON file `{"events": [[user_id, item_id], ...]}` used in order from --offset (cycled if
too short); each request gets event id `<run-id>:<i>`. Output (--out): JSON with one record per
request and the generator's own figures (CPU seconds, how late it sent). Requests due during
--warmup seconds are sent but flagged, and the benchmarks leave them out of the statistics.

    python bench/loadgen.py --url http://127.0.0.1:8000 --events events.json --rate 500 \
        --duration 20 --warmup 3 --out result.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp


def _body(user_id: str, item_id: str, event_id: str) -> bytes:
    return json.dumps({"user_id": user_id, "item_id": item_id, "event_id": event_id}).encode()


async def _sender(session: aiohttp.ClientSession, url: str, queue: asyncio.Queue,
                  events: list[list[str]], offset: int, run_id: str, records: list[Any]) -> None:
    """One keep-alive connection: take the next due request, send it, record it, repeat.

    A record: [i, due offset s, latency ms from due, latency ms from send, status, chunk_time,
    server latency_ms dict]."""
    headers = {"content-type": "application/json"}
    while True:
        job = await queue.get()
        if job is None:
            return
        index, due = job
        user, item = events[(offset + index) % len(events)]
        body = _body(user, item, f"{run_id}:{index}")
        sent = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                status = response.status
                payload = json.loads(await response.read()) if status == 200 else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
            status, payload = -1, {"error": type(error).__name__}
        done = time.perf_counter()
        chunk = payload.get("chunk_time") if isinstance(payload, dict) else None
        stages = payload.get("latency_ms") if isinstance(payload, dict) else None
        records[index] = [index, due, (done - due) * 1e3, (done - sent) * 1e3, status, chunk,
                          stages]


async def run(url: str, events: list[list[str]], rate: float, duration: float, warmup: float,
              n: int, connections: int, run_id: str, timeout: float,
              offset: int = 0) -> dict[str, Any]:
    total = int(round(rate * (duration + warmup)))
    base = url.rstrip("/")
    records: list[Any] = [None] * total
    send_lag: list[float] = []  # how late the generator put each request up for sending (ms)
    queue: asyncio.Queue = asyncio.Queue()  # due requests wait here until a sender is free
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        # open the connections before the clock starts, so the first requests do not pay for it
        async def touch() -> None:
            async with session.get(f"{base}/healthz") as response:
                await response.read()

        await asyncio.gather(*(touch() for _ in range(connections)))
        senders = [asyncio.create_task(_sender(session, f"{base}/v1/events?n={n}", queue, events,
                                               offset, run_id, records))
                   for _ in range(connections)]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter() + 0.05
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            send_lag.append(max(0.0, time.perf_counter() - due) * 1e3)
            queue.put_nowait((i, due))
        for _ in senders:
            queue.put_nowait(None)
        await asyncio.gather(*senders)
        elapsed = time.perf_counter() - start
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for record in records:
        record[1] -= start
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    send_lag.sort()
    return {
        "url": url, "rate": rate, "duration_s": duration, "warmup_s": warmup, "n": n,
        "connections": connections, "requests": total, "elapsed_s": elapsed,
        "generator_cpu_s": cpu, "generator_cpu_fraction": cpu / elapsed if elapsed else 0.0,
        "send_lag_ms_p50": send_lag[len(send_lag) // 2] if send_lag else 0.0,
        "send_lag_ms_p99": send_lag[int(0.99 * (len(send_lag) - 1))] if send_lag else 0.0,
        "send_lag_ms_max": send_lag[-1] if send_lag else 0.0,
        "fields": ["index", "due_s", "latency_ms", "service_ms", "status", "chunk_time",
                   "server_latency_ms"],
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a running `cmnrec serve`")
    parser.add_argument("--events", type=Path, required=True,
                        help='JSON file {"events": [[user_id, item_id], ...]}')
    parser.add_argument("--rate", type=float, required=True, help="requests per second (> 0)")
    parser.add_argument("--duration", type=float, required=True, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds sent before measuring")
    parser.add_argument("--n", type=int, default=10, help="recommendations asked per event")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--offset", type=int, default=0, help="index of the first event used")
    parser.add_argument("--run-id", default="load", help="prefix of the generated event ids")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if (args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.connections < 1
            or args.offset < 0):
        parser.error("--rate and --duration must be > 0, --warmup and --offset >= 0, "
                     "--connections >= 1")
    events = json.loads(args.events.read_text())["events"]
    if not events:
        parser.error(f"--events: {args.events} holds no events")
    result = asyncio.run(run(args.url, events, args.rate, args.duration, args.warmup, args.n,
                             args.connections, args.run_id, args.timeout, args.offset))
    args.out.write_text(json.dumps(result))
    ok = sum(1 for r in result["records"] if r[4] == 200)
    print(f"loadgen: {result['requests']} requests at {args.rate:g}/s, {ok} ok, "
          f"generator CPU {100 * result['generator_cpu_fraction']:.0f}%", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
