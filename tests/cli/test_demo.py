"""`cmnrec demo` on an existing artifact: serves on embedded Redis, replays real users over HTTP,
prints titles, latencies and how to go on, then stops everything (stdin is not a terminal)."""
from __future__ import annotations

import os

import pytest

from typer.testing import CliRunner

from cli.app import app
from data.dataset import ItemVocab
from tests.service.helpers import make_artifact
from tests.service.served import descendants, left_running


def test_demo_replays_users_and_stops_cleanly(movielens, tmp_path, monkeypatch):
    vocab = ItemVocab(ids=list(movielens.vocab.ids), titles=dict(movielens.vocab.titles))
    artifact = make_artifact(tmp_path, "demo", block_len=10, slots=3, vocab=vocab,
                             counts=movielens.item_counts())
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CMNREC_REDIS_URL", raising=False)
    before = descendants(os.getpid())
    result = CliRunner().invoke(app, ["demo", "--artifact", str(artifact), "--run",
                                      str(tmp_path / "no-run"), "--users", "1,7", "--events",
                                      "15", "--port", "0", "--no-keep-serving"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Using the exported model" in out and "embedded redis-server" in out
    assert "replayed 15 events of user 1: position 15" in out
    assert "applied=False" in out  # the repeated event id
    assert "User 7" in out and "(199" in out  # titles with their years
    assert "Latency of 30 POST /v1/events" in out and "client round trip" in out
    assert "curl -s -X POST" in out and "/v1/users/1/recommendations" in out
    assert not (tmp_path / "no-run").exists()  # no training when the artifact exists
    assert not left_running(descendants(os.getpid()) - before)


def test_demo_refuses_unknown_users(movielens, tmp_path):
    vocab = ItemVocab(ids=list(movielens.vocab.ids))
    artifact = make_artifact(tmp_path, "demo", vocab=vocab, counts=movielens.item_counts())
    result = CliRunner().invoke(app, ["demo", "--artifact", str(artifact), "--users", "99999",
                                      "--no-keep-serving", "--port", "0"])
    assert result.exit_code != 0 and "99999" in result.output


def test_demo_serves_lrurec_and_refuses_a_model_of_another_kind(movielens, tmp_path, monkeypatch):
    vocab = ItemVocab(ids=list(movielens.vocab.ids), titles=dict(movielens.vocab.titles))
    artifact = make_artifact(tmp_path, "demo-lrurec", model="lrurec", vocab=vocab,
                             counts=movielens.item_counts())
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("CMNREC_REDIS_URL", raising=False)
    refused = CliRunner().invoke(app, ["demo", "--artifact", str(artifact), "--users", "1",
                                       "--no-keep-serving", "--port", "0"])  # --model cmnrec
    assert refused.exit_code != 0 and "--model" in refused.output and "lrurec" in refused.output
    before = descendants(os.getpid())
    result = CliRunner().invoke(app, ["demo", "--model", "lrurec", "--artifact", str(artifact),
                                      "--run", str(tmp_path / "no-run"), "--users", "5",
                                      "--events", "12", "--port", "0", "--no-keep-serving"])
    assert result.exit_code == 0, result.output
    assert "replayed 12 events of user 5: position 12" in result.output
    assert "LRURec has no chunk times" in result.output
    assert not (tmp_path / "no-run").exists()
    assert not left_running(descendants(os.getpid()) - before)
@pytest.mark.redis_modes("cluster")
def test_demo_runs_on_a_redis_cluster(movielens, tmp_path, monkeypatch, redis_url):
    """REDIS_URL=redis+cluster://...: the demo's service keeps its users' state in the cluster."""
    from cli.demo import DEMO_KEY_PREFIX
    from tests.conftest import delete_prefix

    vocab = ItemVocab(ids=list(movielens.vocab.ids), titles=dict(movielens.vocab.titles))
    artifact = make_artifact(tmp_path, "demo", block_len=10, slots=3, vocab=vocab,
                             counts=movielens.item_counts())
    monkeypatch.setenv("REDIS_URL", redis_url)
    try:
        result = CliRunner().invoke(app, ["demo", "--artifact", str(artifact), "--users", "1",
                                          "--events", "12", "--port", "0", "--no-keep-serving"])
        assert result.exit_code == 0, result.output
        assert redis_url in result.output and "replayed 12 events of user 1: position 12" in \
            result.output
    finally:
        delete_prefix(redis_url, DEMO_KEY_PREFIX)


@pytest.mark.parametrize("model", ["cmnrec", "lrurec"])
def test_demo_trains_with_the_ml100k_recipe(movielens, tmp_path, model):
    from rich.console import Console

    from cli.demo import DemoOptions, train_demo_model
    from training.checkpoint import read_metrics
    from training.recipes import RECIPES

    options = DemoOptions(artifact=tmp_path / "art", run=tmp_path / "run", users=["1"], events=1,
                          n=5, threads=1, epochs=1, max_seconds=3.0, port=0,
                          keep_serving=False, model=model)
    train_demo_model(options, Console(quiet=True))
    metrics = read_metrics(tmp_path / "run")
    recipe = RECIPES["ml-100k"]
    assert metrics["config"]["model"] == model and metrics["dataset"]["recipe"] == "ml-100k"
    assert (metrics["config"]["embed_dim"], metrics["config"]["dropout"]) == (recipe.embed_dim,
                                                                            recipe.dropout)
    assert (metrics["settings"]["lr"], metrics["settings"]["batch_size"]) == (recipe.lr,
                                                                            recipe.batch_size)
    assert metrics["settings"]["epochs"] == 1 and 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
