"""Where the CPU of one POST /v1/events?n=10 goes: py-spy on a running `cmnrec serve` under load.

A real `cmnrec serve` (one uvicorn worker, embedded Redis) serves a random-weight paper-size CmnRec
(bench/serving.py); users are spread over the chunk schedule first, then bench/loadgen.py sends
POST /v1/events?n=10 at a constant rate while py-spy samples the uvicorn process (non-blocking,
100 Hz): one flame graph (SVG) and one collapsed-stack file. Every sample is charged to the first
known frame from the leaf up (onnxruntime, codec, top-N, redis-py, pydantic, prometheus, ...), so
the shares add up to the process's busy time; with the CPU per request measured in the same run,
they become milliseconds per request. Writes bench/results/profile_<label>.{svg,json}.

    .venv/bin/python bench/profile_serve.py --label before [--rate 300] [--duration 20]
    .venv/bin/python bench/profile_serve.py --label after --env CMNREC_COALESCE=false
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, benchmark_dataset, now_utc  # noqa: E402
from bench.serving import (  # noqa: E402
    ServedModel,
    cpu_seconds,
    export_random,
    load_average,
    phased_pairs,
    run_load,
    scratch_dir,
    warm_users,
    write_events_file,
)

# (category, substrings of a frame "function (file:line)"), tried in this order from the leaf up
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("ORT (onnxruntime run)", ("onnxruntime",)),
    ("state codec", ("model/codec.py",)),
    ("top-N", ("model/ranking.py", "top_n")),
    ("engine glue", ("model/engine.py",)),
    ("prometheus metrics", ("prometheus_client",)),
    ("pydantic / FastAPI (de)serialisation", ("pydantic", "fastapi/routing.py",
                                              "fastapi/encoders.py", "fastapi/dependencies",
                                              "json/", "orjson", "msgspec")),
    ("redis-py + hiredis", ("redis/",)),
    ("Lua runner / repo", ("service/state/lua.py", "service/state/repo.py")),
    ("store algorithm", ("service/state/",)),
    ("routes / coalescer", ("service/http/",)),
    ("HTTP stack (uvicorn, starlette, httptools)", ("uvicorn", "starlette", "httptools", "h11")),
    ("event loop (asyncio / uvloop)", ("asyncio", "uvloop")),
]


def categorise(collapsed: Path) -> dict[str, Any]:
    """Share of samples per category from py-spy's collapsed stacks ("a;b;c count")."""
    counts: Counter[str] = Counter()
    frames_hit: Counter[str] = Counter()  # the frame each sample was charged at
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in reversed(frames):
            category = next((name for name, keys in CATEGORIES
                             if any(k in frame for k in keys)), None)
            if category is not None:
                counts[category] += samples
                frames_hit[f"{category}: {frame}"] += samples
                break
        else:
            counts["other (interpreter, idle-loop bookkeeping)"] += samples
            frames_hit[f"other: {frames[-1]}"] += samples
    return {"samples": total,
            "share": {k: round(v / max(total, 1), 4) for k, v in counts.most_common()},
            "top_frames": {k: round(v / max(total, 1), 4) for k, v in frames_hit.most_common(40)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="names the output files")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    env = dict(item.split("=", 1) for item in args.env)
    dataset = benchmark_dataset("ml-100k")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    svg = RESULTS_DIR / f"profile_{args.label}.svg"
    with scratch_dir() as scratch:
        artifact = export_random(scratch, "cmnrec", dataset, model="cmnrec", rule="tsc")
        warm, load = phased_pairs(dataset, 50)
        events_file = write_events_file(scratch / "events.json", load)
        with ServedModel(artifact, port=_free_port(), workers=1, env=env,
                         log_path=scratch / "serve.log") as server:
            warm_users(server.url, warm)
            tree = server.pids()
            redis_pids = {p for p in tree if "redis" in _name(p)}
            worker = server.process.pid  # workers=1: uvicorn serves in the `cmnrec serve` process
            collapsed = scratch / "stacks.txt"
            spies = [subprocess.Popen([py_spy, "record", "--nonblocking", "--rate", "100",
                                       "--pid", str(worker), "--duration",
                                       str(int(args.duration)), "--format", fmt, "--output",
                                       str(path)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
                     for fmt, path in (("flamegraph", svg), ("raw", collapsed))]
            load_start = load_average()
            service0, redis0 = cpu_seconds(tree - redis_pids), cpu_seconds(redis_pids)
            summary = run_load(server, events_file, rate=args.rate, duration=args.duration,
                               warmup=1.0, run_id=args.label, scratch=scratch)
            service_cpu = cpu_seconds(tree - redis_pids) - service0
            redis_cpu = cpu_seconds(redis_pids) - redis0
            for spy in spies:
                spy.wait(timeout=120)
            profile = categorise(collapsed)
    requests = summary["requests"] + int(args.rate)  # the warm-up second is served too
    service_ms = service_cpu / requests * 1e3
    payload = {
        "benchmark": "profile_serve", "label": args.label, "date": now_utc(), "env": env,
        "rate": args.rate, "duration_s": args.duration, "load_average_start": load_start,
        "load_average_end": load_average(),
        "throughput_rps": summary["throughput_rps"], "latency_ms": summary["latency_ms"],
        "errors": summary["errors"],
        "service_cpu_ms_per_request": round(service_ms, 3),
        "redis_cpu_ms_per_request": round(redis_cpu / requests * 1e3, 3),
        "profile": profile,
        "service_cpu_ms_per_request_by_category": {
            k: round(v * service_ms, 3) for k, v in profile["share"].items()},
        "flame_graph": svg.name,
    }
    out = RESULTS_DIR / f"profile_{args.label}.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps({k: payload[k] for k in ("service_cpu_ms_per_request",
                                              "redis_cpu_ms_per_request", "throughput_rps",
                                              "load_average_start",
                                              "service_cpu_ms_per_request_by_category")},
                     indent=1))
    print(f"wrote {out} and {svg}")


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _free_port() -> int:
    from service.ops.redis_server import free_port

    return free_port()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
