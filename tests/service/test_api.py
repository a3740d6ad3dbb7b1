"""The HTTP API: every endpoint, every error code, no 500 for any input, Redis outage and recovery."""
from __future__ import annotations

import json
from typing import Any

import pytest

from service.ops.redis_server import EmbeddedRedis
from tests.service.helpers import metric, serving

pytestmark = [pytest.mark.anyio, pytest.mark.redis_modes("system", "cluster")]

ITEM, OTHER_ITEM = "101", "107"


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["message"]
    return body["error"]


async def test_post_event_applies_and_recommends(make_settings, engine):
    async with serving(make_settings(), engine) as client:
        first = await client.post("/v1/events", json={"user_id": "u1", "item_id": ITEM,
                                                      "event_id": "e1", "timestamp": 8.8e8})
        again = await client.post("/v1/events?n=0", json={"user_id": "u1", "item_id": ITEM,
                                                          "event_id": "e1"})
        numeric = await client.post("/v1/events?n=39&exclude_seen=true",
                                    json={"user_id": 7, "item_id": 102})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["user_id"] == "u1" and body["applied"] is True and body["position"] == 1
    assert body["chunk_time"] is False and body["model_version"] == engine.version
    assert len(body["recommendations"]) == 10
    assert {"total", "state_read", "model", "state_write"} <= set(body["latency_ms"])
    assert all(value >= 0 for value in body["latency_ms"].values())
    assert again.json()["applied"] is False and again.json()["position"] == 1
    assert again.json()["recommendations"] == []
    recs = numeric.json()["recommendations"]
    assert numeric.json()["user_id"] == "7" and len(recs) == 38  # every item but 102 and padding
    titled = [r for r in recs if r["item_id"] == "101"]
    assert titled[0]["title"] == "The First Movie (1995)"
    assert all("title" not in r for r in recs if r["item_id"] not in ("101", "102"))
    assert recs == sorted(recs, key=lambda r: -r["score"])


async def test_batch_endpoint_applies_in_order_and_one_result_per_event(make_settings, engine):
    events = [{"user_id": "a", "item_id": "103", "event_id": "1"},
              {"user_id": "b", "item_id": "104"},
              {"user_id": "a", "item_id": "105", "event_id": "2"},
              {"user_id": "a", "item_id": "106", "event_id": "1"}]
    async with serving(make_settings(), engine) as client:
        response = await client.post("/v1/events/batch?n=2", json={"events": events})
        empty = await client.post("/v1/events/batch", json={"events": []})
        stored = await client.get("/v1/users/a/recommendations?n=2")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["user_id"], r["applied"], r["position"]) for r in results] == \
        [("a", True, 1), ("b", True, 1), ("a", True, 2), ("a", False, 2)]
    assert all(len(r["recommendations"]) == 2 for r in results)
    assert results[2]["recommendations"] == stored.json()["recommendations"]
    assert empty.json()["results"] == []


async def test_user_recommendations_model_and_delete(make_settings, engine):
    async with serving(make_settings(), engine) as client:
        cold = await client.get("/v1/users/new-user/recommendations", params={"n": 3})
        await client.post("/v1/events", json={"user_id": "u x+é%?", "item_id": ITEM})
        warm = await client.get("/v1/users/u%20x%2B%C3%A9%25%3F/recommendations",
                                params={"n": 5, "exclude_seen": "true"})
        unchanged = await client.get("/v1/users/u%20x%2B%C3%A9%25%3F/recommendations",
                                     params={"n": 5, "exclude_seen": "true"})
        deleted = await client.delete("/v1/users/u%20x%2B%C3%A9%25%3F")
        deleted_again = await client.delete("/v1/users/u%20x%2B%C3%A9%25%3F")
        after = await client.get("/v1/users/u%20x%2B%C3%A9%25%3F/recommendations")
        model = await client.get("/v1/model")
    popular = engine.top_n(engine.popularity_scores(), 3)[0]
    assert cold.json()["source"] == "popularity" and cold.json()["position"] == 0
    assert [r["item_id"] for r in cold.json()["recommendations"]] == \
        [engine.vocab.decode(i) for i, _ in popular]
    assert warm.json()["source"] == "model" and warm.json()["position"] == 1
    assert ITEM not in {r["item_id"] for r in warm.json()["recommendations"]}
    assert unchanged.json()["recommendations"] == warm.json()["recommendations"]
    assert deleted.json() == {"user_id": "u x+é%?", "deleted": True}
    assert deleted_again.json()["deleted"] is False
    assert after.json()["source"] == "popularity"
    info = model.json()
    assert info["model_version"] == engine.version and info["rule"] == "tsc"
    assert info["block_len"] == 5 and info["slots"] == 2 and info["chunk_times"] == [4, 5]  # TSC, T=5, M=2
    assert info["state_bytes"] == len(engine.initial_state()) and info["num_items"] == 40


async def test_health_readiness_metrics_and_docs(make_settings, engine):
    async with serving(make_settings(), engine) as client:
        await client.post("/v1/events", json={"user_id": "m", "item_id": ITEM})
        health, ready = await client.get("/healthz"), await client.get("/readyz")
        scraped = await client.get("/metrics")
        docs, spec = await client.get("/docs"), await client.get("/openapi.json")
    assert health.json() == {"status": "ok", "checks": {}}
    assert ready.status_code == 200 and ready.json()["checks"] == {"artifact": True, "redis": True}
    text = scraped.text
    for name in ("cmnrec_request_latency_seconds_bucket", "cmnrec_stage_latency_seconds_bucket",
                 "cmnrec_events_total", "cmnrec_chunk_events_total", "cmnrec_cas_conflicts_total",
                 "cmnrec_state_rebuilds_total", "cmnrec_state_bytes_bucket",
                 "cmnrec_errors_total"):
        assert name in text, name
    assert 'method="POST",route="/v1/events"' in text
    assert 'route="/v1/users/{user_id}/recommendations"' in text  # templates, not raw paths
    assert 'stage="controller"' in text and 'stage="state_write"' in text
    assert '"m"' not in text  # the user id is never a label value
    from service.ops.labels import Stage

    stages = {line.split('stage="')[1].split('"')[0] for line in text.splitlines()
              if line.startswith("cmnrec_stage_latency_seconds") and 'stage="' in line}
    assert stages == {stage.value for stage in Stage}  # created up front, nothing else
    assert docs.status_code == 200 and "/v1/events/batch" in spec.json()["paths"]


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str, str | None]] = [
    # method, path, request kwargs, status, code, field
    ("POST", "/v1/events", {"content": b'{"user_id": '}, 400, "malformed_json", "body"),
    ("POST", "/v1/events", {"content": b"\xff\xfe{"}, 400, "malformed_json", "body"),
    ("POST", "/v1/events", {"content": b"[" * 50000}, 400, "malformed_json", "body"),
    ("POST", "/v1/events", {"content": b""}, 422, "validation_error", "body"),
    ("POST", "/v1/events", {"json": []}, 422, "validation_error", "body"),
    ("POST", "/v1/events", {"json": None}, 422, "validation_error", "body"),
    ("POST", "/v1/events", {"json": {"user_id": "a"}}, 422, "validation_error", "item_id"),
    ("POST", "/v1/events", {"json": {"user_id": "", "item_id": ITEM}}, 422, "empty_id", "user_id"),
    ("POST", "/v1/events", {"json": {"user_id": "  ", "item_id": ITEM}}, 422, "empty_id",
     "user_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": ""}}, 422, "empty_id", "item_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": ITEM, "event_id": ""}}, 422,
     "empty_id", "event_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a" * 257, "item_id": ITEM}}, 422, "id_too_long",
     "user_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": "9" * 300}}, 422, "id_too_long",
     "item_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": ITEM, "event_id": "e" * 999}}, 422,
     "id_too_long", "event_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": "no-such-item"}}, 422,
     "unknown_item", "item_id"),
    ("POST", "/v1/events", {"json": {"user_id": True, "item_id": ITEM}}, 422, "validation_error",
     "user_id"),
    ("POST", "/v1/events", {"json": {"user_id": ["a"], "item_id": ITEM}}, 422, "validation_error",
     "user_id"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": ITEM, "extra": 1}}, 422,
     "validation_error", "extra"),
    ("POST", "/v1/events", {"content": b'{"user_id":"a","item_id":"101","timestamp":NaN}'}, 422,
     "validation_error", "timestamp"),
    ("POST", "/v1/events", {"json": {"user_id": "a", "item_id": ITEM, "timestamp": "noon"}}, 422,
     "validation_error", "timestamp"),
    ("POST", "/v1/events?n=-1", {"json": {"user_id": "a", "item_id": ITEM}}, 422,
     "n_out_of_range", "n"),
    ("POST", "/v1/events?n=101", {"json": {"user_id": "a", "item_id": ITEM}}, 422,
     "n_out_of_range", "n"),
    ("POST", "/v1/events?n=ten", {"json": {"user_id": "a", "item_id": ITEM}}, 422,
     "n_out_of_range", "n"),
    ("POST", "/v1/events?exclude_seen=maybe", {"json": {"user_id": "a", "item_id": ITEM}}, 422,
     "validation_error", "exclude_seen"),
    ("POST", "/v1/events/batch", {"json": {"events": [{"user_id": "a", "item_id": ITEM}] * 11}},
     413, "batch_too_large", "events"),
    ("POST", "/v1/events/batch", {"json": {"events": {"user_id": "a"}}}, 422, "validation_error",
     "events"),
    ("POST", "/v1/events/batch", {"json": {"events": [{"user_id": "a", "item_id": ITEM},
                                                      {"user_id": "a", "item_id": "nope"}]}},
     422, "unknown_item", "events[1].item_id"),
    ("POST", "/v1/events/batch", {"json": {"events": [{"user_id": "a", "item_id": ITEM},
                                                      {"user_id": "", "item_id": ITEM}]}},
     422, "empty_id", "events[1].user_id"),
    ("POST", "/v1/events/batch", {"json": {"events": [{"user_id": "a", "item_id": "1" * 257}]}},
     422, "id_too_long", "events[0].item_id"),
    ("POST", "/v1/events/batch", {"content": b'{"events": [}'}, 400, "malformed_json", "body"),
    ("GET", "/v1/users/a/recommendations?n=1000", {}, 422, "n_out_of_range", "n"),
    ("GET", "/v1/users/a/recommendations?n=1.5", {}, 422, "n_out_of_range", "n"),
    ("GET", "/v1/users/%20/recommendations", {}, 422, "empty_id", "user_id"),
    ("GET", "/v1/users/" + "u" * 257 + "/recommendations", {}, 422, "id_too_long", "user_id"),
    ("DELETE", "/v1/users/" + "u" * 257, {}, 422, "id_too_long", "user_id"),
    ("GET", "/v1/nothing-here", {}, 404, "not_found", None),
    ("GET", "/v1/users//recommendations", {}, 404, "not_found", None),
    ("DELETE", "/v1/users/", {}, 404, "not_found", None),
    ("PUT", "/v1/events", {}, 405, "method_not_allowed", None),
    ("GET", "/v1/events", {}, 405, "method_not_allowed", None),
]


@pytest.mark.redis_modes("system")
@pytest.mark.parametrize("method,path,kwargs,status,code,field", BAD_REQUESTS,
                         ids=[f"{m} {p[:40]} {c}" for m, p, _, _, c, _ in BAD_REQUESTS])
async def test_bad_input_gets_a_clear_4xx(make_settings, engine, method, path, kwargs, status,
                                         code, field):
    kwargs = dict(kwargs)
    if "content" in kwargs:
        kwargs["headers"] = {"content-type": "application/json"}
    internal_errors = metric("cmnrec_errors_total", code="internal_error")
    errors = metric("cmnrec_errors_total", code=code)
    async with serving(make_settings(max_batch_size=10), engine) as client:
        response = await client.request(method, path, **kwargs)
        stored = await client.get("/v1/users/a/recommendations")
    assert response.status_code == status, response.text
    error = error_of(response)
    assert (error["code"], error["field"]) == (code, field), error
    assert stored.json()["source"] == "popularity"  # nothing was applied for user "a"
    assert metric("cmnrec_errors_total", code=code) == errors + 1
    assert metric("cmnrec_errors_total", code="internal_error") == internal_errors


@pytest.mark.allows_internal_error
@pytest.mark.redis_modes("system")
async def test_a_genuine_bug_answers_500_internal_error(make_settings, engine, caplog):
    async with serving(make_settings(), engine) as client:
        app = client.app  # type: ignore[attr-defined]

        @app.get("/bug")
        async def bug() -> None:
            raise RuntimeError("deliberate bug")

        response = await client.get("/bug")
    assert response.status_code == 500 and error_of(response)["code"] == "internal_error"
    assert "deliberate bug" in caplog.text


async def test_unknown_item_leaves_the_state_untouched(make_settings, engine):
    async with serving(make_settings(), engine) as client:
        await client.post("/v1/events", json={"user_id": "z", "item_id": ITEM})
        before = await client.get("/v1/users/z/recommendations")
        bad = await client.post("/v1/events", json={"user_id": "z", "item_id": "missing"})
        after = await client.get("/v1/users/z/recommendations")
    assert bad.status_code == 422
    assert before.json()["recommendations"] == after.json()["recommendations"]
    assert after.json()["position"] == 1


@pytest.mark.redis_modes("system")
async def test_redis_outage_answers_503_and_the_service_recovers(make_settings, engine):
    server = EmbeddedRedis()
    server.start()
    port = server.port
    try:
        settings = make_settings(redis_url=server.url, redis_timeout_seconds=0.5)
        async with serving(settings, engine) as client:
            event = {"user_id": "r", "item_id": ITEM}
            assert (await client.post("/v1/events", json=event)).status_code == 200
            server.stop()
            down = [await client.post("/v1/events", json=event),
                    await client.post("/v1/events/batch", json={"events": [event]}),
                    await client.get("/v1/users/r/recommendations"),
                    await client.delete("/v1/users/r")]
            not_ready = await client.get("/readyz")
            alive = await client.get("/healthz")
            server = EmbeddedRedis(port=port)
            server.start()
            back = await client.post("/v1/events", json=event)
            ready = await client.get("/readyz")
    finally:
        server.stop()
    for response in down:
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "state_store_unavailable"
    assert not_ready.status_code == 503 and alive.status_code == 200
    assert back.status_code == 200, back.text
    assert back.json()["position"] == 1  # a fresh server: the old state died with the old one
    assert ready.status_code == 200


@pytest.mark.redis_modes("system")
async def test_lifespan_refuses_to_start_without_redis_url(make_settings, engine):
    from service.http.app import ConfigurationError

    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        async with serving(make_settings(redis_url=None), engine):
            pass


def test_error_body_is_json_serialisable() -> None:
    from service.http.errors import field_path

    assert field_path(("body", "events", 3, "item_id")) == "events[3].item_id"
    assert field_path(("query", "n")) == "n"
    assert field_path(("body",)) == "body"
    assert json.dumps({"field": field_path(())}) == '{"field": null}'


async def test_event_answers_match_their_documented_schemas(make_settings, engine):
    """The event routes serialise with orjson, bypassing FastAPI's response model: the bodies must
    still be exactly EventOut / BatchOut (no extra field, None fields left out)."""
    from service.http.schemas import BatchOut, EventOut

    async with serving(make_settings(), engine) as client:
        single = await client.post("/v1/events?n=3", json={"user_id": "s", "item_id": "101",
                                                           "event_id": "s-1"})
        anonymous = await client.post("/v1/events?n=0", json={"user_id": "s", "item_id": "103"})
        batch = await client.post("/v1/events/batch?n=2", json={"events": [
            {"user_id": "s", "item_id": "102"}, {"user_id": "t", "item_id": "101",
                                                 "event_id": "t-1"}]})
    for response in (single, anonymous, batch):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
    for body in (single.json(), anonymous.json(), *batch.json()["results"]):
        model = EventOut.model_validate(body, strict=True)
        assert model.model_dump(exclude_none=True) == body
    assert "event_id" not in anonymous.json()
    assert BatchOut.model_validate(batch.json()).model_dump(exclude_none=True) == batch.json()
