"""Data-parallel training: 2 CPU processes on gloo take the step one process takes on the union of
their batches; `cmnrec train --nproc 2` writes one run directory."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from typer.testing import CliRunner

from cli.app import app
from data.split import training_sequences
from model.config import ModelConfig
from model.network import build_model
from tests.training.toy_data import cyclic_dataset
from training import distributed
from training.settings import TrainSettings
from training.trainer import train_epoch

CONFIG = dict(rule="pec", embed_dim=8, hidden_dim=16, mem_width=8, attn_dim=8, block_len=6,
              slots=2, dropout=0.0)  # dropout draws differ between ranks
SETTINGS = TrainSettings(lr=0.5, clip_norm=1.0, device="cpu", threads=1)


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, list[np.ndarray], list[np.ndarray]]:
    """The same initial weights, optimizer and global batches in every process. Two batches of 5
    users (odd: the ranks get 3 and 2 users) with 2 to 16 events (1 to 3 blocks: one rank's users
    end before the other's)."""
    data = cyclic_dataset(users=10, items=20, min_len=2, max_len=16, seed=4)
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_items=data.num_items, **CONFIG))
    # SGD: the weights move by the gradients themselves (Adam would blow float-rounding noise in
    # near-zero gradients up to a full step of lr, making the comparison meaningless)
    optimizer = torch.optim.SGD(model.parameters(), lr=SETTINGS.lr, momentum=0.9)
    sequences = training_sequences(data)
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    return model, optimizer, sequences, [order[:5], order[5:]]


def _rank(out: str) -> None:
    """One rank: DDP over gloo, one epoch of the two global batches, save the weights."""
    torch.set_num_threads(1)
    cluster = distributed.from_environment()
    opened = distributed.join(cluster, torch.device("cpu"))
    try:
        model, optimizer, sequences, batches = _setup()
        wrapped = distributed.wrap(model, cluster, torch.device("cpu"))
        loss, seen, _, _ = train_epoch(wrapped, optimizer, sequences, batches, SETTINGS,
                                    tqdm(disable=True), None, cluster)
        torch.save({"weights": model.state_dict(), "seen": seen},
                   Path(out) / f"rank{cluster.rank}.pt")
    finally:
        distributed.leave(opened)


def test_two_gloo_ranks_take_the_one_process_step(tmp_path) -> None:
    distributed.launch(2, _rank, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    model, optimizer, sequences, batches = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, seen, _, _ = train_epoch(model, optimizer, sequences, batches, SETTINGS, tqdm(disable=True),
                             None)
    assert ranks[0]["seen"] == ranks[1]["seen"] == seen  # the global count of targets
    moved = 0
    for name, value in model.state_dict().items():
        for rank in ranks:
            torch.testing.assert_close(rank["weights"][name], value, rtol=1e-5, atol=1e-6,
                                       msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved >= len(before) - 1  # the steps changed the weights (all but maybe the memory's)


def test_cli_nproc_2_writes_one_run(tmp_path) -> None:
    data = cyclic_dataset(users=24, items=15, min_len=4, max_len=14, seed=5)
    csv = tmp_path / "log.csv"
    lines = ["user,item,timestamp"]
    for user, seq in zip(data.users, data.sequences):
        lines += [f"{user},{data.vocab.decode(int(i))},{t}" for t, i in enumerate(seq)]
    csv.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "train", "--dataset", str(csv), "--nproc", "2", "--device", "cpu", "--epochs", "2",
        "--embed-dim", "8", "--hidden-dim", "8", "--mem-width", "8", "--attn-dim", "4",
        "--block-len", "6", "--slots", "2", "--batch-size", "4", "--threads", "1",
        "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.json"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["settings"]["device"] == "cpu"
    # both ranks counted every user's targets: the epoch saw all of them once
    assert metrics["history"][0]["events"] == sum(max(len(s) - 1, 0)
                                                  for s in training_sequences(data))
