"""Replaying a data set's interactions into the service: into the event streams, or over HTTP.

`dataset_events` turns per-user sequences into one time-ordered list of events with deterministic
event ids (`<data set>:<user>:<index>`), so replaying the same data twice applies nothing twice.
`publish_replay` pushes them into the partitioned streams (service/streams/publish.py); `drive_http` posts
them to a running API, keeping each user's events in order while several requests are in flight.
Torch-free (used by `cmnrec replay` in the serving install).
"""
from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import redis

from data.dataset import SequenceDataset
from service.streams.publish import publish_events

PUBLISH_CHUNK = 1000  # events per pipelined round trip to Redis


def dataset_events(dataset: SequenceDataset, *, limit: int | None = None,
                   users: Sequence[str] | None = None) -> list[dict[str, object]]:
    """The data set's events in time order: [{user_id, item_id, event_id, timestamp}].

    Ties (equal timestamps, or no timestamps at all) keep each user's own order and interleave users
    by their order in the data set. `users` keeps only those users (in the data set's user order;
    an id that is not in the data set raises ValueError); `limit` keeps the first `limit` events.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit: must be >= 0, got {limit}")
    index_of = {user: i for i, user in enumerate(dataset.users)}
    if users is not None:
        missing = [u for u in users if u not in index_of]
        if missing:
            raise ValueError(f"users: not in data set {dataset.name!r}: {', '.join(missing[:5])}")
        chosen = sorted({index_of[u] for u in users})
    else:
        chosen = list(range(len(dataset.users)))
    rows: list[tuple[float, int, int]] = []  # (timestamp, position in user, user index)
    for u in chosen:
        length = len(dataset.sequences[u])
        stamps = (dataset.timestamps[u] if dataset.timestamps is not None
                  else np.arange(length, dtype=np.float64))
        rows.extend((float(stamps[i]), i, u) for i in range(length))
    # Sort by time; within one user timestamps are non-decreasing, so (time, position) keeps order.
    rows.sort(key=lambda row: (row[0], row[1], row[2]))
    if limit is not None:
        rows = rows[:limit]
    name = Path(dataset.name).name or dataset.name
    has_time = dataset.timestamps is not None
    vocab = dataset.vocab
    return [{"user_id": dataset.users[u], "item_id": vocab.decode(int(dataset.sequences[u][i])),
             "event_id": f"{name}:{dataset.users[u]}:{i}",
             "timestamp": stamp if has_time else None}
            for stamp, i, u in rows]


def publish_replay(client: redis.Redis, events: Sequence[dict[str, object]], *, partitions: int,
                   prefix: str = "cmnrec",
                   on_progress: Callable[[int], None] | None = None) -> int:
    """XADD the events into the partitioned streams in order, PUBLISH_CHUNK per round trip."""
    for start in range(0, len(events), PUBLISH_CHUNK):
        chunk = events[start:start + PUBLISH_CHUNK]
        publish_events(client, chunk, partitions=partitions, prefix=prefix)
        if on_progress is not None:
            on_progress(len(chunk))
    return len(events)


@dataclass
class HttpReplayReport:
    """What `drive_http` measured."""

    events: int = 0
    applied: int = 0
    duplicates: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error code (or HTTP status) -> count
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # one per request

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


async def drive_http(base_url: str, events: Sequence[dict[str, object]], *, batch_size: int = 100,
                     api_key: str | None = None,
                     concurrency: int = 8, timeout_s: float = 30.0,
                     on_progress: Callable[[int], None] | None = None) -> HttpReplayReport:
    """Post the events to a running API: POST /v1/events (batch_size 1) or /v1/events/batch.

    Users are split over `concurrency` senders by crc32(user) mod concurrency; each sender posts its
    users' events in order and waits for each answer, so one user's events are applied in order.
    """
    if batch_size < 1 or concurrency < 1:
        raise ValueError("batch_size and concurrency must be >= 1")
    lanes: list[list[dict[str, object]]] = [[] for _ in range(concurrency)]
    for event in events:
        lanes[zlib.crc32(str(event["user_id"]).encode("utf-8")) % concurrency].append(event)
    report = HttpReplayReport()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"X-API-Key": api_key} if api_key else None
    async with httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers,
                                 limits=limits) as client:

        async def send(lane: list[dict[str, object]]) -> None:
            for start in range(0, len(lane), batch_size):
                chunk = lane[start:start + batch_size]
                tic = time.perf_counter()
                if batch_size == 1:
                    response = await client.post("/v1/events", params={"n": 0}, json=chunk[0])
                else:
                    response = await client.post("/v1/events/batch", params={"n": 0},
                                                 json={"events": chunk})
                report.latencies_ms.append((time.perf_counter() - tic) * 1000.0)
                report.requests += 1
                report.events += len(chunk)
                _count_answer(report, response, len(chunk))
                if on_progress is not None:
                    on_progress(len(chunk))

        started = time.perf_counter()
        await asyncio.gather(*(send(lane) for lane in lanes if lane))
        report.seconds = time.perf_counter() - started
    return report


def _count_answer(report: HttpReplayReport, response: httpx.Response, sent: int) -> None:
    if response.status_code >= 400:
        try:
            code = str(response.json()["error"]["code"])
        except (ValueError, KeyError, TypeError):
            code = f"http_{response.status_code}"
        report.errors[code] = report.errors.get(code, 0) + sent
        return
    body = response.json()
    results = body["results"] if isinstance(body, dict) and "results" in body else [body]
    applied = sum(1 for r in results if r.get("applied"))
    report.applied += applied
    report.duplicates += len(results) - applied
