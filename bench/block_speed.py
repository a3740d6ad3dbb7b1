"""One training block and one inference pass at the paper's GPU setting, eager and compiled, with the
FLOP floor of a block beside the measured time. Called by `bench/train_speed.py --device cuda`.

For each M and each network (SRMN, CmnRec PEC / TSC), on B users with random item ids from a catalogue
of I items:
- train block: forward over T events from the initial state (the model's own forward, chunk flags from
  the host schedule), cross-entropy on all B x T targets, backward, Adam step;
- inference: T events absorbed one by one with `advance` (no grad), then the scores of all I items and
  the top 10: what serving does after a block of events.
Each is timed eager and with `training.device.compile_steps` (torch.compile of controller_step and
memory_step; mode reduce-overhead replays CUDA graphs), after warm-up runs that also pay the compile
(its time is recorded). The device is synchronised around every timed run; a figure is the median.

FLOP floor: the multiply-adds of one eager train block counted by torch.utils.flop_counter (matrix
products, forward and backward: what dominates), divided by the matrix-product rate this device
reaches in the same precision (a large square matmul timed here). A block cannot run faster.
"""
from __future__ import annotations

import statistics
import time
import traceback
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from model.config import ModelConfig
from model.network import build_model
from training.device import autocast, compile_steps

TOP_K = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(work: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    began = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - began


def matmul_rate(device: torch.device, precision: str, size: int) -> float:
    """FLOP/s of a [size, size] @ [size, size] product in `precision` on `device` (best of 5)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(5))
    return 2.0 * size ** 3 / best


class BlockWork:
    """One network's train block and inference pass on fixed random data."""

    def __init__(self, config: ModelConfig, batch: int, device: torch.device, precision: str,
                 compile_mode: str, seed: int) -> None:
        torch.manual_seed(seed)
        self.device, self.precision, self.compile_mode = device, precision, compile_mode
        self.model = build_model(config).to(device)
        compile_steps(self.model, compile_mode)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        items = torch.randint(1, config.num_items, (batch, config.block_len + 1),
                              generator=generator).to(device)
        self.inputs, self.targets = items[:, :-1], items[:, 1:]  # [B, T] each
        self.batch, self.num_items = batch, config.num_items

    def _mark(self) -> None:
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    def train_block(self) -> None:
        self._mark()
        self.model.train()
        state = self.model.initial_state(self.batch, device=self.device)
        with autocast(self.device, self.precision):
            logits, _ = self.model(self.inputs, state, first_pos=0)  # [B, T, I]
            loss = F.cross_entropy(logits.reshape(-1, self.num_items), self.targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.no_grad()
    def inference(self) -> None:
        self._mark()
        model = self.model.eval()
        with autocast(self.device, self.precision):
            state = model.initial_state(self.batch, device=self.device)
            embedded = model.embedding(self.inputs)  # [B, T, k]
            for t in range(self.inputs.shape[1]):
                state = model.advance(embedded[:, t], state, model.schedule[t])
            torch.topk(model.scores(state), TOP_K, dim=-1)


def measure(config: ModelConfig, batch: int, device: torch.device, precision: str, mode: str,
            warmup: int, repeats: int, seed: int, count_flops: bool) -> dict[str, Any]:
    """Seconds per train block and per inference pass of one network in one mode (eager or a
    torch.compile mode); an error is recorded instead of raised."""
    record: dict[str, Any] = {"mode": mode}
    try:
        work = BlockWork(config, batch, device, precision, "off" if mode == "eager" else mode, seed)
        for phase, run in (("train", work.train_block), ("inference", work.inference)):
            first = _timed(run, device)  # pays the compile in compiled modes
            for _ in range(warmup - 1):
                _timed(run, device)
            times = [_timed(run, device) for _ in range(repeats)]
            record[f"{phase}_first_seconds"] = first
            record[f"{phase}_seconds"] = statistics.median(times)
            record[f"{phase}_runs"] = times
        if count_flops:
            with FlopCounterMode(display=False) as counter:
                work.train_block()
            record["train_flops"] = float(counter.get_total_flops())
        record["events_per_second"] = batch * config.block_len / record["train_seconds"]
    except Exception as error:  # noqa: BLE001 - one failing mode must not lose the others' figures
        record["error"] = f"{type(error).__name__}: {error}"
        record["traceback"] = traceback.format_exc(limit=8)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return record
