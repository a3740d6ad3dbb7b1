"""Write bench/REPORT.md and its PNG plots from whatever result files exist in bench/results/.

Gathers serve.json (bench/serve.py), serve_core.json (bench/serve_core.py), stream_worker.json,
accuracy.json/.md (bench/accuracy.py), train_speed.json/.md (bench/train_speed.py) and
lrurec_serve.md (bench/lrurec_serve.py). Missing files are named in the report, not fatal: re-run
this script once they exist.

    .venv/bin/python bench/report.py [--results bench/results] [--out bench/REPORT.md]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
AIM_P99_MS, AIM_RATE, AIM_STREAM = 10.0, 500.0, 5000.0


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        print(f"warning: {path} is not valid JSON ({error}); left out", file=sys.stderr)
        return None


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _machine_line(name: str, data: dict[str, Any]) -> list[Any]:
    m = data.get("machine", {})
    start = data.get("load_average_start") or m.get("load_average_1_5_15") or [None]
    end = data.get("load_average_end") or [None]
    busy = data.get("machine_busy_during_run")
    return [f"`{name}`", data.get("date", "–"), m.get("cpu_count", "–"), _f(start[0], 2),
            _f(end[0], 2), f"{busy:.0%}" if isinstance(busy, float) else "–",
            _f(data.get("seconds") or data.get("total_seconds"), 0)]


# -- plots -----------------------------------------------------------------------------------------
def plot_latency_cdf(serve: dict[str, Any], path: Path) -> Path:
    configs = serve["http"]
    fig, axes = plt.subplots(1, len(configs), figsize=(5.2 * len(configs), 4.2), sharex=True,
                             sharey=True, squeeze=False)
    for ax, config in zip(axes[0], configs):
        for run in config["runs"]:
            xs = [max(p[0], 1e-2) for p in run["cdf"]]
            ys = [p[1] for p in run["cdf"]]
            ax.plot(xs, ys, label=f"{run['offered_rate']:g} req/s "
                                  f"(got {run['throughput_rps']:.0f})")
        ax.axvline(AIM_P99_MS, color="red", linestyle=":", label="10 ms")
        ax.axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("client latency, ms (from the due time; log scale)")
        ax.set_title(f"{config['model']} (paper size), {config['workers']} uvicorn worker(s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("fraction of requests")
    fig.suptitle("POST /v1/events?n=10 latency CDF, open-loop load (dashed: p99)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput_latency(serve: dict[str, Any], path: Path) -> Path:
    """Left: p50 and p99 against the achieved throughput. Right: achieved against offered."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for config in serve["http"]:
        runs = config["runs"]
        name = f"{config['model']}, {config['workers']} worker(s)"
        xs = [r["throughput_rps"] for r in runs]
        line, = left.plot(xs, [r["latency_ms"]["p99"] for r in runs], marker="o",
                          label=f"{name}: p99")
        left.plot(xs, [r["latency_ms"]["p50"] for r in runs], marker="x", linestyle="--",
                  color=line.get_color(), label=f"{name}: p50")
        right.plot([r["offered_rate"] for r in runs], xs, marker="o", color=line.get_color(),
                   label=name)
    left.axhline(AIM_P99_MS, color="red", linestyle=":", label="aim: p99 10 ms")
    left.axvline(AIM_RATE, color="red", linestyle="-.", linewidth=0.8, label="aim: 500 req/s")
    left.set_yscale("log")
    left.set_xlabel("achieved throughput, requests/s")
    left.set_ylabel("client latency, ms (log scale)")
    left.set_title("latency vs throughput (one point per offered rate)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, loc="lower right")
    top = max([r["offered_rate"] for c in serve["http"] for r in c["runs"]] + [AIM_RATE])
    right.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=0.8,
               label="achieved = offered")
    right.set_xlabel("offered rate, requests/s")
    right.set_ylabel("achieved throughput, requests/s")
    right.set_title("throughput: where the server saturates")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    fig.suptitle("POST /v1/events?n=10, open-loop load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup_slots(speed: dict[str, Any], path: Path) -> Path:
    rows = speed.get("speedups", [])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    series = sorted({(r["variant"], r["block_len"]) for r in rows})
    for ax, phase, title in ((axes[0], "train", "training epoch"),
                             (axes[1], "inference", "full-sequence inference")):
        for variant, block_len in series:
            mine = sorted((r for r in rows if r["variant"] == variant
                           and r["block_len"] == block_len), key=lambda r: r["slots"])
            slots = [r["slots"] for r in mine]
            line, = ax.plot(slots, [r[f"{phase}_speedup"] for r in mine], marker="o",
                            label=f"{variant}, T={block_len}: wall")
            if all(f"{phase}_cpu_speedup" in r for r in mine):
                ax.plot(slots, [r[f"{phase}_cpu_speedup"] for r in mine], marker="x",
                        linestyle="--", color=line.get_color(),
                        label=f"{variant}, T={block_len}: CPU time")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("M (memory slots = chunks per block)")
        ax.set_ylabel("speedup over SRMN (SRMN time / CmnRec time)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("CmnRec speedup over SRMN vs number of slots (bench/train_speed.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sections --------------------------------------------------------------------------------------
def _http_rows(configs: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for config in configs:
        for r in config["runs"]:
            lat = r["latency_ms"]
            errors = sum(r["errors"].values())
            rows.append([config["model"], config["workers"], _f(r["offered_rate"], 0),
                         _f(r["throughput_rps"], 0), _f(lat["p50"], 1), _f(lat["p90"], 1),
                         _f(lat["p99"], 1), _f(lat["p99.9"], 1), errors,
                         _f(r["chunk_fraction"], 3),
                         _f(r["server_cpu_fraction"], 2), _f(r.get("server_cpu_ms_per_request"), 2),
                         _f(r["generator_cpu_fraction"], 2), f"{r['machine_busy_fraction']:.0%}"])
    return rows


HTTP_HEADERS = ["model", "workers", "offered req/s", "achieved req/s", "p50 ms", "p90 ms",
                "p99 ms", "p99.9 ms", "errors", "chunk fraction", "server CPU (cores)",
                "server CPU ms/req", "generator CPU (cores)", "machine busy"]


def _aim_verdict(configs: list[dict[str, Any]]) -> tuple[str, dict[str, Any] | None]:
    best = None
    for config in configs:
        for r in config["runs"]:
            if r["offered_rate"] >= AIM_RATE and (best is None or r["latency_ms"]["p99"]
                                                  < best[1]["latency_ms"]["p99"]):
                best = (config, r)
    if best is None:
        return "not measured (no run at 500 req/s)", None
    config, r = best
    met = r["latency_ms"]["p99"] < AIM_P99_MS and r["throughput_rps"] >= 0.98 * AIM_RATE
    return (f"**{'met' if met else 'missed'}**: best run at {r['offered_rate']:g} req/s "
            f"({config['model']}, {config['workers']} worker(s)) achieved "
            f"{r['throughput_rps']:.0f} req/s with p99 {r['latency_ms']['p99']:.1f} ms"), r


def section_serve(serve: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines = ["## 1. HTTP: POST /v1/events under open-loop load (`bench/serve.py`)", "",
             f"Measured {serve['date']}. A real `cmnrec serve` (uvicorn, its own embedded "
             "redis-server) per model; paper-size networks (k=128, H=256, W=256, b=64, R=1, T=50, "
             "M=4, I=1683, random weights); every user first moved to a random position of its "
             "50-event block (so chunk times come as often as in a live service), then "
             "`POST /v1/events?n=10` (top-10 in every answer) at a constant arrival rate from "
             "`bench/loadgen.py` in its own process (aiohttp, 64 keep-alive connections), "
             f"{serve['settings']['duration_s']:g} s measured per rate after "
             f"{serve['settings']['warmup_s']:g} s of warm-up. Latency is counted from each "
             "request's due time, so a stalled server is charged for every request that waited "
             "(no coordinated omission). CPU columns: cores used by the server's process tree "
             "(uvicorn workers + redis-server) and by the generator; machine busy: all processes "
             "of the machine, ours and everybody else's. Latency depends on what else ran in "
             "that minute; the server's CPU per request does much less.", "",
             _table(HTTP_HEADERS, _http_rows(serve["http"])), ""]
    lines += [f"![latency CDF]({plots['cdf']})", "",
              f"![throughput vs latency]({plots['tput']})", ""]
    engine = serve.get("engine")
    if engine:
        lines += ["Engine time per event, B=1, in-process, same run (ms):", "",
                  _engine_table(engine), ""]
    return lines


def _engine_table(engine: dict[str, Any]) -> str:
    rows = []
    for name, figures in engine.items():
        for kind in ("non_chunk", "chunk"):
            data = figures[kind]
            if not data["events"]:
                continue
            t, s = data["total_ms"], data["stages_ms_p50"]
            rows.append([name, kind.replace("_", "-"), data["events"], _f(t["p50"], 3),
                         _f(t["p90"], 3), _f(t["p99"], 3), _f(s.get("controller"), 3),
                         _f(s.get("memory"), 3), _f(s.get("output"), 3),
                         _f((s.get("decode") or 0) + (s.get("encode") or 0), 3)])
    return _table(["model", "event", "events", "p50", "p90", "p99", "controller p50",
                   "memory p50", "output p50", "decode+encode p50"], rows)


def section_core(core: dict[str, Any]) -> list[str]:
    lines = ["## 2. Serving core (`bench/serve_core.py`)", "",
             f"Measured {core['date']}, one run: engine, Redis and HTTP figures below come from "
             "the same invocation.", "", "Engine, one event for one user (B=1), ms:", "",
             _engine_table(core["engine"]), ""]
    redis = core["redis"]
    st = redis["stages_ms"]
    rows = [[name, _f(st[name]["p50"], 3), _f(st[name]["p90"], 3), _f(st[name]["p99"], 3)]
            for name in ("state_read", "model", "topn", "state_write", "total") if name in st]
    rows.append(["bare GET round trip", _f(redis["bare_get_round_trip_ms"]["p50"], 3),
                 _f(redis["bare_get_round_trip_ms"]["p90"], 3),
                 _f(redis["bare_get_round_trip_ms"]["p99"], 3)])
    lines += [f"State store on an embedded Redis, `StateStore.apply` one event at a time "
              f"({redis['events']} events over {redis['users']} users, n=10; "
              f"{redis['cpu_ms_per_event']:.2f} ms of client CPU per event), ms:", "",
              _table(["stage", "p50", "p90", "p99"], rows), "",
              "HTTP, CmnRec TSC, client side:", "",
              _table(HTTP_HEADERS, _http_rows([core["http"]])), ""]
    d = core.get("diagnosis", {})
    table = BENCH_DIR / "results" / "serve_core.md"  # written with serve_core.json
    if "matrix" in core and table.exists():  # serve_core.py since issue 13: rates x workers x variants
        lines += table.read_text().split("\n", 2)[2].strip().splitlines() + [""]
    elif d:
        stages = d.get("server_stage_p50_ms_at_lowest_rate", {})
        lines += [f"Server-side stage p50 at the lowest rate (from the responses' latency_ms, ms): "
                  + ", ".join(f"{k} {v}" for k, v in stages.items() if v is not None) + ".", "",
                  f"Aim {d['aim']}: {'met' if d.get('met') else 'missed'} "
                  f"(p99 {_f(d.get('p99_ms'), 1)} ms, {_f(d.get('throughput_rps'), 0)} req/s "
                  f"achieved at {_f(d.get('rate'), 0)} req/s offered). The server spends "
                  f"{_f(d.get('server_cpu_ms_per_request'), 2)} ms of CPU per request (its "
                  f"process tree, Redis included), so 500 req/s needs "
                  f"{_f(d.get('server_cores_needed_at_aim'), 2)} cores; it obtained "
                  f"{_f(d.get('server_cores_obtained_at_aim'), 2)} while the machine was "
                  f"{_f(100 * (d.get('machine_busy_at_aim') or 0), 0)}% busy.", ""]
    return lines


def section_footprint(serve: dict[str, Any]) -> list[str]:
    rows = []
    for config in serve["http"]:
        fp = config.get("footprint")
        if not fp:
            continue
        per = fp["redis_bytes_per_user_mean"]
        caps = fp["user_at_caps"]
        rows.append([config["model"], _f(fp["state_blob_bytes"], 0),
                     _f(fp["mean_events_per_sampled_user"], 0),
                     _f(fp["redis_bytes_per_user_total_mean"], 0),
                     ", ".join(f"{k} {_f(v, 0)}" for k, v in per.items()),
                     _f(caps["total"], 0),
                     ", ".join(f"{k} {_f(v, 0)}" for k, v in caps["bytes"].items())])
    if not rows:
        return []
    return ["## 3. State bytes per user", "",
            "The state blob (codec header + float32 fields), and what Redis holds per user "
            "(`MEMORY USAGE` of the five keys: state, version, pos, recent items, event ids) for "
            "users sampled after the load, and for one user pushed past the caps (1,000 recent "
            "items and 1,000 event ids by default).", "",
            _table(["model", "state blob bytes", "events per sampled user", "Redis bytes/user",
                    "by key", "Redis bytes at the caps", "by key (at the caps)"], rows), ""]


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def _stream_results(serve: dict[str, Any]) -> list[dict[str, Any]]:
    results = serve.get("stream_worker") or []
    return [results] if isinstance(results, dict) else list(results)


def section_stream(serve: dict[str, Any], stream_helper: dict[str, Any] | None) -> list[str]:
    results = _stream_results(serve)
    lines = ["## 4. Stream worker (`cmnrec worker`, one process)", ""]
    if results:
        first = results[0]
        rows = []
        for s in results:
            st, lag = s["steady"], s["steady"]["lag_ms"]
            rows.append([s["order"], f"{s['events']:,}", _f(s["events_per_second"], 0),
                         _f(s["batch_latency_p50_ms"], 1), _f(s["batch_latency_p99_ms"], 1),
                         _f(s["mean_batch_entries"], 0), _f(st["rate_events_per_second"], 0),
                         f"{st['probes_seen']}/{st['probes']}", _f(lag["p50"], 1),
                         _f(lag["p90"], 1), _f(lag["p99"], 1), _f(lag["max"], 1)])
        orders = "; ".join(f"*{s['order']}*: {s.get('order_description', s['order'])}"
                           for s in results)
        lines += [f"CmnRec TSC paper size; MovieLens-100k events published into "
                  f"{first['partitions']} partitions before the worker starts, batch "
                  f"{first['batch_size']}; throughput = events / time to drain the backlog. Then "
                  f"{first['steady']['seconds']:g} s at a steady half of that rate with a probe "
                  f"event every 50 ms; lag = publish -> the probe user's committed position seen "
                  f"by a poller (every {first['steady']['poll_interval_ms']:g} ms). Orders: "
                  f"{orders}.", "",
                  _table(["order", "events", "events/s (backlog)", "batch p50 ms",
                          "batch p99 ms", "mean batch", "steady events/s", "probes seen",
                          "lag p50 ms", "lag p90 ms", "lag p99 ms", "lag max ms"], rows), "",
                  f"Aim: at least {AIM_STREAM:,.0f} events/s through one worker: "
                  + "; ".join(f"{s['order']} order **{_met(s['events_per_second'] >= AIM_STREAM)}**"
                              f" ({s['events_per_second']:,.0f} events/s)" for s in results)
                  + ".", ""]
    if stream_helper:
        rows = [[r["size"], r["order"], r["events"], _f(r["events_per_second"], 0),
                 _f(r.get("steady_mean_lag_ms"), 1)] for r in stream_helper.get("results", [])]
        load = (stream_helper.get("machine", {}).get("load_average_1_5_15") or [None])[0]
        lines += [f"For comparison, `bench/stream_worker.py` ({stream_helper.get('date')}, load "
                  f"average {_f(load, 2)}), by model size and event order:", "",
                  _table(["size", "order", "events", "events/s", "mean lag at half rate ms"], rows),
                  ""]
    return lines


def section_recompute(serve: dict[str, Any]) -> list[str]:
    data = serve.get("recompute")
    if not data:
        return []
    rows = []
    for model, by_len in data.items():
        for length, row in by_len.items():
            rows.append([model, length, _f(row["incremental"]["p50"], 3),
                         _f(row["stateless_engine_loop"]["p50"], 2),
                         _f(row["stateless_engine_sequences"]["p50"], 2),
                         _f(row["stateless_torch_forward"]["p50"], 2),
                         " / ".join(f"{v:g}x" for v in row["ratio_p50"].values())])
    return ["## 5. Stateless recompute vs the incremental update", "",
            "Per request, p50 ms, engine only (no Redis, no HTTP): the incremental update applies "
            "the new event to the stored state (`StepEngine.apply`, B=1); a stateless service "
            "would instead rebuild the state from the user's whole history on every request: the "
            "engine event by event, the engine's multi-event call (`apply_sequences`, one "
            "decode/encode, output layer once), or PyTorch's full-sequence forward (1 thread).",
            "", _table(["model", "history", "incremental", "stateless: engine loop",
                        "stateless: apply_sequences", "stateless: torch forward",
                        "ratios to incremental (loop / sequences / torch)"], rows), ""]


def section_markdown(title: str, md_path: Path, producer: str) -> list[str]:
    if not md_path.exists():
        return [f"## {title}", "", f"`{md_path.name}` does not exist yet: run `{producer}`, "
                "then `python bench/report.py`.", ""]
    text = md_path.read_text()
    text = re.sub(r"^# .*\n", "", text, count=1)  # its own title; ours is the section heading
    text = re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)
    return [f"## {title}", "", f"From `bench/results/{md_path.name}` (by `{producer}`):", "",
            text.strip(), ""]


def build(results: Path, out: Path) -> Path:
    serve = _load(results, "serve.json")
    core = _load(results, "serve_core.json")
    stream_helper = _load(results, "stream_worker.json")
    accuracy = _load(results, "accuracy.json")
    speed = _load(results, "train_speed.json")
    plots: dict[str, str] = {}

    def rel(path: Path) -> str:
        return str(path.relative_to(out.parent)) if path.is_relative_to(out.parent) else str(path)

    if serve:
        plots["cdf"] = rel(plot_latency_cdf(serve, results / "latency_cdf.png"))
        plots["tput"] = rel(plot_throughput_latency(serve, results / "throughput_latency.png"))
    if speed and speed.get("speedups"):
        plots["speedup"] = rel(plot_speedup_slots(speed, results / "speedup_slots.png"))

    lines = ["# cmnrec benchmark report", "",
             "Reproduce: `.venv/bin/python bench/serve.py` (serving figures, then this report; "
             "about 10 minutes), `.venv/bin/python bench/serve_core.py` (serving core), "
             "`bench/accuracy.py`, `bench/train_speed.py`, `bench/stream_worker.py`; "
             "`.venv/bin/python bench/report.py` re-gathers whatever results exist. "
             "All figures: 2 shared cores, no GPU; other people's jobs were running on the same "
             "machine during every run (load columns below): treat latencies as upper bounds.", ""]
    machines = [[*_machine_line(name, data)] for name, data in
                (("serve.json", serve), ("serve_core.json", core),
                 ("accuracy.json", accuracy), ("train_speed.json", speed),
                 ("stream_worker.json", stream_helper)) if data]
    lines += ["## Machine and load", "",
              _table(["results", "date", "cores", "load avg at start", "load avg at end",
                      "machine busy during run", "run s"], machines), ""]
    others = (serve or core or {}).get("busy_processes_at_start")
    if others:
        lines += ["Processes using CPU when the serving run started: "
                  + "; ".join(f"`{o}`" for o in others) + ".", ""]

    lines += ["## Aims", ""]
    verdict, _ = _aim_verdict((serve or {}).get("http", []) + ([core["http"]] if core else []))
    notes = " (why, and what would fix it: section 8)" if (BENCH_DIR / "REPORT_NOTES.md").exists() \
        else ""
    lines += [f"- HTTP, p99 under 10 ms at 500 requests/s: {verdict}{notes}."]
    for s in _stream_results(serve or {}):
        eps = s["events_per_second"]
        verdict = "met" if eps >= AIM_STREAM else "missed"
        lines += [f"- Stream worker, at least 5,000 events/s, {s['order']} order: **{verdict}** "
                  f"({eps:,.0f} events/s, paper-size CmnRec)."]
    if speed and speed.get("speedups"):
        best_t = max(speed["speedups"], key=lambda r: r["train_speedup"])
        best_i = max(speed["speedups"], key=lambda r: r["inference_speedup"])
        lines += [f"- Training speedup over SRMN: up to {best_t['train_speedup']:.2f}x "
                  f"({best_t['variant']}, T={best_t['block_len']}, M={best_t['slots']}); inference "
                  f"up to {best_i['inference_speedup']:.2f}x ({best_i['variant']}, "
                  f"T={best_i['block_len']}, M={best_i['slots']}) (paper: up to 6.3x / 10-12x)."]
    lines += [""]

    if serve:
        lines += section_serve(serve, plots)
    else:
        lines += ["## 1. HTTP", "", "`serve.json` does not exist yet: run `bench/serve.py`.", ""]
    if core:
        lines += section_core(core)
    if serve:
        lines += section_footprint(serve) + section_stream(serve, stream_helper)
        lines += section_recompute(serve)
    lines += section_markdown("6. Accuracy: MovieLens-100k, MovieLens-1M, Amazon Beauty",
                              results / "accuracy.md", "bench/accuracy.py")
    lines += section_markdown("6b. Evaluation time", results / "eval_speed.md",
                              "bench/eval_speed.py")
    lines += section_markdown("7. Training and inference speed", results / "train_speed.md",
                              "bench/train_speed.py")
    if "speedup" in plots:
        lines += [f"![speedup vs slots]({plots['speedup']})", ""]
    diagnosis = BENCH_DIR / "REPORT_NOTES.md"
    if diagnosis.exists():
        lines += [diagnosis.read_text().strip(), ""]
    lines += section_markdown("10. LRURec beside CmnRec (issue 9)", results / "lrurec_serve.md",
                              "bench/lrurec_serve.py")
    devices = BENCH_DIR / "REPORT_DEVICES.md"  # issue 11: figures from the files it names
    if devices.exists():
        lines += [devices.read_text().strip(), ""]
    out.write_text("\n".join(lines).rstrip() + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "REPORT.md")
    args = parser.parse_args()
    path = build(args.results.resolve(), args.out.resolve())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
