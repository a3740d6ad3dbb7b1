"""A training run -> a serving artifact: load the run's checkpoint and export its model."""
from __future__ import annotations

from pathlib import Path

from model.export import export_model
from training.checkpoint import load_run


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the run in run_dir to the artifact directory out_dir (replaced if it exists)."""
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    return export_model(run.model, run.config, run.vocab, run.item_counts, out_dir,
                        source={"run": run_dir.name, "extra": run.extra})
