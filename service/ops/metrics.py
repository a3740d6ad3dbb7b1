"""Every Prometheus metric of the service, defined once (names cmnrec_<noun>_<unit>).

Label values come from the Enums in service/ops/labels.py and all label combinations are created up
front. With several uvicorn workers, `cmnrec serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before the workers start, prometheus-client then keeps the values in per-process files,
and `render_latest` merges them (prometheus-client's multiprocess mode).
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.ops.labels import (
    ROUTE_METHODS,
    CacheResult,
    DeadLetterReason,
    ErrorCode,
    EventOutcome,
    RebuildReason,
    Stage,
)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_LATENCY_SECONDS = Histogram(
    "cmnrec_request_latency_seconds", "HTTP request latency by route template and method",
    ["route", "method"], buckets=LATENCY_BUCKETS)
STAGE_LATENCY_SECONDS = Histogram(
    "cmnrec_stage_latency_seconds", "Latency of one stage of handling a request or batch",
    ["stage"], buckets=LATENCY_BUCKETS)
EVENTS_TOTAL = Counter(
    "cmnrec_events_total", "Events handled: applied to a state, or ignored as a repeated event id",
    ["outcome"])
CHUNK_EVENTS_TOTAL = Counter(
    "cmnrec_chunk_events_total",
    "Applied events that fell on a chunk time (memory written and read); divide by "
    "cmnrec_events_total{outcome=\"applied\"} for the chunk-time fraction")
CAS_CONFLICTS_TOTAL = Counter(
    "cmnrec_cas_conflicts_total", "State compare-and-set attempts that lost a race and were retried")
STATE_REBUILDS_TOTAL = Counter(
    "cmnrec_state_rebuilds_total",
    "States rebuilt by replaying the user's stored items (never fed to another model version)",
    ["reason"])
STATE_CACHE_TOTAL = Counter(
    "cmnrec_state_cache_total",
    "Users of an apply call by what the per-process state cache did: hit (no read), stale (the "
    "compare-and-set refused the cached state; also counted in cas_conflicts), miss (read)",
    ["result"])
STATE_BYTES = Histogram(
    "cmnrec_state_bytes", "Size of a committed state blob",
    buckets=tuple(float(2 ** p) for p in range(8, 23)))
BATCH_SIZE_EVENTS = Histogram(
    "cmnrec_batch_size_events", "Events per apply call (POST /v1/events: the coalesced batch)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384))
ENGINE_BATCH_ROWS = Histogram(
    "cmnrec_engine_batch_rows", "Users stepped together in one batched engine call",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096))
MODEL_RELOADS_TOTAL = Counter(
    "cmnrec_model_reloads_total", "Model artifacts swapped in without a restart (SIGHUP or"
    " POST /v1/admin/model/reload); states of the old version are rebuilt lazily")
ERRORS_TOTAL = Counter(
    "cmnrec_errors_total", "Error answers by error code", ["code"])


def _create_label_values() -> None:
    """Create every label combination, so series exist (at 0) before their first event."""
    for route, methods in ROUTE_METHODS.items():
        for method in methods:
            REQUEST_LATENCY_SECONDS.labels(route.value, method.value)
    for stage in Stage:
        STAGE_LATENCY_SECONDS.labels(stage.value)
    for outcome in EventOutcome:
        EVENTS_TOTAL.labels(outcome.value)
    for reason in RebuildReason:
        STATE_REBUILDS_TOTAL.labels(reason.value)
    for result in CacheResult:
        STATE_CACHE_TOTAL.labels(result.value)
    for code in ErrorCode:
        ERRORS_TOTAL.labels(code.value)


_create_label_values()
# The children that every request or batch updates, looked up once (labels() takes a lock and
# builds a key per call): StageTimer.observe and the store's outcome counters use these.
STAGE_LATENCY = {stage.value: STAGE_LATENCY_SECONDS.labels(stage.value) for stage in Stage}
EVENTS_APPLIED = EVENTS_TOTAL.labels(EventOutcome.APPLIED.value)
EVENTS_DUPLICATE = EVENTS_TOTAL.labels(EventOutcome.DUPLICATE.value)


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when multiprocess mode is on, else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render_latest() -> tuple[bytes, str]:
    """The exposition text of all metrics (merged over worker processes) and its content type."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_worker_exit(pid: int) -> None:
    """Multiprocess bookkeeping when a worker process stops (no-op in single-process mode)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)


# -- stream worker (service/streams/worker.py; exposed on its own port). Its applied/duplicate events, CAS
# conflicts and stage latencies go to the metrics above, as the worker applies through the same store.
WORKER_ENTRIES_CONSUMED_TOTAL = Counter(
    "cmnrec_worker_entries_consumed_total", "Stream entries read by the worker (new and reclaimed)")
WORKER_RECLAIMED_ENTRIES_TOTAL = Counter(
    "cmnrec_worker_reclaimed_entries_total",
    "Pending entries of another (crashed) consumer claimed with XAUTOCLAIM")
WORKER_DEAD_LETTERS_TOTAL = Counter(
    "cmnrec_worker_dead_letters_total", "Entries moved to the dead-letter stream, by reason",
    ["reason"])
WORKER_BATCH_FAILURES_TOTAL = Counter(
    "cmnrec_worker_batch_failures_total",
    "Batches that failed (Redis unavailable...) and stayed pending for a retry")
WORKER_BATCH_SIZE_ENTRIES = Histogram(
    "cmnrec_worker_batch_size_entries", "Entries per worker batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384))
WORKER_BATCH_LATENCY_SECONDS = Histogram(
    "cmnrec_worker_batch_latency_seconds",
    "Time from a batch read to its acknowledgement (validate, apply, commit, XACK)",
    buckets=LATENCY_BUCKETS)
WORKER_STREAM_LAG_ENTRIES = Gauge(
    "cmnrec_worker_stream_lag_entries", "Entries of a partition not yet delivered to the group",
    ["partition"], multiprocess_mode="max")
WORKER_PENDING_ENTRIES = Gauge(
    "cmnrec_worker_pending_entries", "Entries of a partition delivered but not yet acknowledged",
    ["partition"], multiprocess_mode="max")
WORKER_BROKEN_PARTITIONS = Gauge(
    "cmnrec_worker_broken_partitions", "1 while an owned partition is set aside because its stream"
    " key holds another Redis type (the other partitions keep flowing)", ["partition"],
    multiprocess_mode="max")
WORKER_LOOP_TIMESTAMP_SECONDS = Gauge(
    "cmnrec_worker_loop_timestamp_seconds", "When the stream worker's loop last completed an"
    " iteration (Unix time); the worker's /healthz fails when it is older than a few seconds",
    multiprocess_mode="max")
WORKER_PARTITIONS_OWNED = Gauge(
    "cmnrec_worker_partitions_owned", "Partitions this worker holds the lease of",
    multiprocess_mode="max")
for _reason in DeadLetterReason:
    WORKER_DEAD_LETTERS_TOTAL.labels(_reason.value)
