"""The stream worker's HTTP endpoint: GET /metrics (Prometheus) and GET /healthz (the loop is alive).

/healthz answers 200 while the worker's loop went round without an error within `max_loop_age_s`
(Redis down, every batch failing or a hung batch answer 503), with the partitions set aside as
broken in the body:
a broken partition is reported there but does not fail the check, because the other partitions
still flow. Listens on settings.worker_metrics_host (127.0.0.1 by default: nothing is published
to the network unless asked for).
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from service.ops import metrics


class WorkerHealthServer:
    """A background HTTP server; `status()` -> (healthy, details) is called per /healthz."""

    def __init__(self, host: str, port: int, status: Callable[[], tuple[bool, dict[str, Any]]]
                 ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] == "/healthz":
                    healthy, details = status()
                    body = json.dumps({"status": "ok" if healthy else "stalled",
                                       **details}).encode()
                    self._answer(200 if healthy else 503, body, "application/json")
                elif self.path.split("?", 1)[0] == "/metrics":
                    body, content_type = metrics.render_latest()
                    self._answer(200, body, content_type)
                else:
                    self._answer(404, b'{"error": "not found"}', "application/json")

            def _answer(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="worker-health",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def loop_status(worker: Any, max_loop_age_s: float) -> Callable[[], tuple[bool, dict[str, Any]]]:
    """The /healthz check of a StreamWorker."""

    def status() -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - worker.last_loop
        return age <= max_loop_age_s, {
            "last_loop_age_s": round(age, 3),
            "partitions_owned": sorted(worker.reader.owned),
            "broken_partitions": {str(p): kind for p, kind in sorted(worker.reader.broken.items())},
        }

    return status
