"""Issue 12, probe 3 measured: a 100 MB POST /v1/events/batch against `cmnrec serve` (one worker,
embedded Redis, a tiny random-weight model), with the body limit on.

For a body announced by Content-Length and for a chunked body (no length): the time until the 413,
the bytes the client got to send, the server's peak RSS (sampled every 10 ms) against its RSS
before, and the slowest /healthz answer while it happened. Writes bench/results/hardening.json and .md.

    python -m bench.hardening [--megabytes 100]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import RESULTS_DIR, machine_info, markdown_table, now_utc, save_results

CHUNK = 64 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_rss(pid: int) -> int:
    """RSS of the serving process and its children, less the embedded redis-server."""
    try:
        root = psutil.Process(pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            if "redis-server" not in " ".join(proc.cmdline()):
                total += proc.memory_info().rss
        return total
    except psutil.NoSuchProcess:
        return 0


class Sampler:
    """Peak RSS of the server and the slowest /healthz, sampled in background threads."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.peak_rss = 0
        self.slowest_healthz = 0.0
        self.healthz_failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss, daemon=True),
                         threading.Thread(target=self._healthz, daemon=True)]

    def __enter__(self) -> "Sampler":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
            time.sleep(0.01)

    def _healthz(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    client.get(f"{self.url}/healthz")
                except httpx.HTTPError:
                    self.healthz_failures += 1
                self.slowest_healthz = max(self.slowest_healthz, time.perf_counter() - started)
                time.sleep(0.02)


def send(url: str, total: int, chunked: bool) -> dict[str, Any]:
    """POST `total` bytes of one JSON batch; the answer (or the connection error) and its time."""
    sent = 0

    def body() -> Any:
        """Exactly `total` bytes: a batch's opening, then blanks (never parsed under the limit)."""
        nonlocal sent
        head = b'{"events": ['
        sent += len(head)
        yield head
        block = b" " * CHUNK
        while sent < total:
            piece = block[:min(CHUNK, total - sent)]
            sent += len(piece)
            yield piece

    headers = {"content-type": "application/json"}
    if not chunked:
        headers["content-length"] = str(total)
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=120) as client:
            response = client.post(f"{url}/v1/events/batch", content=body(), headers=headers)
        outcome = {"status": response.status_code,
                   "code": response.json().get("error", {}).get("code")}
    except (httpx.HTTPError, OSError) as error:  # the server answered and closed meanwhile
        outcome = {"status": None, "code": f"client: {type(error).__name__}"}
    return {**outcome, "seconds": time.perf_counter() - started, "client_sent_bytes": sent}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args(argv)
    total = args.megabytes * 1024 * 1024

    from tests.service.helpers import make_artifact

    with tempfile.TemporaryDirectory() as tmp:
        artifact = make_artifact(Path(tmp), "bench")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CMNREC_REDIS_URL")}
        server = subprocess.Popen(
            [sys.executable, "-m", "cli.app", "serve", "--artifact", str(artifact), "--port",
             str(port), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and server.poll() is None, "server not ready"
                time.sleep(0.1)
            rows = []
            for chunked in (False, True):
                rss_before = tree_rss(server.pid)
                with Sampler(server.pid, url) as sampler:
                    result = send(url, total, chunked)
                    time.sleep(0.2)
                rows.append({"body": "chunked" if chunked else "content-length",
                             "megabytes": args.megabytes, **result,
                             "server_rss_before_mb": rss_before / 2**20,
                             "server_rss_peak_mb": sampler.peak_rss / 2**20,
                             "slowest_healthz_s": sampler.slowest_healthz,
                             "healthz_failures": sampler.healthz_failures})
        finally:
            server.terminate()
            server.wait(timeout=30)
    payload = {"benchmark": "hardening: oversized body", "created": now_utc(),
               "machine": machine_info(), "max_body_bytes": 4 * 1024 * 1024, "runs": rows}
    table = markdown_table(
        ["body", "MB", "answer", "seconds to answer", "client sent MB", "server RSS before/peak MB",
         "slowest /healthz s"],
        [[r["body"], r["megabytes"], f'{r["status"]} {r["code"]}', f'{r["seconds"]:.3f}',
          f'{r["client_sent_bytes"] / 2**20:.1f}',
          f'{r["server_rss_before_mb"]:.0f} / {r["server_rss_peak_mb"]:.0f}',
          f'{r["slowest_healthz_s"]:.3f}'] for r in rows])
    markdown = ("# Oversized request body (issue 12, probe 3)\n\n`python -m bench.hardening"
                f" --megabytes {args.megabytes}`; CMNREC_MAX_BODY_BYTES at its default (4 MiB).\n\n"
                + table + "\n\nThe client (httpx) writes the whole body before it reads the answer,"
                " so 'seconds to answer' includes pushing every byte over loopback; the server"
                " does not keep or parse them (RSS flat) and /healthz stays answered. Before the"
                " limit the issue measured 13-16 s, 2.5 GB peak RSS and /healthz blocked 10.8 s"
                " for the same 100 MB.\n")
    json_path, md_path = save_results(RESULTS_DIR / "hardening.json", payload, markdown)
    print(markdown)
    print(f"saved {json_path} and {md_path}")


if __name__ == "__main__":
    main()
