"""The FastAPI application. Nothing happens at import time: `create_app(settings)` builds the app,
and its lifespan loads the engine and opens the Redis pool (and closes them).

uvicorn runs it as a factory: `uvicorn --factory service.http.app:app_from_env` (what `cmnrec serve`
does), with every setting read from the environment (service/ops/settings.py).
"""
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service.http.api import events, model, operations, users
from service.http.errors import install_error_handlers
from service.http.middleware import RequestMetricsMiddleware
from service.ops import metrics
from service.ops.heap import freeze_startup_heap
from service.ops.settings import Settings

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """The service cannot start with these settings."""


def create_app(settings: Settings | None = None, *, engine: Any | None = None) -> FastAPI:
    """Build the app. `engine`: an already loaded StepEngine (tests share one); by default the
    lifespan loads settings.artifact_dir."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.http.coalescer import EventCoalescer
        from service.state.connection import open_redis
        from service.state.store import StateStore

        if not settings.redis_url:
            raise ConfigurationError("REDIS_URL is not set: point it at a Redis server, or start"
                                     " the service with `cmnrec serve`, which embeds one")
        step_engine = engine if engine is not None else _load_engine(settings)
        redis = open_redis(settings.redis_url, settings)
        app.state.store = StateStore.from_settings(redis, step_engine, settings)
        app.state.coalescer = None
        if settings.coalesce:
            app.state.coalescer = EventCoalescer(app.state.store,
                                                 max_batch=settings.coalesce_max_batch)
        log.debug("froze %d start-up objects", freeze_startup_heap())
        log.info("serving model %s (%s, rule %s) from %s", step_engine.version,
                 step_engine.config.model, step_engine.config.rule, settings.artifact_dir)
        try:
            yield
        finally:
            if app.state.coalescer is not None:
                await app.state.coalescer.aclose()  # answer everything queued before closing Redis
            app.state.coalescer = None
            app.state.store = None
            await redis.aclose()
            metrics.mark_worker_exit(os.getpid())

    app = FastAPI(
        title="cmnrec",
        summary="Real-time sequential recommendations: CmnRec state per user in Redis, "
                "updated on every interaction",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = None
    app.state.coalescer = None
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware)
    for router in (events.router, users.router, model.router, operations.router):
        app.include_router(router)
    return app


def _load_engine(settings: Settings) -> Any:
    from model.engine import StepEngine

    return StepEngine.load(settings.artifact_dir, threads=settings.engine_threads)


def app_from_env() -> FastAPI:
    """uvicorn factory: every setting from the environment."""
    return create_app(Settings())
