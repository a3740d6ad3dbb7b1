"""Issue 3 acceptance: the service after a real MovieLens-100k user's events, one POST each, gives
the same top-10 as `cmnrec predict` on that item sequence (items in the same order, scores within
1e-4), with and without exclude_seen, for every chunk rule, SRMN and LRURec (issue 9: the service
steps the recurrence, predict runs the parallel scan), across block boundaries; the batch endpoint
gives the same states as one-by-one.

Random-weight models over the real ml-100k vocabulary (no training needed) with a small block
length T = 8, so the replayed 27 events cross three block boundaries.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.dataset import ItemVocab
from model.engine import StepEngine
from tests.service.helpers import make_artifact, serving

pytestmark = pytest.mark.anyio

VARIANTS = {"cmnrec-pec": ("cmnrec", "pec"), "cmnrec-tsc": ("cmnrec", "tsc"),
            "cmnrec-exc": ("cmnrec", "exc"), "srmn": ("srmn", "every"),
            "lrurec": ("lrurec", "none")}
BLOCK_LEN, SLOTS, EVENTS = 8, 3, 27
USER, OTHER_USER = "1", "2"  # real MovieLens-100k users (272 and 62 ratings)
DIMS = dict(embed_dim=16, hidden_dim=24, mem_width=12, read_heads=2, attn_dim=8)


@pytest.fixture(scope="module")
def histories(movielens) -> dict[str, list[str]]:
    return {user: [movielens.vocab.decode(int(i)) for i in seq]
            for user, seq in zip(movielens.users, movielens.sequences)}


@pytest.fixture(scope="module")
def exported(movielens, tmp_path_factory) -> dict[str, tuple]:
    """{variant: (run directory, artifact directory)} of random-weight ml-100k models."""
    root = tmp_path_factory.mktemp("parity")
    vocab = ItemVocab(ids=list(movielens.vocab.ids), titles=dict(movielens.vocab.titles))
    out = {}
    for seed, (name, (model, rule)) in enumerate(VARIANTS.items()):
        artifact = make_artifact(root, name, model=model, rule=rule, block_len=BLOCK_LEN,
                                 slots=SLOTS, seed=seed, vocab=vocab,
                                 counts=movielens.item_counts(), **DIMS)
        out[name] = (root / "runs" / name, artifact)
    return out


def predict(run_dir, items: list[str], exclude_seen: bool) -> list[dict]:
    """What `cmnrec predict --run RUN --items ... --n 10 [--exclude-seen]` answers."""
    from training.checkpoint import load_run
    from training.predict import recommend

    return recommend(load_run(run_dir), None, items, n=10, exclude_seen=exclude_seen)


def assert_same_top10(service: list[dict], reference: list[dict]) -> None:
    assert [r["item_id"] for r in service] == [r["item_id"] for r in reference]
    assert np.allclose([r["score"] for r in service], [r["score"] for r in reference],
                       atol=1e-4, rtol=0)
    assert [r.get("title") for r in service] == [r.get("title") for r in reference]


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_service_top10_equals_predict_across_blocks(variant, exported, histories,
                                                          make_settings):
    run_dir, artifact = exported[variant]
    items = histories[USER][:EVENTS]
    engine = StepEngine.load(artifact)
    async with serving(make_settings(artifact_dir=artifact), engine) as client:
        chunks = []
        for k, item in enumerate(items, 1):
            response = await client.post("/v1/events", params={"n": 10},
                                         json={"user_id": USER, "item_id": item})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["position"] == k
            chunks.append(body["chunk_time"])
            if k % BLOCK_LEN in (0, 1) or k == EVENTS:  # both sides of each block boundary
                assert_same_top10(body["recommendations"], predict(run_dir, items[:k], False))
        for k, item in enumerate(items, 1):  # the same events for a second user, excluding seen
            response = await client.post("/v1/events", params={"n": 10, "exclude_seen": "true"},
                                         json={"user_id": "excl", "item_id": item})
        assert_same_top10(response.json()["recommendations"], predict(run_dir, items, True))
        stored = await client.get(f"/v1/users/{USER}/recommendations",
                                  params={"n": 10, "exclude_seen": "true"})
        assert_same_top10(stored.json()["recommendations"], predict(run_dir, items, True))
    mask = list(engine.manifest.chunk_mask)
    assert chunks == [mask[p % BLOCK_LEN] for p in range(EVENTS)]
    expected = {"srmn": EVENTS, "lrurec": 0}.get(variant, 3 * SLOTS + sum(mask[:EVENTS % 8]))
    assert sum(chunks) == expected


@pytest.mark.redis_modes("system", "cluster")
async def test_the_predict_command_gives_the_same_answer(exported, histories, make_settings):
    from typer.testing import CliRunner

    from cli.app import app

    run_dir, artifact = exported["cmnrec-tsc"]
    items = histories[USER][:EVENTS]
    result = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--items", ",".join(items),
                                      "--n", "10", "--exclude-seen"])
    assert result.exit_code == 0, result.output
    reference = json.loads(result.output)["recommendations"]
    async with serving(make_settings(artifact_dir=artifact)) as client:
        for item in items:
            response = await client.post("/v1/events", params={"n": 10, "exclude_seen": "true"},
                                         json={"user_id": USER, "item_id": item})
    assert_same_top10(response.json()["recommendations"], reference)


@pytest.mark.parametrize("variant", ["cmnrec-tsc", "srmn", "lrurec"])
async def test_batch_endpoint_gives_the_states_of_one_by_one(variant, exported, histories,
                                                             make_settings):
    import redis.asyncio as aioredis

    from service.state.keys import KeySchema

    _, artifact = exported[variant]
    engine = StepEngine.load(artifact)
    settings = make_settings(artifact_dir=artifact)
    mine, theirs = histories[USER][:EVENTS], histories[OTHER_USER][:EVENTS - 5]
    interleaved = []
    for k in range(EVENTS):  # two real users' events interleaved, in each user's own order
        interleaved.append({"user_id": "batch-1", "item_id": mine[k]})
        if k < len(theirs):
            interleaved.append({"user_id": "batch-2", "item_id": theirs[k]})
    async with serving(settings, engine) as client:
        for user, items in (("single-1", mine), ("single-2", theirs)):
            for item in items:
                await client.post("/v1/events?n=0", json={"user_id": user, "item_id": item})
        batch = await client.post("/v1/events/batch?n=10", json={"events": interleaved})
        assert batch.status_code == 200, batch.text
        last = {r["user_id"]: r for r in batch.json()["results"]}
        single = await client.get("/v1/users/single-1/recommendations?n=10")
    keys = KeySchema(settings.key_prefix)
    redis = aioredis.Redis.from_url(settings.redis_url)
    try:
        blobs = {user: await redis.get(keys.user(user).state)
                 for user in ("single-1", "single-2", "batch-1", "batch-2")}
    finally:
        await redis.aclose()
    for one, many in (("single-1", "batch-1"), ("single-2", "batch-2")):
        a, b = engine.codec.decode(blobs[one]), engine.codec.decode(blobs[many])
        assert int(a["pos"]) == int(b["pos"])
        for field in a:
            np.testing.assert_allclose(a[field], b[field], atol=1e-5, rtol=0, err_msg=field)
    assert last["batch-1"]["position"] == EVENTS and last["batch-2"]["position"] == EVENTS - 5
    assert_same_top10(last["batch-1"]["recommendations"], single.json()["recommendations"])
