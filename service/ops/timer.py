"""Seconds per stage of one request or batch: `with timer.stage(Stage.MODEL): ...`."""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from service.ops import metrics
from service.ops.labels import Stage


class StageTimer:
    """Accumulates wall seconds per stage; `observe` exports the Stage ones to Prometheus."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, stage: Stage | str) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - tic)

    def add(self, stage: Stage | str, seconds: float) -> None:
        self.seconds[stage.value if isinstance(stage, Stage) else stage] += seconds

    def observe(self) -> dict[str, float]:
        """Record "total" (since construction), export the Stage timings; returns every timing."""
        self.add("total", time.perf_counter() - self.started)
        for stage, seconds in self.seconds.items():
            child = metrics.STAGE_LATENCY.get(stage)
            if child is not None:
                child.observe(seconds)
        return dict(self.seconds)
