"""`cmnrec export`: a training run -> a serving artifact (ONNX graphs + manifest.json).

torch is imported inside the command, so the serving install (no torch) can still import the CLI.
"""
from __future__ import annotations

from pathlib import Path

import typer


def export(
    run: Path = typer.Option(..., "--run", help="Run directory written by `cmnrec train`."),
    out: Path = typer.Option(..., "--out", help="Artifact directory to write (replaced if present)."),
) -> None:
    """Export a trained run to ONNX graphs + manifest.json for `cmnrec serve`."""
    from rich.console import Console

    console = Console()
    if not run.is_dir():
        raise typer.BadParameter(f"{run} is not a directory", param_hint="--run")
    if not (run / "checkpoint.pt").is_file():
        raise typer.BadParameter(f"no checkpoint.pt in {run} (train a model first with"
                                 " `cmnrec train --out ...`)", param_hint="--run")
    if out.exists() and not (out / "manifest.json").is_file():
        raise typer.BadParameter(f"{out} exists and is not an artifact; refusing to replace it",
                                 param_hint="--out")
    try:
        from model.manifest import Manifest
        from training.export_run import export_run

        artifact = export_run(run, out)
    except ValueError as err:  # e.g. the popularity model, or a malformed checkpoint config
        raise typer.BadParameter(str(err), param_hint="--run") from err
    manifest = Manifest.load(artifact)
    config = manifest.config
    console.print(f"exported [bold]{run}[/] -> [bold]{artifact}[/]")
    console.print(f"model version: [bold]{manifest.model_version}[/]  model: {config.model}"
                  f"  rule: {config.rule}  T={config.block_len} M={config.slots}"
                  f"  items: {config.num_items - 1}  state: {manifest.state_payload_bytes} bytes")
    for path in sorted(artifact.iterdir()):
        console.print(f"  {path.name:<18} {path.stat().st_size:>12,d} bytes")
