"""`cmnrec train`, `cmnrec evaluate`, `cmnrec predict` end to end through the typer app."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from model.config import ModelConfig
from tests.training.toy_data import cyclic_dataset
from training.checkpoint import load_run
from training.metrics import metric_keys
from training.predict import recommend
from training.recipes import RECIPES
from training.settings import TrainSettings

TINY = ["--embed-dim", "8", "--hidden-dim", "16", "--mem-width", "8", "--attn-dim", "8",
        "--block-len", "10", "--slots", "3", "--batch-size", "16", "--threads", "1",
        "--no-progress"]

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _write_csv(path: Path) -> Path:
    data = cyclic_dataset(users=40, items=25, min_len=4, max_len=30, seed=3)
    lines = ["user,item,timestamp"]
    for user, seq in zip(data.users, data.sequences):
        lines += [f"{user},{data.vocab.decode(int(item))},{1000 + t}" for t, item in enumerate(seq)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    csv_path = _write_csv(root / "log.csv")
    run = root / "run"
    result = _invoke("train", "--dataset", csv_path, "--model", "cmnrec", "--rule", "tsc",
                     "--epochs", "2", "--seed", "0", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    return run, csv_path


def test_train_writes_checkpoint_and_metrics(trained_run) -> None:
    run, _ = trained_run
    assert (run / "checkpoint.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert set(metrics[split]) == set(metric_keys())
        assert all(0.0 <= v <= 1.0 for v in metrics[split].values())
    assert set(metrics["seen_excluded"]) == {"valid", "test"}
    assert set(metrics["seen_excluded"]["test"]) == set(metric_keys())
    assert metrics["epochs"] == len(metrics["history"]) == 2
    assert metrics["seconds_per_epoch"] > 0 and metrics["parameters"] > 0
    assert metrics["config"]["model"] == "cmnrec" and metrics["config"]["rule"] == "tsc"
    assert metrics["config"]["block_len"] == 10 and metrics["config"]["slots"] == 3
    assert metrics["dataset"]["users"] == 40 and metrics["dataset"]["eval_users"] == 40
    loaded = load_run(run)
    assert loaded.config.to_dict() == metrics["config"]
    assert loaded.extra["dataset"]["source"].endswith("log.csv")


def test_evaluate_reproduces_the_training_metrics(trained_run) -> None:
    run, _ = trained_run
    result = _invoke("evaluate", "--run", run, "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("valid", "test"):
        for key in metric_keys():
            assert again[split][key] == pytest.approx(metrics[split][key], abs=1e-12)
    table = _invoke("evaluate", "--run", run, "--exclude-seen")
    assert table.exit_code == 0, table.output
    assert "NDCG@10" in table.stdout and "valid" in table.stdout and "test" in table.stdout


def test_predict_prints_the_reference_answer(trained_run) -> None:
    run, _ = trained_run
    result = _invoke("predict", "--run", run, "--items", "i3, i5,i7", "--n", "5")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)["recommendations"]
    assert answer == recommend(load_run(run), None, ["i3", "i5", "i7"], n=5)
    assert len(answer) == 5 and all(set(r) <= {"item_id", "score", "title"} for r in answer)
    excluded = _invoke("predict", "--run", run, "--items", "i3,i5,i7", "--n", "25",
                       "--exclude-seen")
    kept = {r["item_id"] for r in json.loads(excluded.stdout)["recommendations"]}
    assert len(kept) == 22 and not kept & {"i3", "i5", "i7"}


@pytest.mark.parametrize("args,option", [
    (["predict", "--items", "i3,nope", "--n", "5"], "--items"),
    (["predict", "--items", "i3,,i4"], "--items"),
    (["predict", "--items", "i3", "--n", "0"], "--n"),
    (["evaluate", "--batch-size", "0"], "--batch-size"),
])
def test_bad_run_options_name_the_option(trained_run, args, option) -> None:
    run, _ = trained_run
    result = _invoke(*args, "--run", run)
    assert result.exit_code == 2
    assert option in result.output
    if "nope" in args[2]:
        assert "nope" in result.output


@pytest.mark.parametrize("args,option", [
    (["--model", "transformer"], "--model"),
    (["--rule", "fixed"], "--rule"),
    (["--slots", "20", "--block-len", "10"], "--slots"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--dropout", "1.5"], "--dropout"),
    (["--min-item-freq", "0"], "--min-item-freq"),
    (["--optimizer", "sgd"], "--optimizer"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--lr-schedule", "step"], "--lr-schedule"),
    (["--warmup-steps", "-1"], "--warmup-steps"),
    (["--sampled-softmax", "-1"], "--sampled-softmax"),
    (["--loss-weighting", "user"], "--loss-weighting"),
    (["--tied", "--out-dim", "4"], "--tied"),
    (["--head", "mlp"], "--head"),
    (["--model", "lrurec", "--input-norm"], "--input-norm"),
    (["--model", "sasrec", "--heads", "3", "--embed-dim", "8"], "--heads"),
    (["--model", "sasrec", "--max-len", "0"], "--max-len"),
])
def test_bad_train_options_name_the_option(trained_run, tmp_path, args, option) -> None:
    _, csv_path = trained_run
    result = _invoke("train", "--dataset", csv_path, "--out", tmp_path / "bad", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_the_auto_recipe_fills_what_the_command_line_leaves_out(trained_run, tmp_path) -> None:
    _, csv_path = trained_run  # 40 users, 25 items: the ml-100k recipe
    run = tmp_path / "auto"
    result = _invoke("train", "--dataset", csv_path, "--model", "gru4rec", "--epochs", "1",
                     "--dropout", "0.1", "--batch-size", "8", "--threads", "1", "--no-progress",
                     "--out", run)
    assert result.exit_code == 0, result.output
    assert "recipe ml-100k (auto)" in result.output
    metrics = json.loads((run / "metrics.json").read_text())
    recipe = RECIPES["ml-100k"]
    assert metrics["dataset"]["recipe"] == "ml-100k"
    assert (metrics["config"]["embed_dim"], metrics["config"]["hidden_dim"]) == (
        recipe.embed_dim, recipe.hidden_dim)
    assert metrics["settings"]["lr"] == recipe.lr and metrics["settings"]["epochs"] == 1
    assert metrics["config"]["dropout"] == 0.1 and metrics["settings"]["batch_size"] == 8


def test_recipe_none_keeps_the_defaults_and_a_named_recipe_applies(trained_run, tmp_path) -> None:
    _, csv_path = trained_run
    plain = _invoke("train", "--dataset", csv_path, "--model", "gru4rec", "--epochs", "1",
                    "--recipe", "none", "--threads", "1", "--no-progress", "--out", tmp_path / "n")
    assert plain.exit_code == 0, plain.output
    metrics = json.loads((tmp_path / "n" / "metrics.json").read_text())
    defaults = ModelConfig(num_items=2)
    assert metrics["dataset"]["recipe"] == "none"
    assert metrics["config"]["embed_dim"] == defaults.embed_dim
    assert metrics["settings"]["batch_size"] == TrainSettings().batch_size
    named = _invoke("train", "--dataset", csv_path, "--model", "cmnrec", "--epochs", "1",
                    "--recipe", "beauty", "--threads", "1", "--no-progress", "--out", tmp_path / "b")
    assert named.exit_code == 0, named.output
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    cmnrec_recipe = RECIPES["beauty"].for_model("cmnrec")
    assert metrics["settings"]["sampled_softmax"] == cmnrec_recipe.sampled_softmax
    assert metrics["settings"]["batch_size"] == RECIPES["beauty"].batch_size
    assert metrics["settings"]["lr"] == cmnrec_recipe.lr
    assert metrics["config"]["block_len"] == cmnrec_recipe.block_len
    assert metrics["settings"]["lr_schedule"] == cmnrec_recipe.lr_schedule
    bad = _invoke("train", "--dataset", csv_path, "--recipe", "imdb", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "--recipe" in bad.output
    assert not (tmp_path / "x").exists()


def test_resume_goes_on_from_the_saved_state_and_refuses_another_training(trained_run,
                                                                           tmp_path) -> None:
    """Two epochs, then --resume with --epochs 3: one more epoch on top of the saved state; the
    same three epochs in one go give the same metrics. Bad resumes name --resume."""
    _, csv_path = trained_run
    common = ["train", "--dataset", csv_path, "--model", "gru4rec", "--seed", "1",
              "--patience", "0", *TINY]
    nothing = _invoke(*common, "--epochs", "3", "--resume", "--out", tmp_path / "none")
    assert nothing.exit_code == 2 and "--resume" in nothing.output
    assert "no training_state.pt" in nothing.output
    whole = _invoke(*common, "--epochs", "3", "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    assert (tmp_path / "whole" / "training_state.pt").is_file()
    parts = tmp_path / "parts"
    assert _invoke(*common, "--epochs", "2", "--out", parts).exit_code == 0
    resumed = _invoke(*common, "--epochs", "3", "--resume", "--out", parts)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming from" in resumed.output
    first = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    second = json.loads((parts / "metrics.json").read_text())
    assert second["epochs"] == 3 and len(second["history"]) == 3
    assert (second["test"], second["steps"]) == (first["test"], first["steps"])
    other = _invoke(*common, "--epochs", "4", "--lr", "0.05", "--resume", "--out", parts)
    assert other.exit_code == 2 and "--resume" in other.output and "lr=" in other.output
    fresh = _invoke(*common, "--epochs", "1", "--out", parts)  # no --resume: starts afresh
    assert fresh.exit_code == 0, fresh.output
    assert json.loads((parts / "metrics.json").read_text())["epochs"] == 1


def test_missing_run_and_missing_dataset_are_named(tmp_path) -> None:
    missing = _invoke("predict", "--run", tmp_path / "nothing", "--items", "1")
    assert missing.exit_code == 2 and "--run" in missing.output
    no_data = _invoke("train", "--dataset", tmp_path / "absent.csv", "--out", tmp_path / "r")
    assert no_data.exit_code == 2 and "--dataset" in no_data.output


def test_named_local_dataset_without_its_directory_is_named(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CMNREC_DATA_DIR", raising=False)
    result = _invoke("train", "--dataset", "ml-1m", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--dataset" in result.output
    assert "CMNREC_DATA_DIR" in result.output


def test_sasrec_trains_through_the_cli_and_export_refuses_it(trained_run, tmp_path) -> None:
    _, csv_path = trained_run
    run = tmp_path / "sasrec"
    result = _invoke("train", "--dataset", csv_path, "--model", "sasrec", "--max-len", "12",
                     "--heads", "2", "--tied", "--epochs", "1", "--eval-every", "2", "--out", run,
                     *TINY)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["model"] == "sasrec" and metrics["config"]["tied"] is True
    assert metrics["settings"]["optimizer"] == "adamw" and metrics["steps"] > 0
    again = json.loads(_invoke("evaluate", "--run", run, "--json", "--exclude-seen").stdout)
    assert again["test"] == pytest.approx(metrics["seen_excluded"]["test"], abs=1e-12)
    refused = _invoke("export", "--run", run, "--out", tmp_path / "art")
    assert refused.exit_code == 2 and "--run" in refused.output
    assert "stateless" in refused.output and not (tmp_path / "art").exists()


def test_the_normed_cmnrec_trains_and_exports_with_its_options(trained_run, tmp_path) -> None:
    _, csv_path = trained_run
    run, art = tmp_path / "normed", tmp_path / "normed-art"
    result = _invoke("train", "--dataset", csv_path, "--input-norm", "--head", "ffn",
                     "--epochs", "1", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    config = json.loads((run / "metrics.json").read_text())["config"]
    assert (config["input_norm"], config["head"]) == (True, "ffn")
    assert _invoke("export", "--run", run, "--out", art).exit_code == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert (manifest["config"]["input_norm"], manifest["config"]["head"]) == (True, "ffn")


def test_popularity_through_the_cli(trained_run, tmp_path) -> None:
    _, csv_path = trained_run
    result = _invoke("train", "--dataset", csv_path, "--model", "pop", "--out", tmp_path / "pop",
                     "--no-progress")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "pop" / "metrics.json").read_text())
    assert metrics["epochs"] == 0 and metrics["parameters"] == 0
    assert set(metrics["test"]) == set(metric_keys())


def test_synthetic_data_round_trip(tmp_path) -> None:
    run = tmp_path / "syn"
    result = _invoke("train", "--dataset", "synthetic", "--model", "gru4rec", "--epochs", "1",
                     "--seed", "3", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"]["name"] == "synthetic" and metrics["dataset"]["seed"] == 3
    again = json.loads(_invoke("evaluate", "--run", run, "--json").stdout)
    assert again["test"] == pytest.approx(metrics["test"], abs=1e-12)


def test_lrurec_through_the_cli(trained_run, tmp_path) -> None:
    _, csv_path = trained_run
    run = tmp_path / "lru"
    result = _invoke("train", "--dataset", csv_path, "--model", "lrurec", "--layers", "3",
                     "--epochs", "1", "--out", run, *TINY)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["config"]["model"] == "lrurec" and metrics["config"]["layers"] == 3
    assert metrics["config"]["rule"] == "none"
    loaded = load_run(run)
    assert len(loaded.model.blocks) == 3
    answer = json.loads(_invoke("predict", "--run", run, "--items", "i3,i4,i5", "--n", "4").stdout)
    assert answer["recommendations"] == recommend(loaded, None, ["i3", "i4", "i5"], n=4)
    bad = _invoke("train", "--dataset", csv_path, "--model", "lrurec", "--layers", "0",
                  "--out", tmp_path / "bad", *TINY)
    assert bad.exit_code == 2 and "--layers" in bad.output


def test_the_cli_imports_without_torch() -> None:
    blocker = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cli.train, cli.app\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
