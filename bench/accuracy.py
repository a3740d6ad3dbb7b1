"""Accuracy on MovieLens-100k, MovieLens-1M and Amazon Beauty: popularity, GRU4Rec, SRMN, CmnRec and
SASRec, several seeds, both evaluation protocols, with the published figures beside ours.

Every network is trained and evaluated by the project's own code (training.trainer.train_model:
block-by-block truncated BPTT for the recurrent models, the last max_len events for SASRec; early
stopping on validation NDCG@10; then leave-one-out by time, full ranking over all items, once with
every item ranked and once with the user's history masked, the published tables' protocol).

Resumable: each (data set, model, seed) result is written to
bench/results/accuracy/<data set>/<model>-seed<k>.json as soon as it finishes and a rerun skips it, so
the table can be filled over several runs. A run cut off before it finishes (a session's end) leaves
its training state in bench/results/accuracy_state/ after every epoch, and a rerun goes on from
there, counting the time already spent against --max-seconds. After each run the summary (mean and standard deviation
over the seeds present) is rewritten to bench/results/accuracy.json and bench/results/accuracy.md.
ML-1M and Beauty are read from $CMNREC_DATA_DIR, else from ../shared/data (never copied here).

    .venv/bin/python bench/accuracy.py --datasets ml-100k --models pop,gru4rec,cmnrec-tsc-m4,sasrec
    .venv/bin/python bench/accuracy.py --datasets ml-1m --models sasrec --seeds 0 --max-seconds 900
    .venv/bin/python bench/accuracy.py --summary-only      # rebuild the tables from saved runs
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

if __package__ in (None, ""):  # run as a script (python bench/accuracy.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS_DIR, REPO_ROOT, dataset_info, machine_info, markdown_table,
                          now_utc, parse_ints, save_results)
from data.dataset import SequenceDataset
from data.loaders import DATA_DIR_ENV, LOCAL_DATASETS, load_dataset, local_dataset_path
from model.config import HEADS, NORMED_MODELS, ModelConfig
from training.recipes import RECIPES as TRAINING_RECIPES
from training.recipes import Recipe
from training.settings import LOSS_WEIGHTINGS, LR_SCHEDULES, TrainSettings

RUNS_DIR = RESULTS_DIR / "accuracy"
# Training states of unfinished runs, so that a run longer than a session goes on where it stopped;
# removed when a run ends. ML-1M states are 6-10 MB: commit them at the end of a session to go on
# in the next. A Beauty state is about 120 MB (two 57k x 64 matrices, their Adam moments and best
# copies): too large to commit, so Beauty runs finish within a session.
STATE_DIR = RESULTS_DIR / "accuracy_state"
BUDGET = 900.0  # seconds of training per run; a row trained with another budget says so (+<n>s)
DATASETS = ("ml-100k", "ml-1m", "beauty")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The recipes of `cmnrec train` (training/recipes.py), with a full softmax and one rate for every
# model, each target's loss weighed per step: a row trained otherwise says so in its name
# (+sampled<K>, +lr<r>, +cosine, +T<n>, +k<n>+H<n>, +wtarget), so a row's name keeps its meaning.
RECIPES = {name: dataclasses.replace(recipe, sampled_softmax=0, per_model=(), loss_weighting="step")
           for name, recipe in TRAINING_RECIPES.items()}

# LRURec paper (Yue et al., WSDM 2024), Table 3, on exactly these splits, items of the input
# sequence masked (../shared/data/README.md). None of them reports ml-100k.
PUBLISHED = {
    "ml-1m": {"GRU4Rec": (0.1693, 0.2962), "NARM": (0.1665, 0.2864), "SASRec": (0.1902, 0.3181),
              "BERT4Rec": (0.1638, 0.3089), "FMLP-Rec": (0.1530, 0.2907),
              "LRURec": (0.1930, 0.3264)},
    "beauty": {"GRU4Rec": (0.0200, 0.0338), "NARM": (0.0189, 0.0331), "SASRec": (0.0292, 0.0504),
               "BERT4Rec": (0.0242, 0.0468), "FMLP-Rec": (0.0252, 0.0462),
               "LRURec": (0.0309, 0.0528)},
}
PROTOCOLS = {"seen_excluded": "history masked", "all": "all items"}


@dataclass(frozen=True)
class Variant:
    """One row of the table: a name and the ModelConfig fields that make it."""

    name: str  # e.g. "cmnrec-tsc-m4"
    model: str
    rule: str = "none"
    slots: int | None = None  # None: no memory
    tied: bool = False  # score with the item embeddings even where the recipe does not (+tied)
    block_len: int | None = None  # T instead of the recipe's (+T<n>)
    dropout: float | None = None  # instead of the recipe's (+d<p>)
    embed_dim: int | None = None  # k instead of the recipe's (+k<n>)
    hidden_dim: int | None = None  # H (LRURec: N) instead of the recipe's (+H<n>)
    input_norm: bool = False  # LayerNorm on the embedding where the model takes it (+inorm)
    head: str | None = None  # output head instead of the recipe's, where the model takes it (+<head>)

    def config(self, num_items: int, recipe: Recipe) -> ModelConfig:
        fields = recipe.model_fields(self.model)
        if self.tied:
            fields["tied"] = True
        if self.block_len is not None:
            fields["block_len"] = self.block_len
        if self.dropout is not None:
            fields["dropout"] = self.dropout
        if self.embed_dim is not None:
            fields["embed_dim"] = self.embed_dim
        if self.hidden_dim is not None:
            fields["hidden_dim"] = self.hidden_dim
        if self.model in NORMED_MODELS:
            if self.input_norm:
                fields["input_norm"] = True
            if self.head is not None:
                fields["head"] = self.head
        return ModelConfig(num_items=num_items, model=self.model, rule=self.rule,
                           slots=self.slots or 1, **fields)


def all_variants(slots: list[int]) -> list[Variant]:
    variants = [Variant("pop", "pop"), Variant("gru4rec", "gru4rec")]
    for m in slots:
        variants.append(Variant(f"srmn-m{m}", "srmn", "every", m))
        variants += [Variant(f"cmnrec-{rule}-m{m}", "cmnrec", rule, m) for rule in ("pec", "tsc")]
    return variants + [Variant("lrurec", "lrurec"), Variant("sasrec", "sasrec")]


def select_variants(variants: list[Variant], wanted: str | None) -> list[Variant]:
    """--models: names or name prefixes ("srmn", "cmnrec-tsc", "cmnrec-pec-m4"), comma-separated."""
    if not wanted:
        return variants
    chosen: list[Variant] = []
    for token in (t.strip() for t in wanted.split(",") if t.strip()):
        matches = [v for v in variants if v.name == token or v.name.startswith(token + "-")]
        if not matches:
            raise typer.BadParameter(f"unknown model {token!r}; known: "
                                     f"{', '.join(v.name for v in variants)}", param_hint="--models")
        chosen += [v for v in matches if v not in chosen]
    return chosen


def load_benchmark_dataset(name: str, data_dir: Path | None) -> SequenceDataset:
    if name in LOCAL_DATASETS:
        root = data_dir or Path(os.environ.get(DATA_DIR_ENV) or SHARED_DATA)
        return load_dataset(local_dataset_path(name, root))
    return load_dataset(name)


def run_path(dataset: str, variant: str, seed: int) -> Path:
    return RUNS_DIR / dataset / f"{variant}-seed{seed}.json"


def state_path(dataset: str, variant: str, seed: int) -> Path:
    """The training state of an unfinished run (training/resume.py): a rerun goes on from it."""
    return STATE_DIR / dataset / f"{variant}-seed{seed}.pt"


def train_one(data: SequenceDataset, dataset: str, variant: Variant, seed: int,
              settings: TrainSettings) -> dict[str, Any]:
    from training.trainer import train_model

    config = variant.config(data.num_items, RECIPES[dataset])
    began = now_utc()
    state = state_path(dataset, variant.name, seed)
    _, report = train_model(data, config, settings, progress=False, state_file=state)
    state.unlink(missing_ok=True)  # the row below holds what is left to know (pop keeps none)
    return {
        "dataset": dataset, "name": variant.name, "model": variant.model, "rule": variant.rule,
        "slots": variant.slots, "seed": seed, "date": began, "finished": now_utc(),
        "all": report.metrics, "seen_excluded": report.seen_excluded,
        "epochs": report.epochs, "best_epoch": report.best_epoch, "steps": report.steps,
        "stopped": report.stopped, "seconds_per_epoch": report.seconds_per_epoch,
        "train_seconds": report.train_seconds, "parameters": report.parameters,
        "config": config.to_dict(), "settings": settings.to_dict(),
        "data": dataset_info(data), "machine": machine_info(),
        "history": [{"epoch": h["epoch"], "step": h["step"], "loss": h.get("loss"),
                     "seconds": h.get("seconds"), "valid_ndcg@10": h["valid"]["ndcg@10"],
                     "valid_masked_ndcg@10": h["valid_seen_excluded"]["ndcg@10"]}
                    for h in report.history],
    }


# -- summary ------------------------------------------------------------------------------------
def saved_runs() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(RUNS_DIR.glob("*/*.json"))]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation); None for the deviation of one value."""
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data set, model): mean and standard deviation over its seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["name"]), []).append(run)
    order = {name: i for i, name in enumerate(DATASETS)}
    rows = []
    for (dataset, name), group in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9),
                                                                          _model_order(kv[0][1]))):
        row: dict[str, Any] = {"dataset": dataset, "name": name, "seeds": sorted(r["seed"] for r in group),
                               "parameters": group[0]["parameters"],
                               "epochs": _mean_std([r["epochs"] for r in group]),
                               "best_epoch": _mean_std([r["best_epoch"] for r in group]),
                               "seconds_per_epoch": _mean_std([r["seconds_per_epoch"] for r in group]),
                               "stopped": sorted({r["stopped"] for r in group})}
        for protocol in PROTOCOLS:
            for split in ("test", "valid"):
                for metric in ("hr@10", "ndcg@10", "mrr@10"):
                    row[f"{protocol}.{split}.{metric}"] = _mean_std(
                        [r[protocol][split][metric] for r in group])
        rows.append(row)
    return rows


def _model_order(name: str) -> tuple[int, str]:
    rank = {"pop": 0, "gru4rec": 1, "srmn": 2, "cmnrec": 3, "lrurec": 4, "sasrec": 5}
    return rank.get(name.split("+")[0].split("-")[0], 5), name


def _ms(value: tuple[float, float | None], digits: int = 4) -> str:
    mean, std = value
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def render_markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = ["# Accuracy: MovieLens-100k, MovieLens-1M, Amazon Beauty", "",
             "By `bench/accuracy.py` (one result file per data set, model and seed under "
             "`bench/results/accuracy/`; a rerun skips what exists). Leave-one-out by time: per user "
             "the last event is the test target, the one before it the validation target; full "
             "ranking over all items, pessimistic ties. **masked**: the items of the user's whole "
             "history before the target are removed from the ranking (the published tables' "
             "protocol; they mask the model's input sequence, at most 200 events on ML-1M, so for the "
             "26% of ML-1M users with longer histories we mask more items than they do, and no "
             "target there repeats an earlier item). **all**: every item ranked. "
             "Figures are mean ± standard deviation over the seeds listed; s/epoch is the "
             "training pass alone (no evaluation), one torch thread on a shared 2-core CPU. "
             "Rows stopped by `max_seconds` ran out of their time budget before early stopping: "
             "they are under-trained. The earlier single-seed sweep of every rule and M on ml-100k "
             "(old recipe: no dropout, Adam lr 3e-3) is in `bench/results/accuracy_sweep_ml100k.md`.",
             ""]
    for dataset in DATASETS:
        mine = [r for r in rows if r["dataset"] == dataset]
        if not mine:
            lines += [f"## {dataset}", "", "No run yet.", ""]
            continue
        recipe = RECIPES[dataset]
        info = next(r["data"] for r in runs if r["dataset"] == dataset)
        lines += [f"## {dataset}", "",
                  f"{info['users']:,} users, {info['items']:,} items, {info['interactions']:,} "
                  f"interactions (mean history {info['mean_length']:.1f}). Recipe: k=64, H=128, "
                  f"W=64, b=32, T={recipe.block_len}; SASRec L={recipe.max_len}, 2 blocks, 2 heads, "
                  f"tied output; dropout {recipe.dropout}, AdamW lr {recipe.lr} weight decay "
                  f"{recipe.weight_decay}, {recipe.batch_size} users per batch, at most "
                  f"{recipe.epochs} epochs, patience {recipe.patience} validations on valid "
                  f"NDCG@10 (all items), {recipe.lr_schedule} rate. Rows named <model>+cosine: "
                  "the same with the rate decayed to 0 by a cosine over the time budget after "
                  "100 warm-up steps (`--lr-schedule cosine`); +sampled<K>: trained with a "
                  "sampled softmax over the block's targets and K random items "
                  "(`--sampled-softmax K`), evaluated on all items like every row; +lr<r>: "
                  "learning rate r (`--lr r`); +d<p>: dropout p (`--dropout p`); +tied: "
                  "items scored with the item embeddings (`--tied`); +T<n>: blocks of n events "
                  "(`--block-len n`); +k<n>, +H<n>: embedding size k and controller size H "
                  "(LRURec: state size N; `--embed-dim`, `--hidden-dim`); +wtarget: every target "
                  "weighs the same in the loss, not every optimizer step "
                  "(`--loss-weighting target`); +inorm: a LayerNorm on the item embedding "
                  "(`--input-norm`); +ffn: a LayerNorm and a residual feed-forward after the "
                  "output projection (`--head ffn`).", ""]
        lines.append(markdown_table(
            ["model", "seeds", "masked NDCG@10", "masked HR@10", "masked MRR@10", "all NDCG@10",
             "all HR@10", "all MRR@10", "valid masked NDCG@10", "epochs (best)", "s/epoch",
             "parameters", "stopped"],
            [[r["name"], len(r["seeds"]), _ms(r["seen_excluded.test.ndcg@10"]),
              _ms(r["seen_excluded.test.hr@10"]), _ms(r["seen_excluded.test.mrr@10"]),
              _ms(r["all.test.ndcg@10"]), _ms(r["all.test.hr@10"]), _ms(r["all.test.mrr@10"]),
              _ms(r["seen_excluded.valid.ndcg@10"]),
              f"{r['epochs'][0]:.1f} ({r['best_epoch'][0]:.1f})",
              f"{r['seconds_per_epoch'][0]:.1f}", f"{r['parameters']:,}", ", ".join(r["stopped"])]
             for r in mine]))
        published = PUBLISHED.get(dataset)
        if published:
            lines += ["", "Ours beside the published figures (test, masked protocol; published: "
                      "LRURec paper, Table 3, same split):", "",
                      markdown_table(["model", "ours NDCG@10", "published NDCG@10", "ours HR@10",
                                      "published HR@10"], _beside_published(mine, published))]
        lines.append("")
    notes = RESULTS_DIR.parent / "ACCURACY_NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


PUBLISHED_NAME = {"gru4rec": "GRU4Rec", "sasrec": "SASRec", "lrurec": "LRURec"}


def _beside_published(mine: list[dict[str, Any]],
                      published: dict[str, tuple[float, float]]) -> list[list[str]]:
    rows = []
    for r in mine:
        theirs = published.get(PUBLISHED_NAME.get(r["name"].split("+")[0], ""))
        rows.append([r["name"], _ms(r["seen_excluded.test.ndcg@10"]),
                     f"{theirs[0]:.4f}" if theirs else "–", _ms(r["seen_excluded.test.hr@10"]),
                     f"{theirs[1]:.4f}" if theirs else "–"])
    for name, (ndcg, hr) in published.items():
        if name not in PUBLISHED_NAME.values():
            rows.append([f"{name} (published only)", "–", f"{ndcg:.4f}", "–", f"{hr:.4f}"])
    return rows


def write_summary() -> tuple[Path, Path]:
    runs = saved_runs()
    rows = summarise(runs)
    payload = {"benchmark": "accuracy", "date": now_utc(),
               "machine": runs[-1]["machine"] if runs else machine_info(),
               "total_seconds": sum(r["train_seconds"] for r in runs),
               "protocols": {"all": "every item ranked",
                             "seen_excluded": "the user's whole history before the target masked"},
               "recipes": {name: vars(recipe) for name, recipe in RECIPES.items()},
               "published": PUBLISHED, "rows": rows, "runs": [r["dataset"] + "/" + r["name"] +
                                                              f"-seed{r['seed']}" for r in runs]}
    return save_results(RESULTS_DIR / "accuracy.json", payload, render_markdown(rows, runs))


def main(
    datasets: Annotated[str, typer.Option(help="Comma-separated: ml-100k, ml-1m, beauty.")] = "ml-100k",
    models: Annotated[str | None, typer.Option(help="Comma-separated names or prefixes (pop, gru4rec, "
                                                    "srmn-m4, cmnrec-tsc, cmnrec-pec-m4, lrurec, sasrec).")] =
    "pop,gru4rec,cmnrec-tsc-m4,sasrec",
    slots: Annotated[str, typer.Option(help="Values of M for SRMN and CmnRec.")] = "4",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    max_seconds: Annotated[float, typer.Option(
        min=1.0, help="Training time budget per run, s (over all resumed parts; rows with "
                      "another budget than 900 s are named <model>+<n>s).")] = BUDGET,
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    data_dir: Annotated[Path | None, typer.Option(help="Directory holding ml-1m/ and beauty/ "
                                                      "(default $CMNREC_DATA_DIR, else ../shared/data).")] = None,
    summary_only: Annotated[bool, typer.Option(help="Only rebuild the tables from saved runs.")] = False,
    lr_schedule: Annotated[str | None, typer.Option(
        help="constant, cosine or linear (default: the data set's recipe). Rows trained with a "
             "decaying rate are named <model>+<schedule> and kept beside the others.")] = None,
    warmup_steps: Annotated[int, typer.Option(min=0, help="Warm-up steps with a decaying rate.")] = 100,
    sampled_softmax: Annotated[int, typer.Option(
        min=0, help="Train with a sampled softmax of this many random items besides the block's "
                    "targets (rows named <model>+sampled<K>); 0 = all items.")] = 0,
    tied: Annotated[bool, typer.Option(
        help="Score items with the item embeddings in every model (rows named <model>+tied; "
             "SASRec and LRURec always do).")] = False,
    block_len: Annotated[int | None, typer.Option(
        min=1, help="T of the recurrent models instead of the recipe's (rows named "
                    "<model>+T<n>).")] = None,
    lr: Annotated[float | None, typer.Option(
        min=1e-6, help="Learning rate instead of the recipe's (rows named "
                       "<model>+lr<rate>).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Users per batch instead of the recipe's (rows named <model>+b<n>).")] = None,
    dropout: Annotated[float | None, typer.Option(
        min=0.0, max=0.99, help="Dropout instead of the recipe's (rows named <model>+d<p>).")] = None,
    embed_dim: Annotated[int | None, typer.Option(
        min=1, help="Item embedding size k instead of the recipe's (rows named <model>+k<n>).")] = None,
    hidden_dim: Annotated[int | None, typer.Option(
        min=1, help="Controller size H (LRURec: state size N) instead of the recipe's (rows named "
                    "<model>+H<n>).")] = None,
    input_norm: Annotated[bool, typer.Option(
        help="LayerNorm on the item embedding of CmnRec, SRMN and GRU4Rec (rows named "
             "<model>+inorm).")] = False,
    head: Annotated[str | None, typer.Option(
        help="Output head of CmnRec, SRMN and GRU4Rec: linear or ffn (rows named "
             "<model>+<head>).")] = None,
    loss_weighting: Annotated[str | None, typer.Option(
        help="step or target (TrainSettings.loss_weighting) instead of the recipe's (rows named "
             "<model>+w<weighting>).")] = None,
) -> None:
    """Train each (data set, model, seed) not yet saved, save it, and rebuild the summary."""
    if summary_only:
        paths = write_summary()
        typer.echo(f"wrote {paths[0]} and {paths[1]}", err=True)
        return
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        raise typer.BadParameter(f"expected some of {', '.join(DATASETS)}, got {datasets!r}",
                                 param_hint="--datasets")
    try:
        slot_values, seed_values = parse_ints(slots), [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--slots/--seeds") from None
    chosen = select_variants(all_variants(slot_values), models)
    if lr_schedule is not None and lr_schedule not in LR_SCHEDULES:
        raise typer.BadParameter(f"expected one of {', '.join(LR_SCHEDULES)}, got {lr_schedule!r}",
                                 param_hint="--lr-schedule")
    if head is not None and head not in HEADS:
        raise typer.BadParameter(f"expected one of {', '.join(HEADS)}, got {head!r}",
                                 param_hint="--head")
    if loss_weighting is not None and loss_weighting not in LOSS_WEIGHTINGS:
        raise typer.BadParameter(f"expected one of {', '.join(LOSS_WEIGHTINGS)}, got "
                                 f"{loss_weighting!r}", param_hint="--loss-weighting")
    for dataset in names:
        recipe = RECIPES[dataset]
        weighting = loss_weighting or recipe.loss_weighting
        schedule = lr_schedule or recipe.lr_schedule
        warmup = warmup_steps if schedule != "constant" else 0
        suffix = ((f"+{schedule}" if schedule != recipe.lr_schedule else "")
                  + (f"+lr{lr:g}" if lr is not None and lr != recipe.lr else "")
                  + (f"+d{dropout:g}" if dropout is not None and dropout != recipe.dropout else "")
                  + (f"+b{batch_size}" if batch_size and batch_size != recipe.batch_size else "")
                  + (f"+w{weighting}" if weighting != recipe.loss_weighting else "")
                  + (f"+k{embed_dim}" if embed_dim and embed_dim != recipe.embed_dim else "")
                  + (f"+H{hidden_dim}" if hidden_dim and hidden_dim != recipe.hidden_dim else "")
                  + ("+inorm" if input_norm else "")
                  + (f"+{head}" if head and head != recipe.head else "")
                  + ("+tied" if tied else "") + (f"+T{block_len}" if block_len else "")
                  + (f"+sampled{sampled_softmax}" if sampled_softmax else "")
                  + (f"+{max_seconds:g}s" if max_seconds != BUDGET else ""))
        variants = [v if not suffix or v.model == "pop"
                    else dataclasses.replace(v, name=v.name + suffix, tied=tied,
                                             block_len=block_len, dropout=dropout,
                                             embed_dim=embed_dim, hidden_dim=hidden_dim,
                                             input_norm=input_norm, head=head)
                    for v in chosen]
        todo = [(v, s) for s in seed_values for v in variants  # every model's first seed first
                if not run_path(dataset, v.name, s).exists()]
        if not todo:
            typer.echo(f"{dataset}: every requested run is saved", err=True)
            continue
        data = load_benchmark_dataset(dataset, data_dir)
        for variant, seed in todo:
            settings = TrainSettings(epochs=recipe.epochs,
                                     batch_size=batch_size or recipe.batch_size,
                                     lr=lr if lr is not None else recipe.lr,
                                     weight_decay=recipe.weight_decay,
                                     lr_schedule=schedule, warmup_steps=warmup,
                                     sampled_softmax=sampled_softmax,
                                     loss_weighting=weighting,
                                     patience=recipe.patience, eval_every=recipe.eval_every,
                                     seed=seed, threads=threads, max_seconds=max_seconds)
            resumed = " (resumed)" if state_path(dataset, variant.name, seed).exists() else ""
            typer.echo(f"{now_utc()} {dataset} {variant.name} seed {seed}{resumed} ...", err=True)
            began = time.perf_counter()
            result = train_one(data, dataset, variant, seed, settings)
            path = run_path(dataset, variant.name, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=1) + "\n")
            masked = result["seen_excluded"]["test"]
            typer.echo(f"    masked test NDCG@10 {masked['ndcg@10']:.4f} HR@10 {masked['hr@10']:.4f}"
                       f"  all-items NDCG@10 {result['all']['test']['ndcg@10']:.4f}  epochs "
                       f"{result['epochs']} (best {result['best_epoch']}, {result['stopped']})  "
                       f"{result['seconds_per_epoch']:.1f} s/epoch  "
                       f"{time.perf_counter() - began:.0f} s", err=True)
            write_summary()
    paths = write_summary()
    typer.echo(f"wrote {paths[0]} and {paths[1]}", err=True)


if __name__ == "__main__":
    typer.run(main)
