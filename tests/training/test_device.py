"""The device plumbing: --device resolution, bf16 autocast, host-known chunk flags, checkpoints
loaded onto a chosen device, and the CLI errors that name the option."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tqdm import tqdm
from typer.testing import CliRunner

from cli.app import app
from data.split import training_sequences
from model.config import ModelConfig
from model.network import build_model
from tests.training.toy_data import cyclic_dataset
from training.batching import length_sorted_batches
from training.checkpoint import load_run, save_run
from training.device import autocast, resolve_device, to_device
from training.settings import TrainSettings
from training.trainer import train_epoch

TINY = dict(embed_dim=8, hidden_dim=16, mem_width=8, attn_dim=8, block_len=6, slots=2)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
    else:  # the machine this suite runs on in CI: asking for a GPU is a clear error
        for spec in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="^device: .*no CUDA device"):
                resolve_device(spec)
    for spec in ("gpu", "cuda:x", "", "CPU"):
        with pytest.raises(ValueError, match="^device: expected auto, cpu, cuda or cuda:N"):
            resolve_device(spec)


@pytest.mark.parametrize("field,value", [("device", "tpu"), ("precision", "fp16"),
                                         ("compile", "max"), ("device", "cuda:")])
def test_settings_reject_unknown_values(field, value) -> None:
    with pytest.raises(ValueError, match=f"^{field}: invalid value"):
        TrainSettings(**{field: value})


@pytest.mark.parametrize("args,option", [
    (["--device", "gpu"], "--device"), (["--precision", "fp16"], "--precision"),
    (["--compile", "max"], "--compile"), (["--nproc", "0"], "--nproc"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda:1"], "--device")]))
def test_cli_names_the_bad_option(args, option, tmp_path) -> None:
    result = CliRunner().invoke(app, ["train", "--dataset", "synthetic", "--out",
                                      str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "run").exists()


def test_to_device_copies_the_batch() -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    tensor = to_device(array, torch.device("cpu"))
    assert tensor.dtype == torch.int64 and tensor.tolist() == array.tolist()


@pytest.mark.parametrize("first_pos", [0, 6, 2])
def test_host_side_chunk_flags_give_the_same_run(first_pos) -> None:
    """forward(first_pos=p) (what the trainer passes) == forward reading state.pos on the device."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_items=30, rule="pec", **TINY)).eval()
    state = model.initial_state(3)
    state = state._replace(pos=torch.full((3,), first_pos))
    items = torch.randint(1, 30, (3, 9))
    with torch.no_grad():
        expected, expected_state = model(items, state)
        got, got_state = model(items, state, first_pos=first_pos)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for a, b in zip(got_state, expected_state):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_autocast_loss_is_close_to_fp32_and_weights_stay_fp32() -> None:
    """One epoch with a frozen model: the bf16 loss is the fp32 loss to bf16 precision."""
    data = cyclic_dataset(users=12, items=20, min_len=3, max_len=20, seed=1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_items=data.num_items, rule="tsc", **TINY))
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    sequences = training_sequences(data)
    lengths = np.array([len(s) for s in sequences])
    batches = [b for b in length_sorted_batches(lengths, 4)]
    losses = {}
    for precision in ("fp32", "bf16"):
        settings = TrainSettings(precision=precision, clip_norm=0.0)
        losses[precision], _, _, _ = train_epoch(model, frozen, sequences, batches, settings,
                                              tqdm(disable=True), None)
    assert np.isfinite(losses["bf16"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with autocast(torch.device("cpu"), "bf16"):
        assert model.decode(torch.zeros(1, model.config.projection_dim)).dtype == torch.bfloat16


def test_checkpoint_loads_onto_the_asked_device(tmp_path) -> None:
    data = cyclic_dataset(users=5, items=10, seed=0)
    model = build_model(ModelConfig(num_items=data.num_items, rule="pec", **TINY))
    save_run(tmp_path, model, data.vocab, data.item_counts())
    run = load_run(tmp_path, device=torch.device("cpu"))
    assert {p.device.type for p in run.model.parameters()} == {"cpu"}
    for name, value in model.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], value)
