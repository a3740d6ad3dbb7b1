"""`cmnrec worker` and `cmnrec replay`: stream ingestion from the command line.

Plain functions registered by cli/app.py (the function name is the command name). Imports happen
inside the functions, and nothing here imports torch: they run in the serving install.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def worker(
    artifact: Path = typer.Option(..., "--artifact", help="model directory written by `cmnrec export`"),
    partitions: Optional[int] = typer.Option(
        None, "--partitions", min=1, max=1024,
        help="P event streams (default $CMNREC_STREAM_PARTITIONS or 8); must match the producers"),
    consumer: Optional[str] = typer.Option(
        None, "--consumer", help="consumer name in the group (default hostname-pid)"),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", min=1,
        help="most entries per batch (default $CMNREC_STREAM_BATCH_SIZE or 4096)"),
    metrics_port: Optional[int] = typer.Option(
        None, "--metrics-port", min=0, max=65535,
        help="serve Prometheus /metrics on this port (default 9100; 0 = off)"),
    claim_min_idle_ms: Optional[int] = typer.Option(
        None, "--claim-min-idle-ms", min=1,
        help="reclaim a dead worker's entries once idle this long (default 10000)"),
    lease_ttl_ms: Optional[int] = typer.Option(
        None, "--lease-ttl-ms", min=100,
        help="a partition is free this long after its worker's last heartbeat (default 10000)"),
) -> None:
    """Apply the events of the partitioned Redis streams to the users' states.

    Uses REDIS_URL when set; otherwise starts an embedded redis-server (and prints its URL, for
    `REDIS_URL=... cmnrec replay --stream`). Stops cleanly on Ctrl-C or SIGTERM.
    """
    import asyncio
    import logging

    from pydantic import ValidationError
    from rich.console import Console

    from service.ops.redis_server import (
        RedisServerFailed,
        RedisServerNotFound,
        redis_url_or_embedded,
    )
    from service.ops.settings import Settings
    from service.state.cluster import UnsupportedRedis
    from service.streams.runner import run_worker
    from service.streams.worker import default_consumer_name

    console = Console(stderr=True)
    overrides = {"artifact_dir": artifact, "stream_partitions": partitions,
                 "stream_batch_size": batch_size, "worker_metrics_port": metrics_port,
                 "stream_claim_min_idle_ms": claim_min_idle_ms, "stream_lease_ttl_ms": lease_ttl_ms}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        raise typer.BadParameter(_first_error(error)) from None
    if not (artifact / "manifest.json").is_file():
        raise typer.BadParameter(f"{artifact} holds no manifest.json (run `cmnrec export` first)",
                                 param_hint="--artifact")
    consumer = consumer or default_consumer_name()
    logging.basicConfig(level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with redis_url_or_embedded(settings) as url:
            if not settings.redis_url:
                typer.echo(f"embedded Redis at {url} (set REDIS_URL to use your own); publish with\n"
                           f"  REDIS_URL={url} cmnrec replay --dataset ml-100k --stream "
                           f"--partitions {settings.stream_partitions}", err=True)
            typer.echo(f"worker {consumer}: {settings.stream_partitions} partitions, "
                       f"batch {settings.stream_batch_size}, metrics on :{settings.worker_metrics_port}",
                       err=True)
            totals = asyncio.run(run_worker(settings, url, consumer=consumer,
                                            metrics_port=settings.worker_metrics_port))
    except (RedisServerNotFound, RedisServerFailed, UnsupportedRedis) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(1) from None
    typer.echo(f"worker {consumer} stopped: {totals.entries} entries, "
               f"{totals.applied} applied, {totals.duplicates} duplicates, "
               f"{totals.dead_lettered} dead-lettered, {totals.reclaimed} reclaimed", err=True)


def replay(
    dataset: str = typer.Option("ml-100k", "--dataset",
                                help="ml-100k, or a ratings file (u.data, ratings.dat, CSV ...)"),
    stream: bool = typer.Option(False, "--stream", help="push the events into the Redis streams"),
    url: Optional[str] = typer.Option(None, "--url",
                                      help="drive a running API instead, e.g. http://127.0.0.1:8000"),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="only the first N events in time"),
    users: Optional[str] = typer.Option(None, "--users", help="only these user ids (comma-separated)"),
    partitions: Optional[int] = typer.Option(
        None, "--partitions", min=1, max=1024,
        help="P streams (default $CMNREC_STREAM_PARTITIONS or 8); must match the workers"),
    batch_size: int = typer.Option(100, "--batch-size", min=1,
                                   help="events per HTTP request (1 = POST /v1/events)"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="CMNREC_API_KEY",
        help="with --url: the API key to send (X-API-Key); needs the events:write scope"),
    concurrency: int = typer.Option(8, "--concurrency", min=1, max=1024,
                                    help="HTTP requests in flight (users are split among them)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir",
                                             help="where the MovieLens wheel is cached"),
) -> None:
    """Replay a data set's events in time order, with deterministic event ids.

    --stream: into the partitioned Redis streams (REDIS_URL, or $CMNREC_REDIS_URL) for `cmnrec worker`.
    --url: over HTTP to a running `cmnrec serve`, printing throughput and latency.
    Replaying the same events again is harmless: their event ids make them no-ops.
    """
    import asyncio
    import json

    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import Progress

    from data.loaders import DatasetError, load_dataset
    from service.ops.settings import Settings
    from service.streams.replay import dataset_events, drive_http, publish_replay

    console = Console(stderr=True)
    if stream == (url is not None):
        raise typer.BadParameter("give exactly one of --stream and --url", param_hint="--stream/--url")
    try:
        settings = Settings(**({"stream_partitions": partitions} if partitions else {}))
    except ValidationError as error:
        raise typer.BadParameter(_first_error(error)) from None
    if stream and not settings.redis_url:
        raise typer.BadParameter("--stream needs REDIS_URL: the Redis the workers read from",
                                 param_hint="--stream")
    if url is not None and not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"not an http(s) URL: {url!r}", param_hint="--url")
    try:
        data = load_dataset(dataset, cache_dir=cache_dir)
        user_list = [u.strip() for u in users.split(",") if u.strip()] if users else None
        events = dataset_events(data, limit=limit, users=user_list)
    except DatasetError as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--users") from None
    console.print(f"{len(events)} events of {len(data.users)} users from {data.name}")

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("replaying", total=len(events))

        def advance(count: int) -> None:
            progress.advance(task, count)

        if stream:
            import time

            import redis

            from service.state.cluster import UNAVAILABLE_ERRORS, open_sync

            client = open_sync(settings.redis_url, settings,
                               socket_timeout=settings.redis_timeout_seconds)
            try:
                started = time.perf_counter()
                published = publish_replay(client, events, partitions=settings.stream_partitions,
                                           prefix=settings.key_prefix, on_progress=advance)
                seconds = time.perf_counter() - started
            except (redis.RedisError, *UNAVAILABLE_ERRORS) as error:
                console.print(f"[red]error:[/red] Redis at {settings.redis_url}: {error}")
                raise typer.Exit(1) from None
            finally:
                client.close()
            summary = {"mode": "stream", "events": published,
                       "partitions": settings.stream_partitions,
                       "seconds": round(seconds, 3),
                       "events_per_second": round(published / seconds, 1) if seconds else None}
        else:
            import httpx

            try:
                report = asyncio.run(drive_http(url, events, batch_size=batch_size, api_key=api_key,
                                                concurrency=concurrency, on_progress=advance))
            except httpx.HTTPError as error:
                console.print(f"[red]error:[/red] {url}: {error}")
                raise typer.Exit(1) from None
            summary = {"mode": "http", "events": report.events, "applied": report.applied,
                       "duplicates": report.duplicates, "errors": report.errors,
                       "requests": report.requests, "seconds": round(report.seconds, 3),
                       "events_per_second": round(report.events_per_second, 1),
                       "request_latency_ms": {f"p{q}": round(report.latency_percentile(q), 3)
                                              for q in (50, 90, 99)}}
    typer.echo(json.dumps(summary, indent=2))


def _first_error(error: "Exception") -> str:
    """'field: message' of the first pydantic validation error."""
    first = error.errors()[0]  # type: ignore[attr-defined]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
