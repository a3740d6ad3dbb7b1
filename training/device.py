"""Where and how the training arithmetic runs: the device, the autocast precision, the compiled step.

- `resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`: auto picks CUDA when torch sees a GPU.
- `autocast(device, precision)`: bf16 autocast around forward + loss; weights, optimizer state,
  checkpoints, exports and evaluation stay fp32.
- `to_device(array, device)`: one host-to-device copy per batch, from pinned memory on CUDA
  (non-blocking, so the copy overlaps with the work already queued).
- `compile_steps(model, mode)`: torch.compile of the per-event updates (`controller_step`,
  `memory_step`) that every block loop calls T times. mode "reduce-overhead" (CUDA only) replays
  them from CUDA graphs; the block loop is capturable because it never reads a device value on the
  host (the chunk schedule of a training block is known on the host, see `SequentialRecommender.
  forward(..., chunks=...)`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch

from model.network import CmnRec, SequentialRecommender
from training.settings import COMPILE_MODES, PRECISIONS, valid_device

COMPILED_STEPS = ("controller_step", "memory_step", "advance")  # what compile_steps replaces


def resolve_device(spec: str) -> torch.device:
    """The torch device of a --device value; a clear error when CUDA is asked for but absent."""
    if not valid_device(spec):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device: {spec} asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device: {spec} asked for, but torch sees "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The mixed-precision context of forward + loss: bf16 autocast, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor on `device`: pinned and copied asynchronously on CUDA."""
    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def compile_steps(model: SequentialRecommender, mode: str) -> SequentialRecommender:
    """Replace the per-event updates of `model` by their torch.compile'd versions, in place.

    The compiled functions are the instance's own (the class and the state_dict are untouched, so
    checkpoints and exports are the same). mode: off | default | reduce-overhead (CUDA graphs).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile: expected one of {COMPILE_MODES}, got {mode!r}")
    if mode == "off":
        return model
    if mode == "reduce-overhead" and next(model.parameters()).device.type != "cuda":
        raise ValueError("compile: reduce-overhead replays CUDA graphs and needs a CUDA device")
    if isinstance(model, CmnRec):  # the names must be in COMPILED_STEPS
        model.controller_step = torch.compile(model.controller_step, mode=mode, fullgraph=True)  # type: ignore[method-assign]
        model.memory_step = torch.compile(model.memory_step, mode=mode, fullgraph=True)  # type: ignore[method-assign]
    elif hasattr(model, "advance"):
        model.advance = torch.compile(model.advance, mode=mode, fullgraph=True)  # type: ignore[method-assign]
    else:  # LRURec trains with a parallel scan over the block, not per-event steps
        raise ValueError(f"compile: not available for {type(model).__name__} (its training pass is"
                         " one parallel scan per block, not a per-event step)")
    return model



@contextlib.contextmanager
def eager_steps(model: SequentialRecommender) -> Iterator[SequentialRecommender]:
    """The model with its own (uncompiled) step methods for the duration of the block, e.g. for
    evaluation, whose batch shapes and no-grad mode would only make the compiled steps recompile."""
    saved = {name: model.__dict__.pop(name) for name in COMPILED_STEPS if name in model.__dict__}
    try:
        yield model
    finally:
        model.__dict__.update(saved)


def uncompile(model: SequentialRecommender) -> SequentialRecommender:
    """Drop what compile_steps installed: the model as built (what train_model returns)."""
    for name in COMPILED_STEPS:
        model.__dict__.pop(name, None)
    return model
