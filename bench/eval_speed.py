"""How long the evaluation of every user takes: both protocols (all items, history masked), one
batched pass, on MovieLens-1M (6,040 users) and Amazon Beauty (52,204 users).

Times training.evaluation.evaluate_protocols on freshly initialised networks (the cost does not
depend on the weights) of the benchmark's sizes, one torch thread, and saves
bench/results/eval_speed.json and .md.

    .venv/bin/python bench/eval_speed.py --datasets ml-1m --models gru4rec,cmnrec,sasrec
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accuracy import RECIPES, Variant, load_benchmark_dataset
from bench.common import RESULTS_DIR, dataset_info, machine_info, markdown_table, now_utc, save_results

VARIANTS = {"pop": Variant("pop", "pop"), "gru4rec": Variant("gru4rec", "gru4rec"),
            "cmnrec": Variant("cmnrec-tsc-m4", "cmnrec", "tsc", 4),
            "srmn": Variant("srmn-m4", "srmn", "every", 4), "sasrec": Variant("sasrec", "sasrec")}


def main(
    datasets: Annotated[str, typer.Option(help="Comma-separated: ml-1m, beauty, ml-100k.")] = "ml-1m",
    models: Annotated[str, typer.Option(help="Comma-separated: " + ", ".join(VARIANTS))] =
    "pop,gru4rec,cmnrec,sasrec",
    batch_size: Annotated[int, typer.Option(min=1, help="Users per evaluation forward.")] = 256,
    threads: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    import torch

    from model.network import build_model
    from training.evaluation import evaluate_protocols

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    infos = []
    for dataset in [d.strip() for d in datasets.split(",") if d.strip()]:
        data = load_benchmark_dataset(dataset, None)
        infos.append(dataset_info(data))
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            if name not in VARIANTS:
                raise typer.BadParameter(f"unknown model {name!r}", param_hint="--models")
            model = build_model(VARIANTS[name].config(data.num_items, RECIPES[dataset])).eval()
            began = time.perf_counter()
            evaluate_protocols(model, data, batch_size=batch_size)
            seconds = time.perf_counter() - began
            rows.append({"dataset": dataset, "model": name, "users": infos[-1]["evaluated_users"],
                         "seconds": seconds})
            typer.echo(f"{dataset} {name}: {seconds:.1f} s for {infos[-1]['evaluated_users']} users",
                       err=True)
    payload = {"benchmark": "eval_speed", "date": now_utc(), "machine": machine_info(),
               "batch_size": batch_size, "datasets": infos, "results": rows}
    markdown = "\n".join([
        "# Evaluation time: every user, both protocols, one pass", "",
        f"Measured {payload['date']} by `bench/eval_speed.py`, {threads} torch thread(s), "
        f"{batch_size} users per forward; validation and test targets of every user ranked among "
        "all items, with and without the user's history masked.", "",
        markdown_table(["data set", "model", "users", "seconds"],
                       [[r["dataset"], r["model"], f"{r['users']:,}", f"{r['seconds']:.1f}"]
                        for r in rows])])
    save_results(RESULTS_DIR / "eval_speed.json", payload, markdown)


if __name__ == "__main__":
    typer.run(main)
