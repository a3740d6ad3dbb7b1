"""Shared pieces of the serving benchmarks (bench/serve_core.py, bench/serve.py).

- random-weight exports of paper-size models over the MovieLens-100k catalogue (timing needs no
  training: the work per event does not depend on the weights);
- `ServedModel`: a real `cmnrec serve` (uvicorn, embedded redis-server) in its own process group,
  stopped with SIGTERM and checked to leave no process behind;
- `run_load`: bench/loadgen.py in a separate process at a constant arrival rate, summarised;
- CPU accounting from /proc (the server's process tree, the whole machine) and percentiles.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np
import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
PAPER_DIMS = {"embed_dim": 128, "hidden_dim": 256, "mem_width": 256, "attn_dim": 64,
              "read_heads": 1}  # k, H, W, b, R of the paper
PERCENTILES = (50, 90, 99, 99.9)


# -- models ----------------------------------------------------------------------------------------
def export_random(root: Path, name: str, dataset: Any, *, model: str, rule: str, slots: int = 4,
                  block_len: int = 50, dims: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Export a random-weight network over the data set's vocabulary; returns the artifact dir."""
    import torch

    from model.config import ModelConfig
    from model.network import build_model
    from training.checkpoint import save_run
    from training.export_run import export_run

    config = ModelConfig(num_items=dataset.num_items, model=model, rule=rule, slots=slots,
                         block_len=block_len, **(dims or PAPER_DIMS))
    torch.manual_seed(seed)
    run_dir = save_run(root / "runs" / name, build_model(config), dataset.vocab,
                       dataset.item_counts(), {"benchmark": "serve", "weights": "random"}).parent
    return Path(export_run(run_dir, root / "artifacts" / name))


def phased_pairs(dataset: Any, block_len: int, seed: int = 0
                 ) -> tuple[list[list[str]], list[list[str]]]:
    """MovieLens events split into a warm-up part and a load part, as [user_id, item_id] pairs.

    Each user's first k_u events (k_u uniform in 0..min(T, length) - 1) are the warm-up: applied
    before measuring, they spread the users over the chunk schedule, so that the load meets chunk
    times as often as a live service does (4 in 50 events for CmnRec M=4) instead of every user
    starting at position 0. The load part is the rest, users taking turns (each user's own events
    in time order): many users in flight at once rather than the data set's rating sessions.
    Both lists are turn-major: the k-th event of every user before any (k+1)-th.
    """
    from service.streams.replay import dataset_events

    per_user: dict[str, list[str]] = {}
    for event in dataset_events(dataset):
        per_user.setdefault(str(event["user_id"]), []).append(str(event["item_id"]))
    rng = np.random.default_rng(seed)
    warm, rest = [], []
    for user, items in per_user.items():
        k = int(rng.integers(0, min(block_len, len(items))))
        warm.append((user, items[:k]))
        rest.append((user, items[k:]))
    return _turns(warm), _turns(rest)


def _turns(queues: list[tuple[str, list[str]]]) -> list[list[str]]:
    longest = max((len(items) for _, items in queues), default=0)
    return [[user, items[turn]] for turn in range(longest) for user, items in queues
            if turn < len(items)]


def warm_users(url: str, pairs: list[list[str]], batch: int = 1000) -> int:
    """Apply the warm-up events through POST /v1/events/batch (n=0); returns events applied."""
    applied = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(pairs), batch):
            chunk = pairs[start:start + batch]
            events = [{"user_id": u, "item_id": i, "event_id": f"warm:{start + j}"}
                      for j, (u, i) in enumerate(chunk)]
            response = client.post("/v1/events/batch", params={"n": 0}, json={"events": events})
            response.raise_for_status()
            applied += sum(1 for r in response.json()["results"] if r["applied"])
    return applied


# -- processes -------------------------------------------------------------------------------------
def process_tree(pid: int) -> set[int]:
    """`pid` and every live process below it."""
    try:
        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds consumed so far by these processes (those still alive)."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of the machine's CPU time that was busy between two machine_busy() readings."""
    return round((after[0] - before[0]) / max(after[1] - before[1], 1.0), 3)


def stop_tree(process: subprocess.Popen, tree: set[int], timeout: float = 30.0) -> list[int]:
    """SIGTERM `process` (it stops its own children), wait; SIGKILL whatever of `tree` is left.
    Returns the pids that had to be killed."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 5.0
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = []
    for pid in tree:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    if process.poll() is None:
        process.wait()
    return killed


class ServedModel:
    """`cmnrec serve --artifact A --workers K` (embedded Redis), a subprocess; a context manager."""

    def __init__(self, artifact: Path, *, port: int, workers: int = 1,
                 log_path: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.artifact, self.port, self.workers = artifact, port, workers
        self.extra_env = env or {}
        self.url = f"http://127.0.0.1:{port}"
        self._own_log = log_path is None  # a temporary log, removed on exit
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="cmnrec-serve-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._tree: set[int] = set()

    def __enter__(self) -> "ServedModel":
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CMNREC_REDIS_URL")}
        env.update(self.extra_env)
        command = [str(Path(sys.executable).parent / "cmnrec"), "serve", "--artifact",
                   str(self.artifact), "--port", str(self.port), "--workers", str(self.workers),
                   "--log-level", "warning"]
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        self._tree = process_tree(self.process.pid)
        return self

    def _wait_ready(self, timeout: float = 120.0) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cmnrec serve exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"cmnrec serve not ready after {timeout:.0f}s")

    def pids(self) -> set[int]:
        """The serve command, its uvicorn workers and its redis-server."""
        assert self.process is not None
        self._tree |= process_tree(self.process.pid)
        return {p for p in self._tree if _alive(p)}

    def redis_url(self) -> str:
        """The embedded Redis's URL, read from the command's own announcement in its log."""
        for line in self.log_path.read_text().splitlines():
            if "embedded redis-server at " in line:
                return line.split("embedded redis-server at ", 1)[1].split()[0]
        raise RuntimeError("cmnrec serve did not announce its embedded Redis")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            tree = self._tree | process_tree(self.process.pid)
            killed = stop_tree(self.process, tree)
            if killed:
                print(f"warning: SIGKILLed leftover processes {killed}", file=sys.stderr)
        with contextlib.suppress(AttributeError):
            self._log.close()
        if self._own_log:
            self.log_path.unlink(missing_ok=True)


# -- load ------------------------------------------------------------------------------------------
def percentiles(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:  # None, not NaN: the result files stay strict JSON
        return {f"p{p:g}": None for p in PERCENTILES} | {"mean": None, "max": None}
    out = {f"p{p:g}": float(np.percentile(values, p)) for p in PERCENTILES}
    out["mean"] = float(values.mean())
    out["max"] = float(values.max())
    return {k: round(v, 4) for k, v in out.items()}


def cdf_points(values: Sequence[float], points: int = 200) -> list[list[float]]:
    """[[latency ms, fraction <= it], ...] at `points` quantiles plus the tail (the CDF plot)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        return []
    qs = np.unique(np.concatenate([np.linspace(0, 1, points), 1 - np.logspace(-4, -1, 40)]))
    return [[round(float(np.quantile(values, q)), 4), round(float(q), 5)] for q in qs]


def run_load(server: ServedModel, events_file: Path, *, rate: float, duration: float,
             warmup: float, n: int = 10, connections: int = 64, run_id: str = "load",
             offset: int = 0, scratch: Path) -> dict[str, Any]:
    """Drive the server from a separate loadgen process; summarise latencies, throughput, CPU."""
    out = scratch / f"load-{run_id}.json"
    command = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--url", server.url, "--events",
               str(events_file), "--rate", str(rate), "--duration", str(duration), "--warmup",
               str(warmup), "--n", str(n), "--connections", str(connections), "--run-id", run_id,
               "--offset", str(offset), "--out", str(out)]
    server_pids = server.pids()
    cpu_before, busy_before = cpu_seconds(server_pids), machine_busy()
    generator = subprocess.Popen(command, cwd=REPO_ROOT, start_new_session=True)
    try:
        generator.wait(timeout=duration + warmup + 120)
    finally:
        if generator.poll() is None:
            stop_tree(generator, process_tree(generator.pid), timeout=5)
    if generator.returncode != 0:
        raise RuntimeError(f"loadgen exited with {generator.returncode}")
    cpu_after, busy_after = cpu_seconds(server.pids()), machine_busy()
    result = json.loads(out.read_text())
    out.unlink()
    return summarise(result, server_cpu_s=cpu_after - cpu_before,
                     machine_busy=busy_fraction(busy_before, busy_after))


def summarise(result: dict[str, Any], *, server_cpu_s: float,
              machine_busy: float) -> dict[str, Any]:
    """Figures of one load run (requests due during the warm-up left out)."""
    records = [r for r in result["records"] if r[1] >= result["warmup_s"]]
    ok = [r for r in records if r[4] == 200]
    latency = [r[2] for r in records]  # from the due time; failed requests count too
    first_due = min((r[1] for r in records), default=0.0)
    last_done = max((r[1] + r[2] / 1e3 for r in records), default=0.0)
    window = max(last_done - first_due, 1e-9)
    errors: dict[str, int] = {}
    for r in records:
        if r[4] != 200:
            errors[str(r[4])] = errors.get(str(r[4]), 0) + 1
    stages: dict[str, dict[str, Any]] = {}
    for label, chunk in (("chunk", True), ("non_chunk", False)):
        rows = [r[6] for r in ok if r[5] is chunk and r[6]]
        names = sorted({k for row in rows for k in row})
        stages[label] = {"events": len(rows),
                         **{name: percentiles([row.get(name, 0.0) for row in rows])
                            for name in names}}
    elapsed = result["elapsed_s"]
    return {
        "offered_rate": result["rate"], "requests": len(records), "ok": len(ok), "errors": errors,
        "throughput_rps": round(len(ok) / window, 1),
        "latency_ms": percentiles(latency),
        "service_ms": percentiles([r[3] for r in records]),
        "cdf": cdf_points(latency),
        "server_stages_ms": stages,
        "chunk_fraction": round(sum(1 for r in ok if r[5]) / max(len(ok), 1), 4),
        "connections": result["connections"], "n": result["n"],
        "duration_s": result["duration_s"], "warmup_s": result["warmup_s"],
        "generator_cpu_fraction": round(result["generator_cpu_fraction"], 3),
        "generator_send_lag_ms": {"p50": round(result["send_lag_ms_p50"], 3),
                                  "p99": round(result["send_lag_ms_p99"], 3),
                                  "max": round(result["send_lag_ms_max"], 3)},
        "server_cpu_fraction": round(server_cpu_s / elapsed, 3) if elapsed else None,
        "machine_busy_fraction": round(machine_busy, 3),
    }


def write_events_file(path: Path, pairs: list[list[str]]) -> Path:
    path.write_text(json.dumps({"events": pairs}))
    return path


def busy_processes(interval: float = 1.0, limit: int = 6) -> list[str]:
    """The processes using CPU right now ("%CPU command" over `interval` seconds, from /proc), to
    tell who else was loading the machine."""
    def sample() -> dict[int, float]:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
        return {pid: cpu_seconds({pid}) for pid in pids}

    before = sample()
    time.sleep(interval)
    after = sample()
    usage = sorted(((after[p] - before[p]) / interval, p) for p in after if p in before)[::-1]
    out = []
    for share, pid in usage[:limit]:
        if share < 0.02:
            break
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        out.append(f"{100 * share:.0f}% {args[:120]}")
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmnrec-serve-bench-") as scratch:
        yield Path(scratch)
