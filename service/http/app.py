"""The FastAPI application. Nothing happens at import time: `create_app(settings)` builds the app,
and its lifespan loads the engine and opens the Redis pool (and closes them).

uvicorn runs it as a factory: `uvicorn --factory service.http.app:app_from_env` (what `cmnrec serve`
does), with every setting read from the environment (service/ops/settings.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service.http.api import events, model, operations, users
from service.http.auth import AuthConfigError, AuthMiddleware, check_access
from service.http.errors import install_error_handlers
from service.http.fast_events import FastEventsPath
from service.http.limits import BodyLimitMiddleware
from service.http.middleware import RequestMetricsMiddleware
from service.http.openapi import documented_limits
from service.ops import metrics
from service.ops.heap import freeze_startup_heap
from service.ops.settings import Settings
from service.ops.supervision import die_with_parent

log = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """The service cannot start with these settings."""


def create_app(settings: Settings | None = None, *, engine: Any | None = None) -> FastAPI:
    """Build the app. `engine`: an already loaded StepEngine (tests share one); by default the
    lifespan loads settings.artifact_dir."""
    settings = settings or Settings()
    try:
        keys = check_access(settings)
    except AuthConfigError as error:
        raise ConfigurationError(str(error)) from error

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
        app.state.redis = redis
        app.state.reload_lock = asyncio.Lock()
        hup = _install_sighup(app)
        try:
            yield
        finally:
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
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
    # Outermost last: metrics see every answer, auth runs before the body is read, the body limit
    # before anything parses it, and the fast path of POST /v1/events inside all three.
    if settings.fast_events_path:
        app.add_middleware(FastEventsPath, api=app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, keys=keys, metrics_public=settings.metrics_public)
    app.add_middleware(RequestMetricsMiddleware)
    for router in (events.router, users.router, model.router, operations.router):
        app.include_router(router)
    documented_limits(app, settings)
    return app


async def reload_model(app: FastAPI) -> tuple[str, str]:
    """Swap in the artifact now in settings.artifact_dir without a restart; (old, new) version.

    Requests already running keep the store (and engine) they started with and finish on the old
    model; new requests get the new store. States stored by the old version are rebuilt lazily,
    when their user is next touched (cmnrec_state_rebuilds_total{reason="version_mismatch"}).
    """
    from service.http.coalescer import EventCoalescer
    from service.state.store import StateStore

    settings: Settings = app.state.settings
    async with app.state.reload_lock:
        old_store = app.state.store
        if old_store is None:
            raise RuntimeError("the service is not running")
        new_engine = await asyncio.to_thread(_load_engine, settings)
        old_coalescer = app.state.coalescer
        app.state.store = StateStore.from_settings(app.state.redis, new_engine, settings)
        app.state.coalescer = None
        if settings.coalesce:
            app.state.coalescer = EventCoalescer(app.state.store,
                                                 max_batch=settings.coalesce_max_batch)
        if old_coalescer is not None:
            await old_coalescer.aclose()  # answers what it had queued, on the old model
        metrics.MODEL_RELOADS_TOTAL.inc()
        log.info("model reloaded: %s -> %s", old_store.model_version, new_engine.version)
        return old_store.model_version, str(new_engine.version)


def _install_sighup(app: FastAPI) -> bool:
    """SIGHUP to this process reloads the model (uvicorn's multi-worker supervisor answers SIGHUP
    itself by restarting its workers gracefully, which loads the new artifact too)."""
    if not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        task = loop.create_task(reload_model(app))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or log.error(
            "model reload on SIGHUP failed: %s", t.exception()))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (RuntimeError, ValueError):  # not the main thread (BackgroundServer, tests)
        return False
    return True


def _load_engine(settings: Settings) -> Any:
    from model.engine import StepEngine

    return StepEngine.load(settings.artifact_dir, threads=settings.engine_threads)


def app_from_env() -> FastAPI:
    """uvicorn factory (run in each worker process): every setting from the environment. The
    worker asks Linux to stop it when its parent (`cmnrec serve` or uvicorn's supervisor) dies."""
    die_with_parent()
    return create_app(Settings())
