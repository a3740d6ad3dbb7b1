"""A training run directory: checkpoint.pt (weights + config + item mapping + item counts) and
metrics.json. `cmnrec evaluate`, `cmnrec predict` and `cmnrec export` all start from here."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.dataset import ItemVocab
from model.config import ModelConfig
from model.network import SequentialRecommender, build_model

CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


@dataclass
class Run:
    """Everything a trained model needs to make predictions."""

    model: SequentialRecommender
    config: ModelConfig
    vocab: ItemVocab
    item_counts: np.ndarray  # [I] training interactions per internal item id
    extra: dict[str, Any]  # training settings, data set name, ...


def save_run(run_dir: str | Path, model: SequentialRecommender, vocab: ItemVocab,
             item_counts: np.ndarray, extra: dict[str, Any] | None = None) -> Path:
    """Write checkpoint.pt into run_dir (created if missing). Returns its path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT_FILE
    payload = {
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": vocab.to_dict(),
        "item_counts": [int(c) for c in item_counts],
        "extra": extra or {},
    }
    return atomic_save(payload, path)


def atomic_save(payload: dict[str, Any], path: Path) -> Path:
    """torch.save to a temporary file beside `path`, then rename it into place: a reader never
    sees a half-written file, even if the process is killed while writing."""
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory in eval mode on `device` (whatever device it was
    trained on: the tensors are mapped there); a clear error if it is not a run directory."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--run: no {CHECKPOINT_FILE} in {run_dir} (train a model first)")
    payload = torch.load(path, map_location=device, weights_only=True)
    config = ModelConfig.from_dict(payload["config"])
    model = build_model(config).to(device)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Run(model=model, config=config, vocab=ItemVocab.from_dict(payload["vocab"]),
               item_counts=np.asarray(payload["item_counts"], dtype=np.int64),
               extra=dict(payload.get("extra") or {}))


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> Path:
    path = Path(run_dir) / METRICS_FILE
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--run: no {METRICS_FILE} in {run_dir}")
    return json.loads(path.read_text())
