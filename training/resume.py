"""Resumable training: the trainer's whole state after each epoch, in one file.

`train_model(..., state_file=path)` writes this file (atomically) after every validation at the end
of an epoch, and, when it exists at the start, goes on from it: the weights, AdamW's moments, the
early-stopping record and best weights, the step count, the clock already spent, the torch RNG
(dropout, sampled negatives) and the numpy RNG of the batch order. An epoch cut short by the time
budget is resumed at the batch where it stopped, with the same batch order. So a run interrupted
and resumed trains exactly as one uninterrupted run on the CPU (tests/training/test_resume.py),
with one extra validation record where it was cut.

A long benchmark (hours of CPU) can so be spread over sessions of a few hours, and a preempted
`cmnrec train` (`--resume`) loses at most one epoch. Only the horizon may change on resume: epochs,
max_seconds (the total training time over all resumed parts), patience; and what does not change
the arithmetic: threads, eval_batch_size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig
from training.settings import TrainSettings

STATE_FILE = "training_state.pt"
FORMAT = 1
# TrainSettings fields a resumed run may change; every other field must match the saved run.
RESUMABLE_CHANGES = frozenset({"epochs", "max_seconds", "patience", "threads", "eval_batch_size"})


def save_state(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the payload next to `path` and rename it into place (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"format": FORMAT, **payload}, tmp)
    tmp.replace(path)
    return path


def load_state(path: str | Path, config: ModelConfig, settings: TrainSettings) -> dict[str, Any]:
    """The saved state, after checking it belongs to this model and training.

    Raises ValueError ("resume: ...") naming the first field that differs.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"resume: {path} is not a training state of format {FORMAT}")
    saved_config, saved_settings = payload["config"], payload["settings"]
    for name, value in config.to_dict().items():
        if saved_config.get(name) != value:
            raise ValueError(f"resume: {path} was trained with {name}={saved_config.get(name)!r}, "
                             f"not {value!r}")
    for name, value in settings.to_dict().items():
        if name not in RESUMABLE_CHANGES and saved_settings.get(name) != value:
            raise ValueError(f"resume: {path} was trained with {name}={saved_settings.get(name)!r}, "
                             f"not {value!r} (only {', '.join(sorted(RESUMABLE_CHANGES))} may "
                             "change)")
    return payload
