"""Supervised processes: a worker process that outlives its parent is an orphan serving the port.

`die_with_parent()` is called by every uvicorn worker process as it builds the app: Linux sends it
SIGTERM (uvicorn's graceful shutdown) the moment its parent dies, even by SIGKILL. It does nothing
in a process that was not started by multiprocessing (single-worker `cmnrec serve` runs the app in
its own main process, which must survive the shell that started it).
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send `sig` to this process when its multiprocessing parent dies. Returns
    whether it was armed; exits at once if the parent is already gone."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return False
    if os.getppid() != parent.pid:  # the parent died before prctl took effect
        os._exit(1)
    return True
