"""`cmnrec serve`: the HTTP API on an exported model.

Torch-free: heavy imports happen inside the command, so the serving install runs it.
"""
from __future__ import annotations

from pathlib import Path

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
    workers, then that Redis: nothing is left running. API keys: $CMNREC_API_KEYS or
    $CMNREC_API_KEYS_FILE (required on a non-loopback --host; README "Security").
    """
    from pydantic import ValidationError

    from service.http.auth import AuthConfigError, check_access

    from service.http.runner import run_uvicorn
    from service.ops.redis_server import (
        RedisServerFailed,
        RedisServerNotFound,
        redis_url_or_embedded,
    )
    from service.ops.settings import Settings

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
        check_access(settings)  # the workers would refuse to start: say it once, here
    except AuthConfigError as error:
        raise typer.BadParameter(str(error), param_hint="--host") from error
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
