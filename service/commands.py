"""`cmnrec serve` and `cmnrec demo`.

Imported by the torch-free CLI (training/cli.py): everything heavy is imported inside the commands,
and only `demo` ever needs torch (to train a model when no artifact exists yet).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _check_artifact(artifact: Path) -> None:
    from model.manifest import ArtifactError, Manifest

    try:
        Manifest.load(artifact)
    except ArtifactError as error:
        raise typer.BadParameter(str(error), param_hint="--artifact") from error


def serve(
    artifact: Path = typer.Option(..., help="model directory written by `cmnrec export`"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0: all)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    workers: int = typer.Option(1, min=1, max=64, help="uvicorn worker processes"),
    engine_threads: int = typer.Option(1, min=1, max=64,
                                       help="onnxruntime threads per worker"),
    log_level: str = typer.Option("info", help="critical, error, warning, info, debug, trace"),
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) on an exported model.

    Per-user state lives in the Redis at $REDIS_URL; without REDIS_URL a private redis-server is
    started for the lifetime of the command (nothing persists). Ctrl-C or SIGTERM stops the
    workers, then that Redis: nothing is left running.
    """
    from pydantic import ValidationError

    from service.redis_server import RedisServerFailed, RedisServerNotFound, redis_url_or_embedded
    from service.runner import run_uvicorn
    from service.settings import Settings

    if log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"expected one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    _check_artifact(artifact)
    try:
        settings = Settings(artifact_dir=artifact.resolve(), host=host, port=port,
                            workers=workers, engine_threads=engine_threads, log_level=log_level)
    except ValidationError as error:
        raise typer.BadParameter(str(error)) from error
    try:
        with redis_url_or_embedded(settings) as redis_url:
            if not settings.redis_url:
                typer.echo(f"REDIS_URL is not set: embedded redis-server at {redis_url} "
                           "(state is lost when this command stops)", err=True)
            run_uvicorn(settings.model_copy(update={"redis_url": redis_url}))
    except (RedisServerNotFound, RedisServerFailed) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def demo(
    artifact: Path = typer.Option(Path("artifacts/demo"), help="model to serve; trained on "
                                  "MovieLens-100k and exported here when missing"),
    run: Path = typer.Option(Path("runs/demo"), help="training run directory for that model"),
    users: str = typer.Option("1,5,7", help="MovieLens-100k user ids to replay, comma-separated"),
    events: int = typer.Option(60, min=1, help="events replayed per user (their first ones)"),
    n: int = typer.Option(10, min=1, max=100, help="recommendations shown per user"),
    threads: int = typer.Option(2, min=1, help="torch threads for training"),
    epochs: int = typer.Option(12, min=1, help="training epochs (early stopping may end sooner)"),
    max_seconds: float = typer.Option(420.0, min=1.0, help="training time budget in seconds"),
    port: int = typer.Option(8000, min=0, max=65535,
                             help="HTTP port (0 or a busy port: a free one)"),
    keep_serving: Optional[bool] = typer.Option(
        None, "--keep-serving/--no-keep-serving",
        help="keep the service up until Ctrl-C (default: only when stdin is a terminal)"),
    cache_dir: Optional[Path] = typer.Option(None, help="download cache for ml-100k"),
) -> None:
    """The main job: train (if needed), export, serve on embedded Redis, replay real MovieLens
    users over HTTP and show their recommendations with titles and latencies."""
    from service.demo import DemoOptions, run_demo

    user_ids = [u.strip() for u in users.split(",") if u.strip()]
    if not user_ids:
        raise typer.BadParameter("give at least one user id", param_hint="--users")
    if keep_serving is None:
        keep_serving = sys.stdin.isatty()
    options = DemoOptions(artifact=artifact, run=run, users=user_ids, events=events, n=n,
                          threads=threads, epochs=epochs, max_seconds=max_seconds, port=port,
                          keep_serving=keep_serving, cache_dir=cache_dir)
    try:
        run_demo(options)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
