"""One training run end to end: fit, evaluate under both protocols, save the run directory.

Used by `cmnrec train` and by `cmnrec demo`, so both write the same checkpoint and metrics.json.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.dataset import SequenceDataset
from data.split import evaluation_users
from model.config import ModelConfig
from model.network import SequentialRecommender
from training import distributed
from training.checkpoint import save_run, write_metrics
from training.trainer import TrainReport, TrainSettings, train_model


@dataclass
class RunResult:
    model: SequentialRecommender
    report: TrainReport
    metrics: dict[str, Any]  # what metrics.json holds
    out: Path


def train_run(data: SequenceDataset, config: ModelConfig, settings: TrainSettings, out: Path, *,
              dataset_info: dict[str, Any] | None = None, progress: bool = True,
              state_file: Path | None = None) -> RunResult:
    """Train `config` on `data`, evaluate it, write `out/checkpoint.pt` and `out/metrics.json`.

    state_file: keep the training state there after every epoch and resume from it when it
    exists (training/resume.py; `cmnrec train` keeps it as out/training_state.pt).

    metrics.json keys: `valid` / `test` rank every item; `seen_excluded.valid` /
    `seen_excluded.test` never rank an item the user interacted with before the target.
    Raises ValueError (from train_model) when the data set cannot be trained on. Under torchrun,
    rank 0 alone evaluates and writes; the other ranks return empty metrics. The returned model is
    on the CPU (trained and evaluated on settings.device).
    """
    net, report = train_model(data, config, settings, progress=progress, state_file=state_file)
    if not distributed.from_environment().is_main:  # a data-parallel rank other than 0
        return RunResult(model=net.cpu(), report=report, metrics={}, out=Path(out))
    seen_excluded = report.seen_excluded
    info = {"name": data.name, "users": len(data.users), "items": data.num_items - 1,
            "interactions": data.num_interactions,
            "eval_users": int(len(evaluation_users(data))), **(dataset_info or {})}
    save_run(out, net, data.vocab, data.item_counts(),
             extra={"dataset": info, "settings": settings.to_dict(), "metrics": report.metrics})
    metrics: dict[str, Any] = {
        "valid": report.metrics["valid"], "test": report.metrics["test"],
        "seconds_per_epoch": report.seconds_per_epoch, "epochs": report.epochs,
        "parameters": report.parameters, "best_epoch": report.best_epoch, "steps": report.steps,
        "stopped": report.stopped, "train_seconds": report.train_seconds,
        "history": report.history, "config": config.to_dict(), "settings": settings.to_dict(),
        "dataset": info,
        "seen_excluded": seen_excluded,
    }
    write_metrics(out, metrics)
    return RunResult(model=net.cpu(), report=report, metrics=metrics, out=Path(out))
