"""Run `cmnrec serve` for real (uvicorn, worker processes) in the tests, and watch its processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]

# Imported first by a served process that must not touch torch: any `import torch` fails.
BLOCK_TORCH = """
import importlib.abc, sys
class _BlockTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"import of {name} blocked: the serving side must be torch-free")
        return None
sys.meta_path.insert(0, _BlockTorch())
"""


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`."""
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def left_running(pids: set[int], timeout: float = 10.0) -> list[int]:
    """The pids still alive after waiting up to `timeout` (multiprocessing's resource tracker
    exits on its own a moment after the server process)."""
    deadline = time.monotonic() + timeout
    while True:
        running = [pid for pid in pids if alive(pid)]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


class ServedProcess:
    """`cmnrec serve` in a subprocess (optionally with torch imports blocked)."""

    def __init__(self, artifact: Path, port: int, workers: int = 1, *, env: dict[str, str],
                 block_torch: bool = False) -> None:
        args = ["serve", "--artifact", str(artifact), "--port", str(port),
                "--workers", str(workers), "--log-level", "warning"]
        code = (BLOCK_TORCH if block_torch else "") + (
            "import sys\nfrom cli.app import app\n"
            f"sys.argv = ['cmnrec', *{args!r}]\napp()\n")
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                                        env={**os.environ, **env}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cmnrec serve exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cmnrec serve not ready in {timeout}s: {self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> set[int]:
        """Signal the command, wait for it; returns the processes it had (to check they are gone)."""
        tree = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in tree:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.kill()
                self.process.wait()
                raise
        return tree

    def output(self) -> str:
        if self.process.poll() is None or self.process.stdout is None:
            return ""
        return self.process.stdout.read()
