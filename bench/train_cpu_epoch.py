"""The CPU training pass before and after a change: `training.trainer.train_epoch` of a source tree on
the first batches of an epoch, wall clock and this process's CPU time.

`cmnrec train` spends its epoch in exactly this call (same batches: seed 0, users sorted by length,
batches of --batch-size, the default cmnrec network); evaluation and data loading are left out. The
training code is imported from --tree (default: this checkout), so an older commit, unpacked with
`git archive <commit> | tar -x -C DIR`, is timed by the same script:

    .venv/bin/python bench/train_cpu_epoch.py --tree /tmp/base --label before --batches 40
    .venv/bin/python bench/train_cpu_epoch.py --label after --batches 40

Each run adds one record to --out (JSON) and rewrites the markdown table beside it.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

HERE = Path(__file__).resolve().parent


def main(
    dataset: Annotated[str, typer.Option(help="Ratings file or data set name.")] =
    str(HERE.parent.parent / "shared" / "data" / "ml-1m" / "ml-1m.csv.gz"),
    tree: Annotated[Path, typer.Option(help="Source tree whose training code is timed.")] = HERE.parent,
    label: Annotated[str, typer.Option(help="Name of this record, e.g. before / after.")] = "after",
    batches_to_run: Annotated[int, typer.Option("--batches", min=1, help="Batches of the epoch to time "
                                                "(the same first ones in every run).")] = 40,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    model_name: Annotated[str, typer.Option("--model", help="Network (cmnrec: TSC, M=4 with a "
                                                             "--recipe).")] = "cmnrec",
    recipe: Annotated[str | None, typer.Option(help="Sizes and dropout of a training recipe "
                                                    "(ml-100k, ml-1m, beauty); default: the "
                                                    "ModelConfig defaults.")] = None,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    out: Annotated[Path, typer.Option(help="JSON results (records appended by label).")] =
    HERE / "results" / "train_cpu_epoch.json",
) -> None:
    """Time the training pass of one tree on the first batches of an epoch."""
    tree = tree.resolve()
    if not (tree / "training" / "trainer.py").is_file():
        raise typer.BadParameter(f"no training/trainer.py under {tree}", param_hint="--tree")
    sys.path.insert(0, str(tree))
    import numpy as np
    import torch
    from tqdm import tqdm

    from data.loaders import load_dataset
    from data.split import training_sequences
    from model.config import ModelConfig
    from model.network import build_model
    from training.batching import length_sorted_batches
    from training.settings import TrainSettings
    from training.trainer import train_epoch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_dataset(dataset)
    sequences = training_sequences(data)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    trainable = np.flatnonzero(lengths >= 2)
    batches = [trainable[b] for b in length_sorted_batches(lengths[trainable], batch_size,
                                                           np.random.default_rng(0))]
    if recipe is None:
        config = ModelConfig(num_items=data.num_items, model=model_name)
    else:
        from training.recipes import RECIPES

        memory = dict(rule="tsc", slots=4) if model_name == "cmnrec" else {}
        config = ModelConfig(num_items=data.num_items, model=model_name, **memory,
                             **RECIPES[recipe].model_fields(model_name))
    model = build_model(config)
    settings = TrainSettings(batch_size=batch_size, threads=threads)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    events = done = 0
    wall, cpu = time.perf_counter(), time.process_time()
    with tqdm(disable=True) as bar:
        for rows in batches[:batches_to_run]:
            seen = train_epoch(model, optimizer, sequences, [rows], settings, bar, None)[1]
            events += seen
            done += 1
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    import os

    record = {"label": label, "tree": str(tree),
              "trainer_file": sys.modules["training.trainer"].__file__, "dataset": data.name, "users": len(data.users),
              "batches": done, "batches_per_epoch": len(batches), "events": events,
              "events_per_epoch": int((lengths[trainable] - 1).sum()), "wall_seconds": wall,
              "cpu_seconds": cpu, "events_per_second": events / wall,
              "events_per_cpu_second": events / cpu, "threads": threads,
              "batch_size": batch_size, "config": config.to_dict(), "torch": torch.__version__,
              "load_average_end": list(os.getloadavg()),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {"records": {}}
    results["records"][label] = record
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    rows = ["| run | batches | events | wall s | CPU s | events/s (wall) | events/CPU s | "
            "epoch estimate (CPU) | load avg at end |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["records"].values():
        epoch = r["events_per_epoch"] / r["events_per_cpu_second"]
        rows.append(f"| {r['label']} | {r['batches']}/{r['batches_per_epoch']} | {r['events']:,} | "
                    f"{r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                    f"{r['events_per_second']:,.0f} | {r['events_per_cpu_second']:,.0f} | "
                    f"{epoch / 60:.1f} min | {r['load_average_end'][0]:.1f} |")
    text = ("# CPU training pass, before and after (bench/train_cpu_epoch.py)\n\n"
            f"{record['dataset']}, the first batches of a seeded epoch (batch {batch_size}, "
            f"{model_name} with {f'the {recipe} recipe' if recipe else 'the default sizes'}), "
            f"{threads} torch thread(s); epoch estimate = events per epoch / events per CPU "
            "second.\n\n" + "\n".join(rows) + "\n")
    out.with_suffix(".md").write_text(text)
    typer.echo(text)


if __name__ == "__main__":
    typer.run(main)
