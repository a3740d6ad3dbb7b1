"""The `cmnrec` command line. Torch-free at import time: each command imports what it needs, so the
serving install (no torch) runs `cmnrec serve` and `cmnrec worker`."""
from __future__ import annotations

import typer

from cli.demo import demo
from cli.export import export
from cli.serve import serve
from cli.streams import replay, worker
from cli.train import evaluate, predict, train

app = typer.Typer(
    name="cmnrec",
    help="CmnRec: train a chunk-accelerated memory network recommender, export it, serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for command in (train, evaluate, predict, export, serve, demo, worker, replay):
    app.command()(command)


if __name__ == "__main__":
    app()
