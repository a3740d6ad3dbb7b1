"""Training and inference speed: SRMN against CmnRec (PEC, TSC) at T in {50, 100}, M in {2, 4, 6, 9, 12}.

For every (T, M) the three networks are built with the same seed and timed in the same run, in turns
(the order rotates every round, so a burst of load from other processes hits them alike):
- train: one full epoch over MovieLens-100k's training histories with the project's real
  training.trainer.train_epoch (block-by-block forward, cross-entropy, backward, clipping, Adam step);
- inference: one full-sequence evaluation pass over all users without gradients, the project's
  training.evaluation.leave_one_out_ranks (forward over every user's history, full ranking).
Each network first trains on one batch (warm-up, not timed). Each figure is the median of its repeats,
taken both on the wall clock and as this process's CPU time (steadier when other processes share the
cores). Speedup = SRMN seconds / CmnRec seconds.
Prints the tables and saves bench/results/train_speed.json and bench/results/train_speed.md.

    .venv/bin/python bench/train_speed.py --dims paper --threads 1
    .venv/bin/python bench/train_speed.py --dims small --block-lens 50 --slots 2 --users 100 --out /tmp/s.json

With --device cuda (or --workload block) it times one training block and one inference pass instead,
at the paper's GPU setting (B=1024, T=100, M in 2,4,6,9,12, I=10,000 random items, paper sizes),
eager and compiled, with the FLOP floor of a block (bench/block_speed.py); figures go to
bench/results/block_speed_<device>.json/.md:

    .venv/bin/python bench/train_speed.py --device cuda                       # the paper's setting
    .venv/bin/python bench/train_speed.py --device cpu --batch-size 8 --block-lens 10 --slots 2 \
        --items 50 --dims small --block-repeats 1 --out /tmp/blocks.json      # a quick CPU check
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import numpy as np
import torch
import typer
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script (python bench/train_speed.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import block_speed
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
from data.dataset import SequenceDataset
from data.split import training_sequences
from model.config import ModelConfig
from model.network import SequentialRecommender, build_model
from model.schedule import chunk_times
from training.batching import length_sorted_batches
from training.evaluation import leave_one_out_ranks
from training.settings import TrainSettings
from training.device import resolve_device
from training.trainer import count_parameters, train_epoch

BASELINE = "srmn"
PAPER = {"train_speedup_max": 6.34, "inference_speedup_T100": "8.03-12.16 (ml-latest, T=100)",
         "inference_speedup_T50": "4.68-6.71 (ml-10M, T=50)"}


@dataclass(frozen=True)
class SpeedVariant:
    name: str  # "srmn", "cmnrec-pec", "cmnrec-tsc"
    model: str
    rule: str


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds on the clock
    cpu: float  # seconds of CPU this process used: steadier than wall time on a shared machine


@dataclass
class Contender:
    """One network of a (T, M) group with its optimizer and its timings (seconds)."""

    variant: SpeedVariant
    config: ModelConfig
    model: SequentialRecommender
    optimizer: torch.optim.Optimizer
    train: list[Timing]
    inference: list[Timing]


def epoch_batches(dataset: SequenceDataset, batch_size: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """The training histories, one epoch's batches (as the trainer forms them) and the targets per epoch."""
    sequences = training_sequences(dataset)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    trainable = np.flatnonzero(lengths >= 2)
    order = length_sorted_batches(lengths[trainable], batch_size, np.random.default_rng(seed))
    return sequences, [trainable[b] for b in order], int((lengths[trainable] - 1).sum())


def timed(work: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def time_train_epoch(contender: Contender, sequences: list[np.ndarray], batches: list[np.ndarray],
                     settings: TrainSettings) -> Timing:
    with tqdm(disable=True) as bar:
        return timed(lambda: train_epoch(contender.model, contender.optimizer, sequences, batches, settings,
                                         bar, None))


def time_inference(contender: Contender, dataset: SequenceDataset, batch_size: int) -> Timing:
    return timed(lambda: leave_one_out_ranks(contender.model, dataset, batch_size=batch_size))


def run_group(variants: list[SpeedVariant], num_items: int, dims: dict[str, int], block_len: int, slots: int,
              settings: TrainSettings, rounds: tuple[int, int], dataset: SequenceDataset,
              epoch: tuple[list[np.ndarray], list[np.ndarray]], rotation: int) -> list[Contender]:
    """Time every variant at one (T, M): rounds = (train repeats, inference repeats), in turns."""
    contenders = []
    for variant in variants:
        torch.manual_seed(settings.seed)
        config = ModelConfig(num_items=num_items, model=variant.model, rule=variant.rule,
                             block_len=block_len, slots=slots, **dims)
        model = build_model(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        contenders.append(Contender(variant, config, model, optimizer, [], []))
    for contender in contenders:  # warm-up: first-call allocations and lazy inits stay out of the timings
        with tqdm(disable=True) as bar:
            train_epoch(contender.model, contender.optimizer, epoch[0], epoch[1][:1], settings, bar, None)
    train_rounds, inference_rounds = rounds
    for round_index in range(max(train_rounds, inference_rounds)):
        shift = (rotation + round_index) % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            if round_index < train_rounds:
                contender.train.append(time_train_epoch(contender, *epoch, settings))
            if round_index < inference_rounds:
                contender.inference.append(time_inference(contender, dataset, settings.eval_batch_size))
    return contenders


def cost_breakdown(num_items: int, dims: dict[str, int], block_len: int, slots: int, batch_size: int,
                   seed: int, repeats: int = 5) -> dict[str, Any]:
    """Where one SRMN event's time goes: CPU microseconds per event (forward, no grad) of
    controller_step (LSTM + chunk attention fold), memory_step (DNC write and read, attention readout)
    and the output layer, on a batch of `batch_size` users and T = block_len random events.

    estimated_speedup: what removing all but M of every T memory steps is worth by these parts alone,
    (c + m + o) / (c + o + m M / T); the evaluation's ranking and the training's backward pass and
    Adam step are left out.
    """
    torch.manual_seed(seed)
    config = ModelConfig(num_items=num_items, model="srmn", rule="every", block_len=block_len, slots=slots, **dims)
    model = build_model(config).eval()
    items = torch.randint(1, num_items, (batch_size, block_len))
    with torch.no_grad():
        state = model.initial_state(batch_size)
        embedded = model.embedding(items)  # [B, T, k]
        after_controller = model.controller_step(embedded[:, 0], state)
        features = model.features(after_controller).unsqueeze(1).expand(-1, block_len, -1)  # [B, T, F]
        parts: dict[str, Callable[[], object]] = {
            "controller_step": lambda: [model.controller_step(embedded[:, t], state) for t in range(block_len)],
            "memory_step": lambda: [model.memory_step(after_controller) for _ in range(block_len)],
            "output_layer": lambda: model.output(features),
        }
        micros = {}
        for name, work in parts.items():
            work()  # warm-up
            micros[name] = statistics.median(timed(work).cpu for _ in range(repeats)) / (batch_size * block_len) * 1e6
    c, m, o = micros["controller_step"], micros["memory_step"], micros["output_layer"]
    return {"block_len": block_len, "slots": slots, "batch_size": batch_size, "microseconds_per_event": micros,
            "estimated_speedup": (c + m + o) / (c + o + m * slots / block_len)}


def _median(timings: list[Timing], clock: str) -> float:
    return statistics.median(getattr(t, clock) for t in timings)


def group_records(contenders: list[Contender], events: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-variant timing records and the SRMN/CmnRec speedups of one (T, M) group."""
    records = []
    for c in contenders:
        records.append({
            "block_len": c.config.block_len, "slots": c.config.slots, "variant": c.variant.name,
            "rule": c.config.rule,
            "memory_accesses_per_block": len(chunk_times(c.config.block_len, c.config.slots, c.config.rule)),
            "parameters": count_parameters(c.model),
            "train_seconds": _median(c.train, "wall"), "train_cpu_seconds": _median(c.train, "cpu"),
            "train_events_per_second": events / _median(c.train, "wall"),
            "inference_seconds": _median(c.inference, "wall"),
            "inference_cpu_seconds": _median(c.inference, "cpu"),
            "train_runs": [dataclasses.asdict(t) for t in c.train],
            "inference_runs": [dataclasses.asdict(t) for t in c.inference],
        })
    baseline = next(r for r in records if r["variant"] == BASELINE)
    speedups = [{"block_len": r["block_len"], "slots": r["slots"], "variant": r["variant"],
                 **{f"{phase}{clock}_speedup": baseline[f"{phase}{clock}_seconds"] / r[f"{phase}{clock}_seconds"]
                    for phase in ("train", "inference") for clock in ("", "_cpu")}}
                for r in records if r["variant"] != BASELINE]
    return records, speedups


def render_markdown(payload: dict[str, Any]) -> str:
    s, m, d = payload["settings"], payload["machine"], payload["dataset"]
    rivals = [v for v in s["variants"] if v != BASELINE]
    dims = ", ".join(f"{key}={value}" for key, value in s["dims"].items())
    lines = [
        "# Training and inference speed: SRMN vs CmnRec",
        "",
        f"Measured {payload['date']} by `bench/train_speed.py` on {m['cpu']} ({m['torch_threads']} torch "
        f"thread(s), torch {m['torch']}, git {m['git']}), a shared machine: load average "
        f"{payload['load_average_start'][0]:.1f} at the start, {m['load_average_1_5_15'][0]:.1f} at the end; "
        f"total run {payload['total_seconds'] / 60:.1f} min.",
        f"Data: {d['name']}, {d['users']} users, {d['interactions']} interactions; one training epoch = "
        f"{payload['train_targets_per_epoch']} predicted events in batches of {s['batch_size']} users "
        f"(trainer's train_epoch: forward, cross-entropy, backward, clip, Adam, block by block); "
        f"inference = leave_one_out_ranks over all {d['users']} users (batches of {s['eval_batch_size']}, no grad).",
        f"Sizes: {s['dims_name']} ({dims}). Median of {s['train_repeats']} training epoch(s) and "
        f"{s['inference_repeats']} inference pass(es) per network; networks of one (T, M) timed in turns.",
        "Speedup = SRMN seconds / CmnRec seconds. Paper (GPU, TensorFlow): training up to "
        f"{PAPER['train_speedup_max']}x; inference {PAPER['inference_speedup_T100']}, "
        f"{PAPER['inference_speedup_T50']}.",
    ]
    speed = {(r["block_len"], r["slots"], r["variant"]): r for r in payload["speedups"]}
    groups = sorted({(r["block_len"], r["slots"]) for r in payload["results"]})

    def ratio(record: dict[str, Any], phase: str) -> str:
        return f"{record[f'{phase}_speedup']:.2f}x ({record[f'{phase}_cpu_speedup']:.2f}x)"

    summary = markdown_table(
        ["T", "M"] + [f"train speedup {v}" for v in rivals] + [f"inference speedup {v}" for v in rivals],
        [[t, m, *(ratio(speed[(t, m, v)], "train") for v in rivals),
          *(ratio(speed[(t, m, v)], "inference") for v in rivals)] for t, m in groups])
    details = markdown_table(
        ["T", "M", "network", "memory accesses / block", "train epoch s", "train CPU s", "inference s",
         "inference CPU s", "parameters"],
        [[r["block_len"], r["slots"], r["variant"], r["memory_accesses_per_block"], f"{r['train_seconds']:.1f}",
          f"{r['train_cpu_seconds']:.1f}", f"{r['inference_seconds']:.2f}", f"{r['inference_cpu_seconds']:.2f}",
          f"{r['parameters']:,}"] for r in payload["results"]])
    lines += ["", "Speedup SRMN / CmnRec, wall clock (CPU time in brackets):", "", summary,
              "", "Medians per network:", "", details]
    if payload.get("breakdown"):
        b = payload["breakdown"]
        us = b["microseconds_per_event"]
        lines += ["", f"Where an SRMN event's time goes (T={b['block_len']}, M={b['slots']}, batch {b['batch_size']}, "
                      f"forward without grad, CPU microseconds per event): controller_step "
                      f"{us['controller_step']:.1f}, memory_step {us['memory_step']:.1f}, output layer "
                      f"{us['output_layer']:.1f}. By these parts alone, skipping all but M of every T memory steps is "
                      f"worth (c+m+o)/(c+o+m*M/T) = {b['estimated_speedup']:.2f}x here, whatever the rule."]
    if payload["speedups"]:
        best_train = max(payload["speedups"], key=lambda r: r["train_speedup"])
        best_infer = max(payload["speedups"], key=lambda r: r["inference_speedup"])
        lines += ["", f"Largest training speedup (wall): {best_train['train_speedup']:.2f}x ({best_train['variant']}, "
                      f"T={best_train['block_len']}, M={best_train['slots']}); largest inference speedup (wall): "
                      f"{best_infer['inference_speedup']:.2f}x ({best_infer['variant']}, "
                      f"T={best_infer['block_len']}, M={best_infer['slots']})."]
    return "\n".join(lines)


def block_markdown(payload: dict[str, Any]) -> str:
    """The report of the block workload: per M the seconds per block, events/s, speed-ups, floor."""
    s, m = payload["settings"], payload["machine"]
    lines = [
        "# One training block and one inference pass: SRMN vs CmnRec, eager vs compiled",
        "",
        f"Measured {payload['date']} by `bench/train_speed.py --workload block` on {payload['device_name']} "
        f"(torch {m['torch']}, git {m['git']}, {m['torch_threads']} CPU thread(s), load average "
        f"{m['load_average_1_5_15'][0]:.1f}); total {payload['total_seconds'] / 60:.1f} min.",
        f"B={s['batch_size']} users, T={s['block_len']}, I={s['items']} items, sizes {s['dims_name']} "
        f"({', '.join(f'{k}={v}' for k, v in s['dims'].items())}), precision {s['precision']}, compiled = "
        f"torch.compile mode {s['compile_mode']!r} of controller_step/memory_step. Train block = forward + "
        "cross-entropy over B x T targets + backward + Adam; inference = T events absorbed + scores + "
        f"top-{block_speed.TOP_K}. Median of {s['repeats']} run(s) after {s['warmup']} warm-up run(s). "
        f"FLOP floor = counted matmul FLOPs of an eager train block / {payload['matmul_tflops']:.2f} "
        "TFLOP/s (a square matmul timed on this device in the same precision).",
        "",
    ]
    rows, speed_rows = [], []
    by_key = {(r["slots"], r["variant"], r["mode"]): r for r in payload["results"]}
    for r in payload["results"]:
        if "error" in r:
            rows.append([r["slots"], r["variant"], r["mode"], "error: " + r["error"][:120], "", "", "", ""])
            continue
        eager = by_key.get((r["slots"], r["variant"], "eager"), {})
        flops = eager.get("train_flops")
        floor = flops / (payload["matmul_tflops"] * 1e12) if flops else None
        rows.append([r["slots"], r["variant"], r["mode"], f"{r['train_seconds']:.4f}",
                     f"{r['events_per_second']:,.0f}", f"{r['inference_seconds']:.4f}",
                     "" if floor is None else f"{floor * 1e3:.2f} ms ({flops / 1e9:,.1f} GFLOP)",
                     "" if floor is None else f"{r['train_seconds'] / floor:.1f}x"])
    for (slots_, variant, mode), r in by_key.items():
        base = by_key.get((slots_, BASELINE, mode))
        if variant == BASELINE or base is None or "error" in r or "error" in base:
            continue
        eager = by_key.get((slots_, variant, "eager"), {})
        compiled_gain = ("" if mode == "eager" or "error" in eager or not eager
                         else f"{eager['train_seconds'] / r['train_seconds']:.2f}x")
        speed_rows.append([slots_, variant, mode, f"{base['train_seconds'] / r['train_seconds']:.2f}x",
                           f"{base['inference_seconds'] / r['inference_seconds']:.2f}x", compiled_gain])
    lines += [markdown_table(["M", "network", "mode", "train s/block", "train events/s", "inference s",
                              "FLOP floor of the block", "measured / floor"], rows), "",
              "Speed-up SRMN / CmnRec in the same mode, and compiled / eager of the same network:", "",
              markdown_table(["M", "network", "mode", "train speed-up", "inference speed-up",
                              "compiled vs eager (train)"], speed_rows),
              "", f"Paper (GPU, TensorFlow): training up to {PAPER['train_speedup_max']}x, inference "
              f"{PAPER['inference_speedup_T100']}."]
    return "\n".join(lines)


def run_blocks(device: Any, dims: str, block_len: int, slot_values: list[int], variants: list[SpeedVariant],
               batch_size: int, items: int, precision: str, compile_mode: str, warmup: int, repeats: int,
               seed: int, out: Path) -> dict[str, Any]:
    """The block workload (bench/block_speed.py) for every M, network and mode; saved after each."""
    payload: dict[str, Any] = {
        "benchmark": "block_speed", "date": now_utc(), "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({device})"),
        "settings": {"dims_name": dims, "dims": DIMS[dims], "block_len": block_len, "slots": slot_values,
                     "variants": [v.name for v in variants], "batch_size": batch_size, "items": items,
                     "precision": precision, "compile_mode": compile_mode, "warmup": warmup,
                     "repeats": repeats, "seed": seed},
        "paper": PAPER, "results": [], "machine": machine_info(), "total_seconds": 0.0,
    }
    payload["matmul_tflops"] = block_speed.matmul_rate(device, precision,
                                                       8192 if device.type == "cuda" else 512) / 1e12
    began = time.perf_counter()
    for slot_count in slot_values:
        for variant in variants:
            config = ModelConfig(num_items=items + 1, model=variant.model, rule=variant.rule,
                                 block_len=block_len, slots=slot_count, **DIMS[dims])
            for mode in ("eager", compile_mode):
                record = block_speed.measure(config, batch_size, device, precision, mode, warmup, repeats,
                                             seed, count_flops=mode == "eager")
                record.update({"slots": slot_count, "variant": variant.name, "rule": config.rule,
                               "memory_accesses_per_block": len(chunk_times(block_len, slot_count, config.rule))})
                payload["results"].append(record)
                shown = record.get("error") or (f"train {record['train_seconds']:.4f} s/block, inference "
                                                f"{record['inference_seconds']:.4f} s")
                typer.echo(f"M={slot_count} {variant.name:<11} {mode:<15} {shown}", err=True)
                payload["machine"] = machine_info()
                payload["total_seconds"] = time.perf_counter() - began
                save_results(out, payload, block_markdown(payload))
    return payload


def main(
    dims: Annotated[str, typer.Option(help="Model sizes: paper (k=128,H=256,W=256,b=64) or small.")] = "paper",
    threads: Annotated[int, typer.Option(min=1, help="torch threads.")] = 1,
    block_lens: Annotated[Optional[str], typer.Option(help="Values of T (epoch: 50,100; block: 100).")] = None,
    slots: Annotated[str, typer.Option(help="Values of M.")] = "2,4,6,9,12",
    rules: Annotated[str, typer.Option(help="CmnRec chunk rules to compare with SRMN.")] = "pec,tsc",
    train_repeats: Annotated[int, typer.Option(min=1, help="Training epochs timed per network.")] = 1,
    inference_repeats: Annotated[int, typer.Option(min=1, help="Inference passes timed per network.")] = 3,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Users per training batch (epoch: 64; "
                                                      "block: 1024).")] = None,
    eval_batch_size: Annotated[int, typer.Option(min=1, help="Users per inference batch.")] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    dataset: Annotated[str, typer.Option(help="Data set name or ratings file.")] = "ml-100k",
    users: Annotated[int | None, typer.Option(min=3, help="Keep only the first N users (quick checks).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON result file; the markdown goes beside it "
                                                "(default train_speed.json / block_speed_<device>.json).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "cpu",
    workload: Annotated[Optional[str], typer.Option(help="epoch (ml-100k epochs, CPU) or block (paper GPU "
                                                    "setting); default: block on CUDA, epoch otherwise.")] = None,
    items: Annotated[int, typer.Option(min=1, help="Block workload: catalogue size I.")] = 10_000,
    precision: Annotated[str, typer.Option(help="Block workload: fp32 or bf16 (autocast).")] = "fp32",
    compile_mode: Annotated[Optional[str], typer.Option(help="Block workload: torch.compile mode of the "
                                                        "compiled runs (default reduce-overhead on CUDA, "
                                                        "default on CPU).")] = None,
    block_warmup: Annotated[int, typer.Option(min=1, help="Block workload: warm-up runs.")] = 3,
    block_repeats: Annotated[int, typer.Option(min=1, help="Block workload: timed runs.")] = 10,
) -> None:
    """Time SRMN and CmnRec side by side and report the speedups."""
    if dims not in DIMS:
        raise typer.BadParameter(f"expected one of {', '.join(DIMS)}, got {dims!r}", param_hint="--dims")
    try:
        torch_device = resolve_device(device)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--device") from None
    workload = workload or ("block" if torch_device.type == "cuda" else "epoch")
    if workload not in ("epoch", "block"):
        raise typer.BadParameter(f"expected epoch or block, got {workload!r}", param_hint="--workload")
    if precision not in ("fp32", "bf16"):
        raise typer.BadParameter(f"expected fp32 or bf16, got {precision!r}", param_hint="--precision")
    compile_mode = compile_mode or ("reduce-overhead" if torch_device.type == "cuda" else "default")
    if compile_mode not in ("default", "reduce-overhead", "max-autotune"):
        raise typer.BadParameter(f"expected default, reduce-overhead or max-autotune, got {compile_mode!r}",
                                 param_hint="--compile-mode")
    if workload == "epoch" and torch_device.type != "cpu":
        raise typer.BadParameter("the epoch workload runs on the CPU; use --workload block",
                                 param_hint="--device")
    block_lens = block_lens or ("100" if workload == "block" else "50,100")
    batch_size = batch_size or (1024 if workload == "block" else 64)
    try:
        block_values, slot_values = parse_ints(block_lens), parse_ints(slots)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--block-lens / --slots") from None
    rule_values = [r.strip() for r in rules.split(",") if r.strip()]
    bad = [r for r in rule_values if r not in ("pec", "tsc", "exc")]
    if bad or not rule_values:
        raise typer.BadParameter(f"expected some of pec, tsc, exc, got {rules!r}", param_hint="--rules")
    variants = [SpeedVariant(BASELINE, "srmn", "every")]
    variants += [SpeedVariant(f"cmnrec-{rule}", "cmnrec", rule) for rule in rule_values]
    if workload == "block":
        if len(block_values) != 1 or max(slot_values) > block_values[0]:
            raise typer.BadParameter("the block workload takes one T >= every M", param_hint="--block-lens")
        torch.set_num_threads(threads)
        out = out or RESULTS_DIR / f"block_speed_{torch_device.type}.json"
        payload = run_blocks(torch_device, dims, block_values[0], slot_values, variants, batch_size, items,
                             precision, compile_mode, block_warmup, block_repeats, seed, out)
        typer.echo(block_markdown(payload))
        typer.echo(f"\nsaved {out} and {out.with_suffix('.md')}", err=True)
        return
    out = out or RESULTS_DIR / "train_speed.json"
    settings = TrainSettings(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed,
                             threads=threads)
    torch.set_num_threads(threads)
    data = benchmark_dataset(dataset, users)
    sequences, batches, targets = epoch_batches(data, batch_size, seed)
    payload: dict[str, Any] = {
        "benchmark": "train_speed", "date": now_utc(), "dataset": dataset_info(data),
        "settings": {"dims_name": dims, "dims": DIMS[dims], "block_lens": block_values, "slots": slot_values,
                     "variants": [v.name for v in variants], "train_repeats": train_repeats,
                     "inference_repeats": inference_repeats, "batch_size": batch_size,
                     "eval_batch_size": eval_batch_size, "threads": threads, "lr": settings.lr,
                     "clip_norm": settings.clip_norm, "deterministic": settings.deterministic, "seed": seed},
        "train_targets_per_epoch": targets,
        "paper": PAPER, "results": [], "speedups": [], "machine": machine_info(), "total_seconds": 0.0,
    }
    payload["load_average_start"] = payload["machine"]["load_average_1_5_15"]
    began = time.perf_counter()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(settings.deterministic)  # as train_model runs it
    try:
        groups = [(t, m) for t in block_values for m in slot_values if m <= t]
        skipped = [f"T={t} M={m}" for t in block_values for m in slot_values if m > t]
        if skipped:
            typer.echo(f"skipped (M > T): {', '.join(skipped)}", err=True)
        for index, (block_len, slot_count) in enumerate(groups):
            typer.echo(f"[{index + 1}/{len(groups)}] T={block_len} M={slot_count} ...", err=True)
            contenders = run_group(variants, data.num_items, DIMS[dims], block_len, slot_count, settings,
                                   (train_repeats, inference_repeats), data, (sequences, batches), index)
            records, speedups = group_records(contenders, targets)
            payload["results"] += records
            payload["speedups"] += speedups
            for r in records:
                typer.echo(f"    {r['variant']:<11} train {r['train_seconds']:6.1f} s  "
                           f"inference {r['inference_seconds']:6.2f} s", err=True)
            payload["machine"] = machine_info()
            payload["total_seconds"] = time.perf_counter() - began
            save_results(out, payload, render_markdown(payload))
        if groups:
            t_max, m_max = groups[-1]
            payload["breakdown"] = cost_breakdown(data.num_items, DIMS[dims], t_max, m_max, batch_size, seed)
            payload["machine"] = machine_info()
            payload["total_seconds"] = time.perf_counter() - began
            save_results(out, payload, render_markdown(payload))
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    typer.echo(render_markdown(payload))
    typer.echo(f"\nsaved {out} and {out.with_suffix('.md')}", err=True)


if __name__ == "__main__":
    typer.run(main)
