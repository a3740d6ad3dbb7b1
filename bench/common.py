"""Shared pieces of the benchmarks: model sizes, the data set, machine facts, result files.

The benchmarks call the project's own trainer and evaluation (training.trainer, training.evaluation);
nothing here computes a model or a metric.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Sequence

from data.dataset import SequenceDataset
from data.loaders import load_dataset
from data.split import evaluation_users

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Model sizes (ModelConfig fields). "paper" is the paper's default (k=128, H=256, W=256, b=64, R=1);
# "small" keeps a full accuracy sweep of 14 networks inside the time budget on 2 shared cores.
DIMS: dict[str, dict[str, int]] = {
    "paper": {"embed_dim": 128, "hidden_dim": 256, "mem_width": 256, "attn_dim": 64, "read_heads": 1},
    "small": {"embed_dim": 64, "hidden_dim": 128, "mem_width": 64, "attn_dim": 32, "read_heads": 1},
}


def parse_ints(text: str) -> list[int]:
    """"2,4,9" -> [2, 4, 9]; ValueError saying what is wrong otherwise."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected integers >= 1, got {text!r}")
    return values


def benchmark_dataset(name: str, users: int | None = None) -> SequenceDataset:
    """The data set, optionally cut to its first `users` users (for quick checks; items are kept)."""
    dataset = load_dataset(name)
    if users is None or users >= len(dataset.users):
        return dataset
    return SequenceDataset(name=f"{dataset.name}[:{users} users]", users=dataset.users[:users],
                           sequences=dataset.sequences[:users], vocab=dataset.vocab,
                           timestamps=None if dataset.timestamps is None else dataset.timestamps[:users])


def dataset_info(dataset: SequenceDataset) -> dict[str, Any]:
    lengths = [len(s) for s in dataset.sequences]
    return {"name": dataset.name, "users": len(dataset.users), "evaluated_users": len(evaluation_users(dataset)),
            "items": dataset.num_items - 1,
            "interactions": sum(lengths), "mean_length": sum(lengths) / max(len(lengths), 1),
            "max_length": max(lengths, default=0)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    """HEAD's commit, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on. The load average tells how busy the shared machine was."""
    import torch  # the benchmarks need torch anyway; imported here to keep the helpers light

    return {
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "load_average_1_5_15": list(os.getloadavg()),
        "git": git_revision(),
    }


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are expected to be formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save_results(json_path: Path, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write the figures as JSON and the report as markdown beside it (same stem, .md)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    markdown_path = json_path.with_suffix(".md")
    markdown_path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return json_path, markdown_path
