"""LRURec beside CmnRec in the serving engine (issue 9): engine cost per event, state bytes per user,
and the stateless recompute of the paper's window against the incremental update.

Random-weight exports over the MovieLens-100k catalogue (I=1683; the work per event does not depend
on the weights), one engine thread, one torch thread:
- CmnRec TSC at the paper's size (k=128, H=256, W=256, b=64, R=1; T=50, M=4), as in
  bench/serve_core.py;
- LRURec at its paper's size (k=64, N=2k=128, 2 blocks) and at CmnRec's embedding size
  (k=128, N=256, 2 blocks).
1. engine: `StepEngine.apply` for one user (B=1), event after event: wall ms per event and per stage
   (CmnRec's chunk and non-chunk events apart; LRURec has no chunk events), CPU ms per event;
2. state bytes: the blob the store keeps per user (codec header + float32 fields);
3. recompute: per request, the incremental update (one event on the stored state) against
   rebuilding the state from the last W events on every request, W = 200 (the paper's ML-1M window,
   which its code recomputes at inference) and 50: the engine event by event, the engine's
   multi-event call, and PyTorch's full-sequence forward (for LRURec: the parallel scan);
4. training form: one training step's forward + backward over a batch of 32 users x T events
   (T = 50, 200), LRURec's parallel scan (`LRURec.forward`) against the same network stepped
   event by event (`SequentialRecommender.forward`, the loop the RNNs use), same loss.
Writes bench/results/lrurec_serve.json and .md; `bench/report.py` puts the .md in bench/REPORT.md.
The .md also shows the learning check of bench/results/lrurec_ml100k_metrics.json when it exists
(the metrics.json of the `cmnrec train --model lrurec` run on ml-100k named in TRAIN_COMMAND).

    .venv/bin/python bench/lrurec_serve.py [--events 3000] [--repeats 20]
    .venv/bin/python bench/lrurec_serve.py --quick      # a smoke run of a few seconds
    .venv/bin/python bench/lrurec_serve.py --markdown-only  # re-render the .md from the .json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS_DIR, benchmark_dataset, machine_info,  # noqa: E402
                          markdown_table, now_utc, save_results)
from bench.serve import recompute_costs  # noqa: E402
from bench.serve_core import engine_timing  # noqa: E402
from bench.serving import PAPER_DIMS, export_random  # noqa: E402

# name -> (model, rule, ModelConfig sizes)
MODELS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cmnrec": ("cmnrec", "tsc", PAPER_DIMS),
    "lrurec": ("lrurec", "none", {"embed_dim": 64, "hidden_dim": 128, "layers": 2}),
    "lrurec-k128": ("lrurec", "none", {"embed_dim": 128, "hidden_dim": 256, "layers": 2}),
}
WINDOWS = (50, 200)  # 200: the paper's ML-1M window
TRAIN_METRICS = RESULTS_DIR / "lrurec_ml100k_metrics.json"
TRAIN_COMMAND = ("cmnrec train --dataset ml-100k --model lrurec --embed-dim 64 --hidden-dim 128 "
                 "--layers 2 --dropout 0.2 --block-len 50 --batch-size 32 --lr 1e-3 --epochs 40 "
                 "--patience 5 --threads 1 --max-seconds 2700 --seed 0")


def measure(events: int, repeats: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    began = time.perf_counter()
    dataset = benchmark_dataset("ml-100k")
    payload: dict[str, Any] = {"benchmark": "lrurec_serve", "date": now_utc(),
                               "machine": machine_info(), "events": events, "repeats": repeats,
                               "windows": list(WINDOWS), "models": {}}
    with tempfile.TemporaryDirectory(prefix="lrurec-serve-") as tmp:
        for name, (model, rule, dims) in MODELS.items():
            print(f"{name}: export, engine timing, recompute...", flush=True)
            artifact = export_random(Path(tmp), name, dataset, model=model, rule=rule, dims=dims)
            engine = engine_timing(artifact, events)
            recompute = recompute_costs(artifact, Path(tmp) / "runs" / name, list(WINDOWS),
                                        repeats)
            payload["models"][name] = {"engine": engine, "recompute": recompute}
        print("lrurec: training step, parallel scan vs event by event...", flush=True)
        payload["training_step"] = training_step_costs(dataset.num_items, repeats)
    payload["seconds"] = round(time.perf_counter() - began, 1)
    payload["load_average_at_end"] = machine_info()["load_average_1_5_15"]
    return payload


def training_step_costs(num_items: int, repeats: int, batch: int = 32) -> dict[str, Any]:
    """ms per forward + backward of a cross-entropy step on [batch, T] events, LRURec (paper size)
    as a parallel scan and event by event. Both give the same loss (checked here too)."""
    import torch
    import torch.nn.functional as F

    from bench.serving import percentiles
    from model.config import ModelConfig
    from model.network import SequentialRecommender, build_model

    _, _, dims = MODELS["lrurec"]
    torch.manual_seed(0)
    net = build_model(ModelConfig(num_items=num_items, model="lrurec", **dims))
    out: dict[str, Any] = {"batch": batch, "config": net.config.to_dict()}
    for length in WINDOWS:
        items = torch.randint(1, num_items, (batch, length + 1))
        x, y = items[:, :-1], items[:, 1:]
        forwards = {"parallel_scan": net.forward,
                    "event_by_event": lambda a, s: SequentialRecommender.forward(net, a, s)}
        times: dict[str, list[float]] = {name: [] for name in forwards}
        losses: dict[str, float] = {}
        # The two forms take turns, so that both see the same load from the machine's other jobs.
        for turn in range(max(repeats, 2) + 1):
            for name, forward in forwards.items():
                tic = time.perf_counter()
                logits, _ = forward(x, net.initial_state(batch))
                loss = F.cross_entropy(logits.reshape(-1, num_items), y.reshape(-1))
                net.zero_grad(set_to_none=True)
                loss.backward()
                if turn:  # the first turn warms up
                    times[name].append((time.perf_counter() - tic) * 1e3)
                losses[name] = float(loss.detach())
        row: dict[str, Any] = {name: percentiles(values) for name, values in times.items()}
        row["speedup_p50"] = round(row["event_by_event"]["p50"] / row["parallel_scan"]["p50"], 2)
        row["loss_difference"] = abs(losses["parallel_scan"] - losses["event_by_event"])
        out[str(length)] = row
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(payload: dict[str, Any]) -> str:
    machine = payload["machine"]
    engine_rows, recompute_rows = [], []
    for name, data in payload["models"].items():
        engine, config = data["engine"], data["engine"]["config"]
        size = (f"k={config['embed_dim']}, N={config['hidden_dim']}, {config['layers']} blocks"
                if config["model"] == "lrurec" else
                f"k={config['embed_dim']}, H={config['hidden_dim']}, W={config['mem_width']}, "
                f"T={config['block_len']}, M={config['slots']}")
        for label in ("non_chunk", "chunk"):
            part = engine[label]
            if not part["events"]:
                continue
            stages = part["stages_ms_p50"]
            engine_rows.append([name, size, label.replace("_", "-"), part["events"],
                                _f(part["total_ms"]["p50"]), _f(part["total_ms"]["p99"]),
                                _f(stages["controller"]), _f(stages["memory"]),
                                _f(stages["output"]),
                                _f(stages["decode"] + stages["encode"]),
                                _f(engine["cpu_ms_per_event"]), f"{engine['state_bytes']:,}"])
        for window, row in data["recompute"].items():
            recompute_rows.append([name, window, _f(row["incremental"]["p50"]),
                                   _f(row["stateless_engine_loop"]["p50"], 2),
                                   _f(row["stateless_engine_sequences"]["p50"], 2),
                                   _f(row["stateless_torch_forward"]["p50"], 2),
                                   " / ".join(f"{v:g}x" for v in row["ratio_p50"].values())])
    lines = [
        "# LRURec beside CmnRec in the serving engine", "",
        f"`bench/lrurec_serve.py`, {payload['date']}, git {machine['git']}, "
        f"{machine['cpu_count']} shared cores (load average {machine['load_average_1_5_15'][0]:.2f}"
        f" at start, {payload['load_average_at_end'][0]:.2f} at end), one onnxruntime thread, "
        f"one torch thread; random weights over the MovieLens-100k catalogue (I=1683).", "",
        f"Engine, one user (B=1), {payload['events']:,} events after 100 warm-up events, ms per "
        "event (stages: p50; decode+encode is the state blob handling). State bytes: the blob "
        "stored per user.", "",
        markdown_table(["model", "size", "events", "count", "p50", "p99", "controller",
                        "memory", "output", "decode+encode", "CPU ms/event", "state bytes"],
                       engine_rows), "",
        f"Stateless recompute of the last W events per request against the incremental update "
        f"(p50 ms over {payload['repeats']} requests; W=200 is the paper's ML-1M window, which "
        "the paper's code recomputes at inference): engine event by event, engine "
        "`apply_sequences` (one decode/encode, output once), PyTorch full-sequence forward "
        "(LRURec: the parallel scan).", "",
        markdown_table(["model", "W", "incremental", "stateless: engine loop",
                        "stateless: apply_sequences", "stateless: torch forward",
                        "ratios to incremental (loop / sequences / torch)"], recompute_rows), "",
    ]
    train = payload.get("training_step")
    if train:
        rows = [[T, _f(row["parallel_scan"]["p50"], 1), _f(row["event_by_event"]["p50"], 1),
                 f"{row['speedup_p50']:g}x", f"{row['loss_difference']:.1e}"]
                for T, row in train.items() if T.isdigit()]
        lines += [f"Training step, LRURec k=64, N=128, 2 blocks: forward + backward of the "
                  f"cross-entropy over {train['batch']} users x T events (p50 ms), the parallel "
                  "scan against the same network stepped event by event.", "",
                  markdown_table(["T", "parallel scan", "event by event", "speedup",
                                  "loss difference"], rows), ""]
    return "\n".join(lines + _learning_check())


def _learning_check() -> list[str]:
    """The ml-100k training run's test figures, if its metrics.json was saved beside ours."""
    if not TRAIN_METRICS.exists():
        return []
    metrics = json.loads(TRAIN_METRICS.read_text())
    rows = [[protocol, _f(split["test"]["hr@10"], 4), _f(split["test"]["ndcg@10"], 4),
             _f(split["test"]["mrr@10"], 4), _f(split["valid"]["ndcg@10"], 4)]
            for protocol, split in (("all items ranked (`test`)", metrics),
                                    ("seen items excluded (`seen_excluded.test`)",
                                     metrics["seen_excluded"]))]
    return [
        "Learning check, MovieLens-100k, leave-one-out by time, full ranking, one seed: "
        f"`{TRAIN_COMMAND}` ({metrics['epochs']} epochs, {metrics['stopped']}, best epoch "
        f"{metrics['best_epoch']}, {metrics['seconds_per_epoch']:.1f} s/epoch on a busy machine, "
        f"{metrics['parameters']:,} parameters; metrics.json saved as "
        f"`bench/results/{TRAIN_METRICS.name}`). The 3-seed comparison on ml-100k and ML-1M, "
        "with the benchmark recipe, is in section 6 (`bench/accuracy.py`).", "",
        markdown_table(["protocol", "test HR@10", "test NDCG@10", "test MRR@10",
                        "valid NDCG@10"], rows), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="200 events, 3 repeats")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "lrurec_serve.json")
    parser.add_argument("--markdown-only", action="store_true",
                        help="re-render the .md from an existing --out JSON, measuring nothing")
    args = parser.parse_args()
    if args.markdown_only:
        payload = json.loads(args.out.read_text())
        print(f"wrote {save_results(args.out, payload, markdown(payload))[1]}")
        return
    if args.quick:
        args.events, args.repeats = 200, 3
    payload = measure(args.events, args.repeats)
    json_path, md_path = save_results(args.out, payload, markdown(payload))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
