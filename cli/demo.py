"""`cmnrec demo`: from nothing to a running recommender in one command.

1. no artifact yet: train a small CmnRec (TSC) on MovieLens-100k and export it (`--model lrurec`:
   a small LRURec instead, in artifacts/demo-lrurec);
2. start the service on an embedded redis-server (or $REDIS_URL);
3. replay the first events of a few real MovieLens users over HTTP, one POST /v1/events each;
4. show what each user watched, what the service recommends next (with titles), and the
   latency figures; then print how to query the service further.
"""
from __future__ import annotations

import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from service.ops.settings import Settings

DEMO_KEY_PREFIX = "cmnrec-demo"
DEMO_MODELS = ("cmnrec", "lrurec")  # what `cmnrec demo --model` can train and serve
LOOKAHEAD = 20  # a recommendation counts as a hit if the user watches it within this many events


@dataclass(frozen=True)
class DemoOptions:
    artifact: Path
    run: Path
    users: list[str]
    events: int
    n: int
    threads: int
    epochs: int
    max_seconds: float
    port: int
    keep_serving: bool
    cache_dir: Path | None = None
    model: str = "cmnrec"  # one of DEMO_MODELS


def run_demo(options: DemoOptions) -> None:
    from data.loaders import load_dataset
    from service.http.runner import BackgroundServer
    from service.ops.redis_server import redis_url_or_embedded

    console = Console()
    ensure_artifact(options, console)
    data = load_dataset("ml-100k", cache_dir=options.cache_dir)
    histories = {user: [data.vocab.decode(int(i)) for i in seq]
                 for user, seq in zip(data.users, data.sequences)}
    missing = [u for u in options.users if u not in histories]
    if missing:
        raise SystemExit(f"--users: no MovieLens-100k user {', '.join(missing)} (ids are 1..943)")

    settings = Settings(artifact_dir=options.artifact, host="127.0.0.1",
                        port=_usable_port(options.port), key_prefix=DEMO_KEY_PREFIX)
    with redis_url_or_embedded(settings) as redis_url:
        where = "REDIS_URL" if settings.redis_url else "an embedded redis-server"
        settings = settings.model_copy(update={"redis_url": redis_url})
        console.print(f"Serving [bold]{options.artifact}[/] at {_url(settings)} with its user "
                      f"state in {where} ({redis_url})")
        with BackgroundServer(settings) as server:
            report = replay_users(server.url, options, histories, console)
            show_report(report, options, histories, data.vocab.titles, console)
            show_next_steps(server.url, options.users[0], histories[options.users[0]], console,
                            options.artifact)
            if options.keep_serving:
                console.print(f"\nServing at {server.url} (docs: {server.url}/docs). "
                              "Press Ctrl-C to stop.")
                threading.Event().wait()
    console.print("Stopped the service and its Redis; nothing is left running.")


def ensure_artifact(options: DemoOptions, console: Console) -> None:
    """Train (if no run yet) and export (if no artifact yet) the demo model."""
    if (options.artifact / "manifest.json").is_file():
        from model.manifest import Manifest

        found = Manifest.load(options.artifact, verify=False).config.model
        if found != options.model:
            raise typer.BadParameter(f"{options.artifact} holds a {found} model, not {options.model}"
                                     "; pass another --artifact", param_hint="--model")
        console.print(f"Using the exported model in {options.artifact}")
        return
    from training.export_run import export_run

    if not (options.run / "checkpoint.pt").is_file():
        train_demo_model(options, console)
    console.print(f"Exporting {options.run} to {options.artifact} (ONNX + manifest)")
    export_run(options.run, options.artifact)


def train_demo_model(options: DemoOptions, console: Console) -> None:
    """A small CmnRec (TSC, T=50, M=4) on MovieLens-100k, within the time budget."""
    from data.loaders import load_dataset
    from model.config import ModelConfig
    from training.pipeline import train_run
    from training.recipes import RECIPES
    from training.settings import TrainSettings

    data = load_dataset("ml-100k", cache_dir=options.cache_dir)
    # The recipe `cmnrec train --recipe auto` picks for MovieLens-100k (training/recipes.py: k=64,
    # dropout 0.3, AdamW lr 1e-3, weight decay 0.01, 16 users per batch), cut by the demo's budget.
    recipe = RECIPES["ml-100k"]
    if options.model == "lrurec":  # N = 2k, two blocks (the paper's)
        config = ModelConfig(num_items=data.num_items, model="lrurec",
                             **recipe.model_fields("lrurec"))
        name = f"LRURec ({config.layers} blocks, k={config.embed_dim}, N={config.hidden_dim})"
    else:
        config = ModelConfig(num_items=data.num_items, model="cmnrec", rule="tsc", slots=4,
                             **recipe.model_fields("cmnrec"))
        name = f"CmnRec (TSC, T={config.block_len}, M={config.slots})"
    settings = TrainSettings(**{**recipe.train_fields(config.model), "epochs": options.epochs},
                             seed=0, threads=options.threads, max_seconds=options.max_seconds)
    console.print(f"No model yet: training {name} on MovieLens-100k "
                  f"({len(data.users)} users, {data.num_interactions} ratings) for at most "
                  f"{options.epochs} epochs / {options.max_seconds:.0f} s on {options.threads} "
                  "threads")
    result = train_run(data, config, settings, options.run,
                       dataset_info={"source": "ml-100k", "recipe": "ml-100k"})
    test = result.report.metrics["test"]
    console.print(f"Trained {result.report.epochs} epochs ({result.report.stopped}): test HR@10 "
                  f"{test['hr@10']:.3f}, NDCG@10 {test['ndcg@10']:.3f}")


@dataclass
class UserReplay:
    user: str
    sent: list[str]  # item ids replayed, in order
    last: dict[str, Any]  # the answer to the last event
    repeated: dict[str, Any]  # the answer to the last event sent again (same event id)
    stored: dict[str, Any]  # GET /v1/users/{user}/recommendations


@dataclass
class ReplayReport:
    users: list[UserReplay]
    client_ms: list[float]  # round trip of each POST /v1/events, as the client saw it
    server_ms: list[dict[str, float]]  # latency_ms of each answer
    chunk_events: int


def replay_users(url: str, options: DemoOptions, histories: dict[str, list[str]],
                 console: Console) -> ReplayReport:
    import httpx

    report = ReplayReport([], [], [], 0)
    with httpx.Client(base_url=url, timeout=30.0) as client:
        for user in options.users:
            client.delete(f"/v1/users/{user}").raise_for_status()  # start from scratch
            items = histories[user][:options.events]
            answer: dict[str, Any] = {}
            for k, item in enumerate(items):
                last = k == len(items) - 1
                body = {"user_id": user, "item_id": item, "event_id": f"demo-{user}-{k}"}
                params = {"n": options.n if last else 0, "exclude_seen": "true"}
                tic = time.perf_counter()
                response = client.post("/v1/events", json=body, params=params)
                report.client_ms.append((time.perf_counter() - tic) * 1e3)
                response.raise_for_status()
                answer = response.json()
                report.server_ms.append(answer["latency_ms"])
                report.chunk_events += bool(answer["chunk_time"])
            repeated = client.post("/v1/events", params={"n": 0}, json={
                "user_id": user, "item_id": items[-1], "event_id": f"demo-{user}-{len(items) - 1}"})
            stored = client.get(f"/v1/users/{user}/recommendations",
                                params={"n": options.n, "exclude_seen": "true"})
            report.users.append(UserReplay(user, items, answer, repeated.json(), stored.json()))
            console.print(f"replayed {len(items)} events of user {user}: position "
                          f"{answer['position']}, the same event sent again -> applied="
                          f"{repeated.json()['applied']}")
    return report


def show_report(report: ReplayReport, options: DemoOptions, histories: dict[str, list[str]],
                titles: dict[str, str], console: Console) -> None:
    for replay in report.users:
        history = histories[replay.user]
        upcoming = history[len(replay.sent):len(replay.sent) + LOOKAHEAD]
        recs = replay.last["recommendations"]
        table = Table(title=f"User {replay.user}: top {len(recs)} after {len(replay.sent)} "
                            f"events (already-seen movies excluded)", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("movie")
        table.add_column("score", justify="right")
        table.add_column("watched within the next\n" f"{len(upcoming)} events", justify="center")
        for rank, rec in enumerate(recs, 1):
            table.add_row(str(rank), f"{rec.get('title', rec['item_id'])} [{rec['item_id']}]",
                          f"{rec['score']:.3f}", "yes" if rec["item_id"] in upcoming else "")
        watched = ", ".join(titles.get(item, item) for item in replay.sent[-5:])
        console.print(f"\n[bold]User {replay.user}[/] recently watched: {watched}")
        console.print(table)
    console.print(_latency_table(report))
    applied = len(report.client_ms)
    if options.model == "lrurec":
        console.print(f"LRURec has no chunk times: each of the {applied} events cost one "
                      "recurrence step of every LRU layer and the output layer.")
        return
    console.print(f"{report.chunk_events} of {applied} events fell on a chunk time (memory "
                  f"written and read); the others cost one controller step and the output layer.")


def show_next_steps(url: str, user: str, history: list[str], console: Console,
                    artifact: Path = Path("artifacts/demo")) -> None:
    item = history[-1]
    console.print("\n[bold]Query it further[/] (while it runs):")
    console.print(f"  curl -s -X POST '{url}/v1/events?n=5' -H 'content-type: application/json' "
                  f"-d '{{\"user_id\": \"{user}\", \"item_id\": \"{item}\", "
                  f"\"event_id\": \"my-event-1\"}}'", soft_wrap=True)
    console.print(f"  curl -s '{url}/v1/users/{user}/recommendations?n=5&exclude_seen=true'",
                  soft_wrap=True)
    console.print(f"  curl -s -X POST '{url}/v1/events/batch?n=3' -H 'content-type: "
                  f"application/json' -d '{{\"events\": [{{\"user_id\": \"42\", \"item_id\": "
                  f"\"50\", \"event_id\": \"b-1\"}}, {{\"user_id\": \"43\", \"item_id\": "
                  f"\"181\", \"event_id\": \"b-2\"}}]}}'", soft_wrap=True)
    console.print(f"  curl -s {url}/v1/model   |   {url}/docs   |   curl -s {url}/metrics",
                  soft_wrap=True)
    console.print(f"  Serve a model yourself: cmnrec serve --artifact {artifact} "
                  "[--workers 2]  (REDIS_URL=redis://... to use your Redis)")


def _latency_table(report: ReplayReport) -> Table:
    table = Table(title=f"Latency of {len(report.client_ms)} POST /v1/events (ms)",
                  title_justify="left")
    for column in ("measure", "p50", "p90", "p99", "mean"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    rows = {"client round trip": report.client_ms}
    for stage in ("total", "state_read", "model", "controller", "memory", "topn",
                  "state_write"):
        rows[f"server: {stage}"] = [entry.get(stage, 0.0) for entry in report.server_ms]
    for name, values in rows.items():
        table.add_row(name, *(f"{v:.2f}" for v in (_percentile(values, 50),
                                                   _percentile(values, 90),
                                                   _percentile(values, 99),
                                                   statistics.fmean(values))))
    return table


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _usable_port(port: int) -> int:
    """`port` when it is free, else (or for 0) a free one."""
    from service.ops.redis_server import free_port

    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    return free_port()


def _url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.port}"


DemoModel = Enum("DemoModel", {name: name for name in DEMO_MODELS}, type=str)  # type: ignore[misc]


def demo(
    model: DemoModel = typer.Option(DemoModel.cmnrec, help="model to train and serve"),
    artifact: Optional[Path] = typer.Option(None, help="model to serve; trained on MovieLens-100k "
                                            "and exported here when missing (default: "
                                            "artifacts/demo, artifacts/demo-lrurec for lrurec)"),
    run: Optional[Path] = typer.Option(None, help="training run directory for that model "
                                       "(default: runs/demo, runs/demo-lrurec for lrurec)"),
    users: str = typer.Option("1,5,7", help="MovieLens-100k user ids to replay, comma-separated"),
    events: int = typer.Option(60, min=1, help="events replayed per user (their first ones)"),
    n: int = typer.Option(10, min=1, max=100, help="recommendations shown per user"),
    threads: int = typer.Option(2, min=1, help="torch threads for training"),
    epochs: int = typer.Option(20, min=1, help="training epochs (early stopping may end sooner)"),
    max_seconds: float = typer.Option(420.0, min=1.0, help="training time budget in seconds"),
    port: int = typer.Option(8000, min=0, max=65535,
                             help="HTTP port (0 or a busy port: a free one)"),
    keep_serving: Optional[bool] = typer.Option(
        None, "--keep-serving/--no-keep-serving",
        help="keep the service up until Ctrl-C (default: only when stdin is a terminal)"),
    cache_dir: Optional[Path] = typer.Option(None, help="download cache for ml-100k"),
) -> None:
    """The main job: train (if needed), export, serve on embedded Redis, replay real MovieLens
    users over HTTP and show their recommendations with titles and latencies."""
    from cli.demo import DemoOptions, run_demo

    user_ids = [u.strip() for u in users.split(",") if u.strip()]
    if not user_ids:
        raise typer.BadParameter("give at least one user id", param_hint="--users")
    if keep_serving is None:
        keep_serving = sys.stdin.isatty()
    suffix = "" if model.value == "cmnrec" else f"-{model.value}"
    artifact = artifact or Path(f"artifacts/demo{suffix}")
    run = run or Path(f"runs/demo{suffix}")
    options = DemoOptions(artifact=artifact, run=run, model=model.value, users=user_ids,
                          events=events, n=n, threads=threads, epochs=epochs,
                          max_seconds=max_seconds, port=port,
                          keep_serving=keep_serving, cache_dir=cache_dir)
    try:
        run_demo(options)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
