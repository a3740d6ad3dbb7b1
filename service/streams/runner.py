"""One stream-worker process: load the artifact, connect, run a StreamWorker until a signal."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading

from service.ops.heap import freeze_startup_heap
from service.ops.settings import Settings
from service.state.cluster import check_redis_version
from service.state.connection import open_redis
from service.state.store import StateStore
from service.streams.worker import StreamWorker, WorkerTotals

log = logging.getLogger(__name__)


async def run_worker(settings: Settings, redis_url: str, *, consumer: str | None = None,
                     metrics_port: int | None = None,
                     stop: asyncio.Event | None = None) -> WorkerTotals:
    """Load the artifact, connect, and run one StreamWorker until SIGTERM/SIGINT (or `stop`).

    On a signal the batch in flight is finished and acknowledged, the leases are handed back, and
    the connections are closed. metrics_port: serve /metrics and /healthz there (0 or None: do
    not), on settings.worker_metrics_host (service/streams/health.py).
    """
    from model.engine import StepEngine
    from service.streams.health import WorkerHealthServer, loop_status

    if settings.stream_block_ms >= settings.redis_timeout_seconds * 1000:
        raise ValueError(f"stream_block_ms: {settings.stream_block_ms} ms must be shorter than the "
                         f"Redis socket timeout ({settings.redis_timeout_seconds} s)")
    engine = StepEngine.load(settings.artifact_dir, threads=settings.engine_threads)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    client = open_redis(redis_url, settings)
    health_server = None
    try:
        await check_redis_version(client)  # too old: UnsupportedRedis, before reading anything
        store = StateStore.from_settings(client, engine, settings)
        worker = StreamWorker(client, store, settings, consumer)
        if metrics_port:
            # stale after several block/backoff periods and a slow batch
            max_age = max(10.0, 4 * settings.stream_retry_backoff_seconds,
                          4 * settings.stream_block_ms / 1000, settings.stream_claim_min_idle_ms / 1000)
            health_server = WorkerHealthServer(settings.worker_metrics_host, metrics_port,
                                               loop_status(worker, max_age))
            log.info("worker /metrics and /healthz on %s:%d", settings.worker_metrics_host,
                     health_server.port)
        log.debug("froze %d start-up objects", freeze_startup_heap())
        await worker.run(stop)
        return worker.totals
    finally:
        await client.aclose()
        if health_server is not None:
            health_server.close()
        for signum in installed:
            loop.remove_signal_handler(signum)
