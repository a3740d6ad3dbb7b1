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
max_seconds (the total training time over all resumed parts), patience; and threads and
eval_batch_size. Exactly as an uninterrupted run holds only with the same threads (CPU reductions
depend on them) and the same horizon where the rate decays (a cosine or linear schedule spans
epochs or max_seconds: extending a finished run restarts the rate from where the longer schedule
would be). A validation at a budget cut is not one an uninterrupted run makes: its record is kept
in the history, but the resumed run goes on with the best weights and the count of validations
without gain from before it. One exception to exactness: a run stopped early by a validation in
the middle of a batch (--eval-every) and resumed with more patience starts that batch again.
The data are checked by a fingerprint of the training sequences.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.config import ModelConfig
from training.checkpoint import atomic_save
from training.settings import TrainSettings

STATE_FILE = "training_state.pt"
FORMAT = 1
# TrainSettings fields a resumed run may change; every other field must match the saved run.
RESUMABLE_CHANGES = frozenset({"epochs", "max_seconds", "patience", "threads", "eval_batch_size"})
# TrainSettings fields added after states were first saved, with the behaviour of the code that
# saved them (not today's default): an older state resumes as it was trained.
BEFORE_FIELD = {"loss_weighting": "step"}


def data_fingerprint(sequences: list[np.ndarray]) -> str:
    """SHA-256 of the training sequences (item ids and lengths): a resumed run trains on the
    same data, not on a changed log that happens to have as many items."""
    digest = hashlib.sha256()
    for sequence in sequences:
        digest.update(np.int64(len(sequence)).tobytes())
        digest.update(np.ascontiguousarray(sequence, dtype=np.int64).tobytes())
    return digest.hexdigest()


def save_state(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write the payload atomically (checkpoint.atomic_save), creating the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_save({"format": FORMAT, **payload}, path)


def load_state(path: str | Path, config: ModelConfig, settings: TrainSettings,
               fingerprint: str) -> dict[str, Any]:
    """The saved state, after checking it belongs to this model, training and data
    (`fingerprint`: data_fingerprint of the training sequences).

    Raises ValueError ("resume: ...") naming the first field that differs.
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"resume: {path} is not a training state of format {FORMAT}")
    if payload.get("data", fingerprint) != fingerprint:  # states saved before the check: none
        raise ValueError(f"resume: {path} was trained on other data (the training sequences "
                         "differ)")
    # A field added to ModelConfig or TrainSettings after the state was saved reads as its default,
    # or as BEFORE_FIELD says where the default is not what the older code did.
    saved_config = {**_defaults(ModelConfig), **payload["config"]}
    saved_settings = {**_defaults(TrainSettings), **BEFORE_FIELD, **payload["settings"]}
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


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}
