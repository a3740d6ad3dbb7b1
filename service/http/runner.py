"""Running the app under uvicorn: in the foreground (`cmnrec serve`) or on a background thread
(`cmnrec demo`, benchmarks), with several workers sharing Prometheus metrics.

uvicorn workers are separate processes that build the app from the environment
(`service.http.app:app_from_env`), so the settings travel as CMNREC_* variables (and REDIS_URL).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.ops.settings import Settings

APP_FACTORY = "service.http.app:app_from_env"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment variables that make `Settings()` in a worker equal to `settings`."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None or name == "metrics_multiproc_dir":
            continue
        if name == "redis_url":
            env["REDIS_URL"] = str(value)
            continue
        env[f"CMNREC_{name.upper()}"] = (str(value) if isinstance(value, (str, int, float, Path))
                                         else json.dumps(value))
    return env


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, restoring the previous values afterwards."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def multiprocess_metrics(settings: Settings) -> Iterator[str | None]:
    """With several workers, PROMETHEUS_MULTIPROC_DIR for the block: settings.metrics_multiproc_dir
    when set (used as is, left in place), else a fresh temporary directory removed afterwards.

    Must be entered before the worker processes start: prometheus-client reads the variable when
    it is first imported.
    """
    if settings.workers <= 1:
        yield None
        return
    if settings.metrics_multiproc_dir is not None:
        directory = Path(settings.metrics_multiproc_dir)
        directory.mkdir(parents=True, exist_ok=True)
        with environment({MULTIPROC_ENV: str(directory)}):
            yield str(directory)
        return
    fresh = tempfile.mkdtemp(prefix="cmnrec-metrics-")
    try:
        with environment({MULTIPROC_ENV: fresh}):
            yield fresh
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def run_uvicorn(settings: Settings, **uvicorn_options: Any) -> None:
    """Serve in the foreground until SIGINT/SIGTERM (uvicorn shuts down gracefully and waits for
    its workers). settings.redis_url must be set."""
    import uvicorn

    if not settings.redis_url:
        raise ValueError("redis_url: required to run the service")
    with multiprocess_metrics(settings), environment(settings_environment(settings)):
        uvicorn.run(APP_FACTORY, factory=True, host=settings.host, port=settings.port,
                    workers=settings.workers, log_level=settings.log_level,
                    timeout_graceful_shutdown=10, **uvicorn_options)


class BackgroundServer:
    """One uvicorn server (one worker) on a thread of this process; a context manager.

    For the demo and benchmarks: `with BackgroundServer(settings) as server: httpx.get(server.url)`.
    """

    def __init__(self, settings: Settings, startup_timeout: float = 60.0) -> None:
        import uvicorn

        from service.http.app import create_app

        self.settings = settings
        self.startup_timeout = startup_timeout
        config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="cmnrec-uvicorn",
                                        daemon=True)

    @property
    def url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.settings.port}"

    def __enter__(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the HTTP server stopped during startup (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the HTTP server did not start in {self.startup_timeout:.0f}s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
