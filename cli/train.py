"""`cmnrec train`, `cmnrec evaluate`, `cmnrec predict`.

Plain functions with typer options; cli/app.py registers them. Torch and the training modules
are imported inside the function bodies, because cli/app.py is imported by the torch-free
serving install.
"""
from __future__ import annotations

import dataclasses
import json
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from model.config import CHUNK_RULES, MODELS, ModelConfig
from training.recipes import RECIPE_CHOICES, RECIPES, recipe_for
from training.settings import COMPILE_MODES, PRECISIONS, TrainSettings

if TYPE_CHECKING:
    from data.dataset import SequenceDataset


# The choices and defaults come from ModelConfig and TrainSettings (torch-free modules), so the
# CLI never drifts from the configuration it builds.
ModelName = Enum("ModelName", {name: name for name in MODELS}, type=str)  # type: ignore[misc]
ChunkRule = Enum("ChunkRule", {name: name for name in CHUNK_RULES}, type=str)  # type: ignore[misc]
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)  # type: ignore[misc]
CompileMode = Enum("CompileMode", {name: name for name in COMPILE_MODES}, type=str)  # type: ignore[misc]
RecipeName = Enum("RecipeName", {name: name for name in RECIPE_CHOICES}, type=str)  # type: ignore[misc]
_MODEL = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
_TRAIN = {f.name: f.default for f in dataclasses.fields(TrainSettings)}


BUILTIN_DATASETS = ("ml-100k", "ml-1m", "beauty", "synthetic")

# ModelConfig / TrainSettings field -> the CLI option that sets it (for error messages).
_OPTION_OF_FIELD = {
    "num_items": "--dataset", "model": "--model", "rule": "--rule", "embed_dim": "--embed-dim",
    "hidden_dim": "--hidden-dim", "mem_width": "--mem-width", "read_heads": "--read-heads",
    "attn_dim": "--attn-dim", "block_len": "--block-len", "slots": "--slots",
    "out_dim": "--out-dim", "dropout": "--dropout", "layers": "--layers", "epochs": "--epochs",
    "batch_size": "--batch-size", "lr": "--lr", "weight_decay": "--weight-decay",
    "patience": "--patience", "clip_norm": "--clip-norm", "threads": "--threads",
    "max_seconds": "--max-seconds", "eval_batch_size": "--eval-batch-size", "seed": "--seed",
    "device": "--device", "precision": "--precision", "compile": "--compile", "nproc": "--nproc",
    "tied": "--tied", "max_len": "--max-len", "heads": "--heads",
    "optimizer": "--optimizer", "eval_every": "--eval-every", "lr_schedule": "--lr-schedule",
    "warmup_steps": "--warmup-steps", "sampled_softmax": "--sampled-softmax",
    "loss_weighting": "--loss-weighting", "input_norm": "--input-norm", "head": "--head",
}


def _bad_option(error: ValueError) -> typer.BadParameter:
    """Turn a config ValueError ("field: reason") into a CLI error naming the option."""
    message = str(error)
    field = message.split(":", 1)[0].strip()
    return typer.BadParameter(message, param_hint=_OPTION_OF_FIELD.get(field, "option"))


def load_dataset_source(source: str, min_item_freq: int = 1, seed: int = 0,
                        cache_dir: Optional[Path] = None) -> "SequenceDataset":
    """The data set named by --dataset: "ml-100k", "synthetic" (generated with `seed`) or a file.

    Errors name the option: typer.BadParameter with param_hint --dataset.
    """
    from data.errors import DatasetError

    try:
        if source == "synthetic":
            from data.remap import filter_min_item_freq
            from data.synthetic import synthetic_dataset

            return filter_min_item_freq(synthetic_dataset(seed=seed), min_item_freq)
        from data.loaders import load_dataset

        return load_dataset(source, min_item_freq=min_item_freq, cache_dir=cache_dir)
    except (DatasetError, OSError, ValueError, KeyError) as error:
        raise typer.BadParameter(str(error), param_hint="--dataset") from error


def metrics_table(metrics: dict[str, dict[str, float]], title: str) -> Table:
    """A rich table: one row per metric (HR/NDCG/MRR at 5, 10, 20), one column per split."""
    from training.metrics import metric_keys

    table = Table(title=title)
    table.add_column("metric")
    splits = [s for s in ("valid", "test") if s in metrics]
    for split in splits:
        table.add_column(split, justify="right")
    for key in metric_keys():
        table.add_row(key.upper(), *(f"{metrics[s][key]:.4f}" for s in splits))
    return table


def _chosen_recipe(name: str, data: "SequenceDataset") -> Optional[str]:
    """--recipe resolved: a key of RECIPES, or None for the ModelConfig/TrainSettings defaults."""
    if name == "auto":
        return recipe_for(len(data.users), data.num_items - 1)
    return None if name == "none" else name


def _with_recipe(ctx: typer.Context, recipe: Optional[str], model: str,
                 values: dict[str, Any]) -> dict[str, Any]:
    """`values` (option name -> value) with the recipe's value wherever the option was not given."""
    if recipe is None:
        return values
    fields = {**RECIPES[recipe].model_fields(model), **RECIPES[recipe].train_fields(model)}

    def given(name: str) -> bool:  # by name: typer ships its own copy of click's ParameterSource
        return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"

    return {name: fields[name] if name in fields and not given(name) else value
            for name, value in values.items()}


def train(
    ctx: typer.Context,
    dataset: str = typer.Option("ml-100k", help="ml-100k, ml-1m or beauty (read from $CMNREC_DATA_DIR), "
                                "synthetic, or a path to u.data, ratings.dat, ratings.csv or a "
                                "user,item,timestamp CSV"),
    recipe: RecipeName = typer.Option(RecipeName("auto"), help="the settings that won on a "
                                      "benchmark (auto: the one whose shape the data set has, by "
                                      "its users and items; none: the defaults shown here); they "
                                      "replace the defaults of the model-size, dropout and "
                                      "training options, and an option given on the command "
                                      "line wins"),
    model: ModelName = typer.Option(ModelName(_MODEL["model"]), help="network to train"),
    rule: ChunkRule = typer.Option(ChunkRule(_MODEL["rule"]), help="chunk rule of cmnrec (srmn writes memory "
                                   "at every event; the RNNs and pop have none)"),
    slots: int = typer.Option(_MODEL["slots"], help="chunks per block M (= memory slots N)"),
    block_len: int = typer.Option(_MODEL["block_len"], help="events per block T (the chunk schedule restarts every T)"),
    embed_dim: int = typer.Option(_MODEL["embed_dim"], help="item embedding size k"),
    hidden_dim: int = typer.Option(_MODEL["hidden_dim"], help="controller (LSTM/GRU) size H; lrurec: "
                                   "complex state size N of each layer"),
    mem_width: int = typer.Option(_MODEL["mem_width"], help="memory slot width W"),
    read_heads: int = typer.Option(_MODEL["read_heads"], help="DNC read heads R"),
    attn_dim: int = typer.Option(_MODEL["attn_dim"], help="chunk attention size b"),
    out_dim: Optional[int] = typer.Option(_MODEL["out_dim"], help="projection size before the item scores "
                                          "(default: embed-dim)"),
    dropout: float = typer.Option(_MODEL["dropout"], help="dropout on the embedding and the output projection"),
    tied: bool = typer.Option(_MODEL["tied"], help="score items with the item embeddings (out-dim = embed-dim)"),
    input_norm: bool = typer.Option(_MODEL["input_norm"], help="LayerNorm on the item embedding "
                                    "before the recurrence (cmnrec, srmn, gru4rec, lstm4rec)"),
    head: str = typer.Option(_MODEL["head"], help="output head of cmnrec, srmn, gru4rec and "
                             "lstm4rec: linear, or ffn (then LayerNorm and a residual "
                             "feed-forward, as LRURec's blocks)"),
    max_len: int = typer.Option(_MODEL["max_len"], help="sasrec: events its self-attention reads (L)"),
    layers: int = typer.Option(_MODEL["layers"], help="lrurec: stacked LRU blocks (hidden-dim is each "
                               "layer's complex state size N); sasrec: transformer blocks"),
    heads: int = typer.Option(_MODEL["heads"], help="sasrec: attention heads"),
    epochs: int = typer.Option(_TRAIN["epochs"], help="maximum number of epochs"),
    batch_size: int = typer.Option(_TRAIN["batch_size"], help="users per batch (one optimizer step per block)"),
    lr: float = typer.Option(_TRAIN["lr"], help="learning rate (the peak when --lr-schedule decays it)"),
    lr_schedule: str = typer.Option(_TRAIN["lr_schedule"], help="constant, cosine or linear: decay "
                                    "to 0 over --epochs or --max-seconds, whichever ends first"),
    warmup_steps: int = typer.Option(_TRAIN["warmup_steps"], help="optimizer steps of linear "
                                     "warm-up to --lr"),
    sampled_softmax: int = typer.Option(_TRAIN["sampled_softmax"], help="train against each "
                                        "block's distinct targets plus this many random items "
                                        "instead of all items (large catalogues; 0: full softmax)"),
    loss_weighting: str = typer.Option(_TRAIN["loss_weighting"], help="step: each optimizer "
                                       "step's loss is the mean over its block's targets; target: "
                                       "the sum over them / (batch-size x block-len), so a block "
                                       "with few users left makes a small step"),
    weight_decay: float = typer.Option(_TRAIN["weight_decay"], help="weight decay (AdamW) or L2 penalty (Adam)"),
    optimizer: str = typer.Option(_TRAIN["optimizer"], help="adamw or adam"),
    patience: int = typer.Option(_TRAIN["patience"], help="validations without a better validation NDCG@10 "
                                 "before stopping (0: never stop early)"),
    eval_every: int = typer.Option(_TRAIN["eval_every"], help="also validate every N optimizer steps "
                                   "(0: once per epoch)"),
    clip_norm: float = typer.Option(_TRAIN["clip_norm"], help="gradient norm clip (0: off)"),
    seed: int = typer.Option(_TRAIN["seed"], help="random seed (weights, dropout, batch order, synthetic data)"),
    threads: Optional[int] = typer.Option(_TRAIN["threads"], help="torch CPU threads (default: torch's)"),
    max_seconds: Optional[float] = typer.Option(_TRAIN["max_seconds"], help="wall-clock budget for training"),
    min_item_freq: int = typer.Option(1, help="drop items with fewer interactions"),
    eval_batch_size: int = typer.Option(_TRAIN["eval_batch_size"], help="users per evaluation forward"),
    cache_dir: Optional[Path] = typer.Option(None, help="download cache for ml-100k"),
    out: Optional[Path] = typer.Option(None, help="run directory (default runs/DATASET-MODEL)"),
    progress: bool = typer.Option(True, help="show the progress bar"),
    device: str = typer.Option(_TRAIN["device"], help="auto (CUDA when present), cpu, cuda or "
                               "cuda:N; training and evaluation run there"),
    precision: Precision = typer.Option(Precision(_TRAIN["precision"]), help="autocast of forward "
                                        "and loss (weights, evaluation and export stay fp32)"),
    compile: CompileMode = typer.Option(CompileMode(_TRAIN["compile"]), help="torch.compile the "
                                        "per-event step (reduce-overhead: CUDA graphs, CUDA only)"),
    nproc: int = typer.Option(1, help="data-parallel processes on this machine (DDP; one per GPU "
                              "on CUDA, gloo on CPU); or start this command under torchrun"),
    resume: bool = typer.Option(False, help="go on from the training state that an interrupted "
                                "or finished run left in --out (training_state.pt, saved after "
                                "every epoch) with the same options; only --epochs, "
                                "--max-seconds (the total over all parts), --patience, "
                                "--threads and --eval-batch-size may change. Without it a run "
                                "starts afresh. Single process only"),
) -> None:
    """Train a model, evaluate it (leave-one-out, full ranking) and write a run directory."""
    from training.pipeline import train_run

    if min_item_freq < 1:
        raise typer.BadParameter(f"must be >= 1, got {min_item_freq}", param_hint="--min-item-freq")
    if nproc < 1:
        raise typer.BadParameter(f"must be >= 1, got {nproc}", param_hint="--nproc")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if nproc > 1 and under_torchrun:
        raise typer.BadParameter("already running under torchrun: leave --nproc out",
                                 param_hint="--nproc")
    data = load_dataset_source(dataset, min_item_freq=min_item_freq, seed=seed, cache_dir=cache_dir)
    chosen = _chosen_recipe(recipe.value, data)
    values = _with_recipe(ctx, chosen, model.value, dict(
        epochs=epochs, batch_size=batch_size, lr=lr, lr_schedule=lr_schedule,
        warmup_steps=warmup_steps, sampled_softmax=sampled_softmax, weight_decay=weight_decay,
        loss_weighting=loss_weighting,
        patience=patience, eval_every=eval_every, embed_dim=embed_dim, hidden_dim=hidden_dim,
        mem_width=mem_width, read_heads=read_heads, attn_dim=attn_dim, block_len=block_len,
        dropout=dropout, tied=tied, max_len=max_len, layers=layers, heads=heads,
        input_norm=input_norm, head=head))
    train_fields = {f.name for f in dataclasses.fields(TrainSettings)}
    try:
        settings = TrainSettings(optimizer=optimizer, seed=seed, clip_norm=clip_norm,
                                 threads=threads, max_seconds=max_seconds,
                                 eval_batch_size=eval_batch_size, device=device,
                                 precision=precision.value, compile=compile.value,
                                 **{k: v for k, v in values.items() if k in train_fields})
        _check_hardware(settings, nproc)
        config = ModelConfig(num_items=data.num_items, model=model.value, rule=rule.value,
                             slots=slots, out_dim=out_dim,
                             **{k: v for k, v in values.items() if k not in train_fields})
    except ValueError as error:
        raise _bad_option(error) from error
    if out is None:
        suffix = f"-{config.rule}" if config.model == "cmnrec" else ""
        out = Path("runs") / f"{data.name}-{config.model}{suffix}"
    state_file = _training_state(out, resume, parallel=nproc > 1 or under_torchrun)

    console = Console()
    console.print(f"[bold]{config.model}[/] ({config.rule}) on {data.name}: {len(data.users)} "
                  f"users, {data.num_items - 1} items, {data.num_interactions} interactions; "
                  f"recipe {chosen or 'none'}" + (" (auto)" if recipe.value == "auto" else ""))
    source = dataset if dataset in BUILTIN_DATASETS else str(Path(dataset).resolve())
    info = {"source": source, "min_item_freq": min_item_freq, "seed": seed,
            "recipe": chosen or "none"}
    if nproc > 1:
        from training.distributed import launch

        console.print(f"data-parallel: {nproc} processes; rank 0 writes {out}")
        launch(nproc, _train_rank, data, config, settings, out, info, progress)
        from training.checkpoint import read_metrics

        saved = read_metrics(out)
        console.print(metrics_table({s: saved[s] for s in ("valid", "test")},
                                    f"{config.model} on {data.name} (leave-one-out, full ranking)"))
        console.print(f"{saved['epochs']} epochs ({saved['stopped']}, best {saved['best_epoch']}), "
                      f"{saved['seconds_per_epoch']:.2f} s/epoch, {saved['parameters']:,} parameters")
        console.print(f"wrote {out / 'checkpoint.pt'} and {out / 'metrics.json'}")
        return
    if state_file is not None and resume:
        console.print(f"resuming from {state_file}")
    try:
        result = train_run(data, config, settings, out, progress=progress, dataset_info=info,
                           state_file=state_file)
    except ValueError as error:
        hint = "--resume" if str(error).startswith("resume:") else "--dataset"
        raise typer.BadParameter(str(error), param_hint=hint) from error
    if not result.metrics:  # a torchrun rank other than 0: rank 0 reports and writes
        return
    report = result.report
    console.print(metrics_table(report.metrics, f"{config.model} on {data.name} "
                                f"(leave-one-out, full ranking)"))
    console.print(metrics_table(report.seen_excluded, f"{config.model} on {data.name} "
                                f"(leave-one-out, the user's history masked)"))
    console.print(f"{report.epochs} epochs ({report.stopped}, best {report.best_epoch}), "
                  f"{report.seconds_per_epoch:.2f} s/epoch, {report.parameters:,} parameters")
    console.print(f"wrote {out / 'checkpoint.pt'} and {out / 'metrics.json'}")


def _training_state(out: Path, resume: bool, parallel: bool) -> Optional[Path]:
    """Where single-process training keeps its state (out/training_state.pt): read with --resume,
    removed without it (a fresh run). None under data-parallel training, which keeps none."""
    from training.resume import STATE_FILE

    state = out / STATE_FILE
    if parallel and resume:
        raise typer.BadParameter("a training state is kept by single-process training only",
                                 param_hint="--resume")
    if resume and not state.is_file():
        raise typer.BadParameter(f"no {STATE_FILE} in {out}: nothing to resume (train without "
                                 "--resume first)", param_hint="--resume")
    if not resume and state.is_file():  # a fresh run: an older state would not match it
        state.unlink()
        Console(stderr=True).print(f"starting afresh: removed the training state of an earlier "
                                   f"run in {out} (--resume goes on from such a state)")
    return None if parallel else state


def _check_hardware(settings: TrainSettings, nproc: int) -> None:
    """The device exists, and there is one GPU per process (ValueError "field: reason")."""
    import torch

    from training.device import resolve_device

    device = resolve_device(settings.device)
    if nproc > 1 and device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"nproc: {nproc} processes need {nproc} GPUs, torch sees "
                         f"{torch.cuda.device_count()}")


def _train_rank(data: "SequenceDataset", config: ModelConfig, settings: TrainSettings, out: Path,
                info: dict[str, Any], progress: bool) -> None:
    """One process of `cmnrec train --nproc N` (started by training.distributed.launch)."""
    from training.pipeline import train_run

    train_run(data, config, settings, out, progress=progress, dataset_info=info)


def evaluate(
    run: Path = typer.Option(..., help="run directory written by cmnrec train"),
    exclude_seen: bool = typer.Option(False, help="never rank items the user has already seen"),
    json_output: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    dataset: Optional[str] = typer.Option(None, help="evaluate on another data set (default: the "
                                          "run's); items the run does not know are dropped"),
    batch_size: int = typer.Option(128, help="users per evaluation forward"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    cache_dir: Optional[Path] = typer.Option(None, help="download cache for ml-100k"),
) -> None:
    """Re-evaluate a run's checkpoint (leave-one-out by time, full ranking, HR/NDCG/MRR@5/10/20)."""
    import torch

    from data.remap import align_to_vocab
    from data.split import evaluation_users
    from training.checkpoint import load_run
    from training.evaluation import evaluate_model

    if batch_size < 1:
        raise typer.BadParameter(f"must be >= 1, got {batch_size}", param_hint="--batch-size")
    if threads is not None:
        if threads < 1:
            raise typer.BadParameter(f"must be >= 1, got {threads}", param_hint="--threads")
        torch.set_num_threads(threads)
    try:
        loaded = load_run(run)
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error), param_hint="--run") from error
    recipe = dict(loaded.extra.get("dataset") or {})
    source = dataset or recipe.get("source")
    if source is None:
        raise typer.BadParameter("the run does not say which data set it was trained on; "
                                 "pass --dataset", param_hint="--run")
    data = load_dataset_source(source, min_item_freq=int(recipe.get("min_item_freq", 1)),
                               seed=int(recipe.get("seed", 0)), cache_dir=cache_dir)
    data = align_to_vocab(data, loaded.vocab)
    metrics = evaluate_model(loaded.model, data, batch_size=batch_size, exclude_seen=exclude_seen)
    if json_output:
        typer.echo(json.dumps({**metrics, "exclude_seen": exclude_seen, "dataset": source,
                               "eval_users": int(len(evaluation_users(data)))}, indent=2))
        return
    seen = ", seen items excluded" if exclude_seen else ""
    Console().print(metrics_table(metrics, f"{loaded.config.model} on {data.name} "
                                  f"(leave-one-out, full ranking{seen})"))


def predict(
    run: Path = typer.Option(..., help="run directory written by cmnrec train"),
    items: str = typer.Option(..., help="comma-separated external item ids, oldest first"),
    n: int = typer.Option(10, help="number of recommendations"),
    exclude_seen: bool = typer.Option(False, help="drop the items of --items"),
) -> None:
    """Print the top-n next items after a sequence of items as JSON."""
    from training.checkpoint import load_run
    from training.predict import UnknownItemError, recommend

    if n < 1:
        raise typer.BadParameter(f"must be >= 1, got {n}", param_hint="--n")
    sequence = [part.strip() for part in items.split(",")]
    if not items.strip() or any(not part for part in sequence):
        raise typer.BadParameter(f"expected comma-separated item ids, got {items!r}",
                                 param_hint="--items")
    try:
        loaded = load_run(run)
    except FileNotFoundError as error:
        raise typer.BadParameter(str(error), param_hint="--run") from error
    try:
        recommendations = recommend(loaded, None, sequence, n=n, exclude_seen=exclude_seen)
    except UnknownItemError as error:
        raise typer.BadParameter(f"unknown item id {error.item_id!r} (not in the run's item "
                                 f"vocabulary)", param_hint="--items") from error
    typer.echo(json.dumps({"recommendations": recommendations}))
