"""Accuracy on MovieLens-100k: popularity, GRU4Rec, LSTM4Rec, SRMN and CmnRec PEC/TSC/EXC.

Every network is trained and evaluated by the project's own code (training.trainer.train_model:
block-by-block truncated BPTT, early stopping on validation NDCG@10, then leave-one-out by time with
full ranking over all items), with the same hyper-parameters and the same seed. Memory models run at
T = --block-len with M in --slots (SRMN too: its memory has M slots). Prints a markdown table and
saves bench/results/accuracy.json (every figure, the settings, the machine, the date) and
bench/results/accuracy.md. Results are saved after each model, so an interrupted run keeps what it did.

    .venv/bin/python bench/accuracy.py --dims small --epochs 15 --patience 3 --lr 3e-3 --threads 1
    .venv/bin/python bench/accuracy.py --models pop,gru4rec,cmnrec-tsc --epochs 1 --out /tmp/acc.json
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

if __package__ in (None, ""):  # run as a script (python bench/accuracy.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    DIMS,
    RESULTS_DIR,
    benchmark_dataset,
    dataset_info,
    machine_info,
    markdown_table,
    now_utc,
    parse_ints,
    save_results,
)
from model.config import ModelConfig
from training.settings import TrainSettings
from training.trainer import train_model

REFERENCE = "srmn"  # CmnRec rows are compared with SRMN at the same M


@dataclass(frozen=True)
class Variant:
    """One row of the table: a name and the ModelConfig fields that make it."""

    name: str  # e.g. "cmnrec-tsc-m4"
    model: str
    rule: str
    slots: int | None  # None: no memory

    def config(self, num_items: int, dims: dict[str, int], block_len: int, dropout: float) -> ModelConfig:
        return ModelConfig(num_items=num_items, model=self.model, rule=self.rule, block_len=block_len,
                           slots=self.slots or 1, dropout=dropout, **dims)


def all_variants(slots: list[int], rules: tuple[str, ...] = ("pec", "tsc", "exc")) -> list[Variant]:
    """Baselines first, then for each M: SRMN and CmnRec with every rule (so partial runs compare)."""
    variants = [Variant("pop", "pop", "none", None), Variant("gru4rec", "gru4rec", "none", None),
                Variant("lstm4rec", "lstm4rec", "none", None)]
    for m in slots:
        variants.append(Variant(f"srmn-m{m}", "srmn", "every", m))
        variants += [Variant(f"cmnrec-{rule}-m{m}", "cmnrec", rule, m) for rule in rules]
    return variants


def select_variants(variants: list[Variant], wanted: str | None) -> list[Variant]:
    """--models: names or name prefixes ("srmn", "cmnrec-tsc", "cmnrec-pec-m4"), comma-separated."""
    if not wanted:
        return variants
    chosen: list[Variant] = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        matches = [v for v in variants if v.name == token or v.name.startswith(token + "-")]
        if not matches:
            raise typer.BadParameter(f"unknown model {token!r}; known: {', '.join(v.name for v in variants)}",
                                     param_hint="--models")
        chosen += [v for v in matches if v not in chosen]
    return [v for v in variants if v in chosen]  # keep the table order


def result_row(variant: Variant, report: Any) -> dict[str, Any]:
    return {
        "name": variant.name, "model": variant.model, "rule": variant.rule, "slots": variant.slots,
        "test": report.metrics["test"], "valid": report.metrics["valid"],
        "epochs": report.epochs, "best_epoch": report.best_epoch, "stopped": report.stopped,
        "seconds_per_epoch": report.seconds_per_epoch, "train_seconds": report.train_seconds,
        "parameters": report.parameters,
        "history": [{"epoch": h["epoch"], "loss": h["loss"], "seconds": h["seconds"],
                     "valid_ndcg@10": h["valid"]["ndcg@10"]} for h in report.history],
    }


def relative_to_reference(row: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """A CmnRec row's test NDCG@10 relative to SRMN with the same M (0.05 = 5% better); else None."""
    if row["model"] != "cmnrec":
        return None
    reference = next((r for r in rows if r["model"] == REFERENCE and r["slots"] == row["slots"]), None)
    if reference is None or reference["test"]["ndcg@10"] <= 0:
        return None
    return row["test"]["ndcg@10"] / reference["test"]["ndcg@10"] - 1.0


def _versus_reference(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    change = relative_to_reference(row, rows)
    return "" if change is None else f"{100 * change:+.1f}%"


def hit_rate_error(hit_rate: float, users: int) -> float:
    """Binomial standard error of a hit rate measured on `users` independent test targets."""
    return math.sqrt(hit_rate * (1.0 - hit_rate) / max(users, 1))


def shape_summary(rows: list[dict[str, Any]]) -> list[str]:
    """The paper's claims read off this run's test NDCG@10 (neural vs popularity, rules vs SRMN)."""
    lines = []
    pop = next((r["test"]["ndcg@10"] for r in rows if r["model"] == "pop"), None)
    neural = [r["test"]["ndcg@10"] for r in rows if r["model"] != "pop"]
    if pop and neural:
        lines.append(f"- Neural models: NDCG@10 {min(neural):.4f} to {max(neural):.4f}, "
                     f"{min(neural) / pop:.2f}x to {max(neural) / pop:.2f}x popularity ({pop:.4f}).")
    for rule in ("pec", "tsc", "exc"):
        changes = [100 * c for c in (relative_to_reference(r, rows) for r in rows if r["rule"] == rule)
                   if c is not None]
        if changes:
            lines.append(f"- CmnRec {rule.upper()} vs SRMN at the same M: NDCG@10 "
                         f"{', '.join(f'{c:+.1f}%' for c in changes)} (mean {sum(changes) / len(changes):+.1f}%).")
    return lines


def render_markdown(payload: dict[str, Any]) -> str:
    rows = payload["results"]
    s, d = payload["settings"], payload["dataset"]
    evaluated = d.get("evaluated_users", d["users"])
    main = markdown_table(
        ["model", "rule", "M", "HR@10 (± s.e.)", "NDCG@10", "MRR@10", "NDCG@10 vs SRMN (same M)",
         "valid NDCG@10", "epochs (best)", "s/epoch", "parameters"],
        [[r["model"], r["rule"] if r["model"] == "cmnrec" else "", r["slots"] or "",
          f"{r['test']['hr@10']:.4f} ± {hit_rate_error(r['test']['hr@10'], evaluated):.4f}",
          f"{r['test']['ndcg@10']:.4f}", f"{r['test']['mrr@10']:.4f}",
          _versus_reference(r, rows), f"{r['valid']['ndcg@10']:.4f}",
          f"{r['epochs']} ({r['best_epoch']})", f"{r['seconds_per_epoch']:.1f}", f"{r['parameters']:,}"]
         for r in rows])
    other = markdown_table(
        ["model", "rule", "M", "HR@5", "NDCG@5", "MRR@5", "HR@20", "NDCG@20", "MRR@20"],
        [[r["model"], r["rule"] if r["model"] == "cmnrec" else "", r["slots"] or "",
          *(f"{r['test'][f'{m}@{k}']:.4f}" for k in (5, 20) for m in ("hr", "ndcg", "mrr"))]
         for r in rows])
    m = payload["machine"]
    dims = ", ".join(f"{key}={value}" for key, value in s["dims"].items())
    return "\n".join([
        "# Accuracy on MovieLens-100k (leave-one-out by time, full ranking)",
        "",
        f"Measured {payload['date']} by `bench/accuracy.py` on {m['cpu']} ({m['torch_threads']} torch "
        f"thread(s), torch {m['torch']}, git {m['git']}); total run {payload['total_seconds'] / 60:.1f} min.",
        f"Data: {d['name']}, {d['users']} users, {d['items']} items, {d['interactions']} interactions "
        "(per user: last event = test target, the one before = validation target, the rest = training).",
        f"Same settings for every neural model: {s['dims_name']} sizes ({dims}), T={s['block_len']}, "
        f"dropout {s['dropout']}, Adam lr {s['train']['lr']}, batch {s['train']['batch_size']} users, "
        f"clip {s['train']['clip_norm']}, at most {s['train']['epochs']} epochs with patience "
        f"{s['train']['patience']} on valid NDCG@10 (best epoch's weights kept), seed {s['train']['seed']}.",
        "Popularity: training-part item counts, no epochs. s/epoch: training pass only (no evaluation).",
        f"Noise: each figure is a mean over {evaluated} test targets; the binomial standard error of HR@10 is "
        "given beside it, so rows that differ by less than about two of those are not told apart by this run.",
        "",
        "Test targets, cutoff 10:",
        "",
        main,
        "",
        "Summary (test NDCG@10):",
        "",
        *shape_summary(rows),
        "",
        "Test targets, cutoffs 5 and 20:",
        "",
        other,
    ])


def main(
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs per network.")] = 15,
    patience: Annotated[int, typer.Option(min=0, help="Early stopping patience on valid NDCG@10 (0: off).")] = 3,
    dims: Annotated[str, typer.Option(help="Model sizes: small (k=64,H=128,W=64,b=32) or paper.")] = "small",
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    models: Annotated[str | None, typer.Option(help="Comma-separated names or prefixes (pop, gru4rec, "
                                                    "lstm4rec, srmn, srmn-m4, cmnrec-tsc, ...).")] = None,
    slots: Annotated[str, typer.Option(help="Values of M for SRMN and CmnRec.")] = "2,4,9",
    block_len: Annotated[int, typer.Option(min=1, help="T, events per block.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1, help="Users per batch.")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate (> 0).")] = 3e-3,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99)] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    dataset: Annotated[str, typer.Option(help="Data set name or ratings file.")] = "ml-100k",
    users: Annotated[int | None, typer.Option(min=3, help="Keep only the first N users (quick checks).")] = None,
    out: Annotated[Path, typer.Option(help="JSON result file; the markdown goes beside it.")] =
    RESULTS_DIR / "accuracy.json",
) -> None:
    """Train every model on the same data with the same settings and tabulate the test metrics."""
    if dims not in DIMS:
        raise typer.BadParameter(f"expected one of {', '.join(DIMS)}, got {dims!r}", param_hint="--dims")
    try:
        slot_values = parse_ints(slots)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--slots") from None
    if max(slot_values) > block_len:
        raise typer.BadParameter(f"M={max(slot_values)} exceeds T={block_len}", param_hint="--slots")
    if lr <= 0:
        raise typer.BadParameter(f"must be > 0, got {lr}", param_hint="--lr")
    chosen = select_variants(all_variants(slot_values), models)
    settings = TrainSettings(epochs=epochs, patience=patience, batch_size=batch_size, lr=lr, seed=seed,
                             threads=threads)
    data = benchmark_dataset(dataset, users)
    began = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "accuracy", "date": now_utc(), "dataset": dataset_info(data),
        "settings": {"dims_name": dims, "dims": DIMS[dims], "block_len": block_len, "dropout": dropout,
                     "slots": slot_values, "train": settings.to_dict(),
                     "protocol": "leave-one-out by time, full ranking over all items, pessimistic ties"},
        "results": [],
    }
    for index, variant in enumerate(chosen, 1):
        config = variant.config(data.num_items, DIMS[dims], block_len, dropout)
        typer.echo(f"[{index}/{len(chosen)}] {variant.name} ...", err=True)
        _, report = train_model(data, config, settings, progress=False)
        row = result_row(variant, report)
        payload["results"].append(row)
        typer.echo(f"    test NDCG@10 {row['test']['ndcg@10']:.4f}  HR@10 {row['test']['hr@10']:.4f}  "
                   f"epochs {row['epochs']} (best {row['best_epoch']})  {row['seconds_per_epoch']:.1f} s/epoch  "
                   f"{row['train_seconds']:.0f} s", err=True)
        payload["machine"] = machine_info()
        payload["total_seconds"] = time.perf_counter() - began
        save_results(out, payload, render_markdown(payload))
    markdown = render_markdown(payload)
    typer.echo(markdown)
    typer.echo(f"\nsaved {out} and {out.with_suffix('.md')}", err=True)


if __name__ == "__main__":
    typer.run(main)
