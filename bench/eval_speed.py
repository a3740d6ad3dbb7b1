"""How long the evaluation of every user takes: both protocols (all items, history masked), one
batched pass, on MovieLens-1M (6,040 users) and Amazon Beauty (52,204 users).

Times training.evaluation.evaluate_protocols on freshly initialised networks (the cost does not
depend on the weights) of the benchmark's sizes, one torch thread: wall and CPU seconds of the full
evaluation, and CPU seconds of the validation that training runs after every epoch (validation
targets only). Saves bench/results/eval_speed.json and .md (--label names another pair of files).
The code is imported from --tree (default this checkout), so an older commit unpacked with
`git archive <commit> | tar -x -C DIR` is timed by the same script.

    .venv/bin/python bench/eval_speed.py --datasets ml-1m --models gru4rec,cmnrec,sasrec
    .venv/bin/python bench/eval_speed.py --datasets beauty --models cmnrec --tree /tmp/base --label before
"""
from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

HERE = Path(__file__).resolve().parent
MODELS = ("pop", "gru4rec", "cmnrec", "srmn", "sasrec")


def main(
    datasets: Annotated[str, typer.Option(help="Comma-separated: ml-1m, beauty, ml-100k.")] = "ml-1m",
    models: Annotated[str, typer.Option(help="Comma-separated: " + ", ".join(MODELS))] =
    "pop,gru4rec,cmnrec,sasrec",
    batch_size: Annotated[int, typer.Option(min=1, help="Users per evaluation forward.")] = 256,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    tree: Annotated[Path, typer.Option(help="Source tree whose evaluation is timed.")] = HERE.parent,
    label: Annotated[str | None, typer.Option(help="Save as eval_speed_<label>.json/.md.")] = None,
) -> None:
    tree = tree.resolve()
    if not (tree / "training" / "evaluation.py").is_file():
        raise typer.BadParameter(f"no training/evaluation.py under {tree}", param_hint="--tree")
    sys.path.insert(0, str(tree))
    import torch

    from bench.accuracy import RECIPES, Variant, load_benchmark_dataset
    from bench.common import dataset_info, machine_info, markdown_table, now_utc, save_results
    from model.network import build_model
    from training.evaluation import evaluate_protocols

    variants = {"pop": Variant("pop", "pop"), "gru4rec": Variant("gru4rec", "gru4rec"),
                "cmnrec": Variant("cmnrec-tsc-m4", "cmnrec", "tsc", 4),
                "srmn": Variant("srmn-m4", "srmn", "every", 4),
                "sasrec": Variant("sasrec", "sasrec")}

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    infos = []
    for dataset in [d.strip() for d in datasets.split(",") if d.strip()]:
        data = load_benchmark_dataset(dataset, None)
        infos.append(dataset_info(data))
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            if name not in variants:
                raise typer.BadParameter(f"unknown model {name!r}", param_hint="--models")
            model = build_model(variants[name].config(data.num_items, RECIPES[dataset])).eval()
            began, cpu = time.perf_counter(), time.process_time()
            evaluate_protocols(model, data, batch_size=batch_size)
            seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
            valid_cpu = cpu  # a tree from before `splits` validated with both splits
            if "splits" in inspect.signature(evaluate_protocols).parameters:
                valid_cpu = time.process_time()  # what this tree's training validates per epoch
                evaluate_protocols(model, data, batch_size=batch_size, splits=("valid",))
                valid_cpu = time.process_time() - valid_cpu
            rows.append({"dataset": dataset, "model": name, "users": infos[-1]["evaluated_users"],
                         "seconds": seconds, "cpu_seconds": cpu,
                         "validation_cpu_seconds": valid_cpu})
            typer.echo(f"{dataset} {name}: {seconds:.1f} s ({cpu:.1f} CPU s; validation "
                       f"{valid_cpu:.1f} CPU s) for {infos[-1]['evaluated_users']} users", err=True)
    payload = {"benchmark": "eval_speed", "date": now_utc(), "machine": machine_info(),
               "tree": str(tree), "batch_size": batch_size, "datasets": infos, "results": rows}
    markdown = "\n".join([
        "# Evaluation time: every user, both protocols, one pass", "",
        f"Measured {payload['date']} by `bench/eval_speed.py` on the code of {tree}, {threads} "
        f"torch thread(s), {batch_size} users per forward; validation and test targets of every "
        "user ranked among all items, with and without the user's history masked. Validation: "
        "what training runs after every epoch (the validation targets only, both protocols).", "",
        markdown_table(["data set", "model", "users", "wall s", "CPU s", "validation CPU s"],
                       [[r["dataset"], r["model"], f"{r['users']:,}", f"{r['seconds']:.1f}",
                         f"{r['cpu_seconds']:.1f}", f"{r['validation_cpu_seconds']:.1f}"]
                        for r in rows])])
    stem = "eval_speed" if label is None else f"eval_speed_{label}"
    save_results(HERE / "results" / f"{stem}.json", payload, markdown)


if __name__ == "__main__":
    typer.run(main)
