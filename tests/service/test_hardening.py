"""Issue 12, probes 1-3 and 6-9: each reproduces what a probing user did and shows the coded answer.

Probes that turn Redis read-only, fill its memory or restart it use their own redis-server
(`own_redis`), stopped afterwards. Probes 4 (orphan workers) and 5 (a bad stream key) are in
tests/service/test_supervision.py; the model rollover under load in tests/service/test_rollover.py.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from service.http.app import ConfigurationError, create_app
from service.ops.redis_server import EmbeddedRedis
from service.state.domain import InvalidEvent, validate_id
from service.streams.records import parse_entry
from tests.service.helpers import metric, serving
from tests.service.test_api import ITEM, error_of

pytestmark = pytest.mark.anyio

KEY = "k" * 24  # an API key (clear text); the service keeps its sha256 only


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test alone (it is made read-only, full, or restarted)."""
    with EmbeddedRedis() as server:
        yield server


def no_internal_errors_since(before: float) -> bool:
    return metric("cmnrec_errors_total", code="internal_error") == before


# -- probe 1: every Redis error class answers a coded 503, and readiness says so ------------------------
async def test_read_only_and_full_redis_answer_coded_503_and_readiness_follows(
        make_settings, engine, own_redis):
    settings = make_settings(redis_url=own_redis.url, require_event_id=True)
    admin = redis.Redis.from_url(own_redis.url)
    internal = metric("cmnrec_errors_total", code="internal_error")
    try:
        async with serving(settings, engine) as client:
            ok = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                       "event_id": "e0"})
            assert ok.status_code == 200, ok.text
            admin.replicaof("127.0.0.1", "1")  # as during a failover: now a replica
            answers = [await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                             "event_id": f"r{i}"})
                       for i in range(5)]
            deleted = await client.delete("/v1/users/u")
            batch = await client.post("/v1/events/batch", json={"events": [
                {"user_id": "v", "item_id": ITEM, "event_id": "b1"}]})
            ready = await client.get("/readyz")
            read = await client.get("/v1/users/u/recommendations")  # reads still work
            admin.replicaof("no", "one")
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", "1")
            full = [await client.post("/v1/events", json={"user_id": f"f{i}", "item_id": ITEM,
                                                          "event_id": "e"}) for i in range(5)]
            full_ready = await client.get("/readyz")
            admin.config_set("maxmemory", "0")
            back = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                         "event_id": "e1"})
            back_ready = await client.get("/readyz")
    finally:
        admin.close()
    for response in [*answers, deleted, batch, ready]:
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "state_store_read_only", response.text
    assert answers[0].headers["retry-after"] == "1"
    assert read.status_code == 200
    for response in [*full, full_ready]:
        assert response.status_code == 503, response.text
        assert error_of(response)["code"] == "state_store_full", response.text
    assert back.status_code == 200 and back.json()["position"] == 2
    assert back_ready.status_code == 200
    assert no_internal_errors_since(internal)


async def test_redis_down_answers_state_store_unavailable(make_settings, engine, own_redis):
    settings = make_settings(redis_url=own_redis.url, redis_timeout_seconds=0.5)
    async with serving(settings, engine) as client:
        own_redis.stop()
        post = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM})
        ready = await client.get("/readyz")
    assert post.status_code == 503 and error_of(post)["code"] == "state_store_unavailable"
    assert ready.status_code == 503 and error_of(ready)["code"] == "state_store_unavailable"


# -- probe 2: lone surrogates, and keys of the wrong Redis type --------------------------------------------
SURROGATE_BODIES = [
    (b'{"user_id": "\\ud800", "item_id": "101", "event_id": "e"}', "user_id"),
    (b'{"user_id": "a", "item_id": "101", "event_id": "\\udfff"}', "event_id"),
    (b'{"user_id": "a\\ud800b", "item_id": "101", "event_id": "e"}', "user_id"),
]


@pytest.mark.parametrize("body,field", SURROGATE_BODIES)
async def test_lone_surrogates_are_refused_with_invalid_id(make_settings, engine, body, field):
    internal = metric("cmnrec_errors_total", code="internal_error")
    async with serving(make_settings(), engine) as client:
        single = await client.post("/v1/events", content=body,
                                   headers={"content-type": "application/json"})
        batch = await client.post("/v1/events/batch", content=b'{"events": [' + body + b"]}",
                                  headers={"content-type": "application/json"})
    assert single.status_code == 422, single.text
    assert (error_of(single)["code"], error_of(single)["field"]) == ("invalid_id", field)
    assert batch.status_code == 422, batch.text
    assert (error_of(batch)["code"], error_of(batch)["field"]) == ("invalid_id",
                                                                   f"events[0].{field}")
    assert no_internal_errors_since(internal)


async def test_a_key_of_the_wrong_type_is_refused_with_state_corrupt_until_deleted(
        make_settings, engine, redis_url, key_prefix):
    client_redis = redis.Redis.from_url(redis_url)
    internal = metric("cmnrec_errors_total", code="internal_error")
    try:
        client_redis.set(f"{key_prefix}:{{u}}:events", "str")  # the probe's SET
        client_redis.rpush(f"{key_prefix}:{{w}}:state", "a list")
        async with serving(make_settings(), engine) as client:
            post = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                         "event_id": "e1"})
            other = await client.post("/v1/events", json={"user_id": "w", "item_id": ITEM,
                                                          "event_id": "e1"})
            batch = await client.post("/v1/events/batch", json={"events": [
                {"user_id": "u", "item_id": ITEM, "event_id": "e2"}]})
            status = await client.get("/v1/users/u/events/e1")
            fine = await client.post("/v1/events", json={"user_id": "x", "item_id": ITEM,
                                                         "event_id": "e1"})
            deleted = await client.delete("/v1/users/u")
            again = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                          "event_id": "e1"})
    finally:
        client_redis.close()
    for response in (post, other, batch, status):
        assert response.status_code == 409, response.text
        assert error_of(response)["code"] == "state_corrupt"
    assert fine.status_code == 200
    assert deleted.json() == {"user_id": "u", "deleted": True}
    assert again.status_code == 200 and again.json()["position"] == 1
    assert no_internal_errors_since(internal)


# -- probe 3: the body limit is enforced before parsing ------------------------------------------------------
async def test_an_oversized_body_is_refused_before_it_is_read(make_settings, engine):
    limit = 64 * 1024
    chunk = b" " * 4096
    sent = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"events": ['
        for _ in range(10_000):  # 40 MB if it were all read
            sent += len(chunk)
            yield chunk

    async with serving(make_settings(max_body_bytes=limit), engine) as client:
        announced = await client.post("/v1/events/batch", content=b"[" + b" " * (limit + 1) + b"]",
                                      headers={"content-type": "application/json"})
        streamed = await client.post("/v1/events/batch", content=endless_body(),
                                     headers={"content-type": "application/json"})
        healthy = await client.get("/healthz")
    for response in (announced, streamed):
        assert response.status_code == 413, response.text
        assert (error_of(response)["code"], error_of(response)["field"]) == ("body_too_large",
                                                                             "body")
    assert sent <= limit + 2 * len(chunk)  # reading stopped at the limit
    assert healthy.status_code == 200


async def test_the_answer_size_is_bounded(make_settings, engine):
    async with serving(make_settings(max_answer_items=50), engine) as client:
        events = [{"user_id": "a", "item_id": ITEM, "event_id": f"e{i}"} for i in range(6)]
        too_big = await client.post("/v1/events/batch?n=10", json={"events": events})
        fits = await client.post("/v1/events/batch?n=5", json={"events": events[:5]})
    assert too_big.status_code == 422
    assert (error_of(too_big)["code"], error_of(too_big)["field"]) == ("answer_too_large", "n")
    assert fits.status_code == 200


# -- probe 6: one id rule for HTTP and streams; what can be written can be read and deleted ----------------
BAD_IDS = [("}x", "invalid_id"), ("{x", "invalid_id"), ("a\nb", "invalid_id"),
           ("tab\there", "invalid_id"), ("nul\x00", "invalid_id"), ("del\x7f", "invalid_id"),
           ("c1\x85", "invalid_id"), ("x/recommendations", "invalid_id"), ("\ud800", "invalid_id"),
           ("", "empty_id"), ("   ", "empty_id"), ("\u3000", "empty_id")]


@pytest.mark.parametrize("bad,code", BAD_IDS, ids=[repr(b) for b, _ in BAD_IDS])
async def test_one_id_rule_for_http_bodies_paths_and_stream_entries(make_settings, engine, bad,
                                                                   code):
    with pytest.raises(InvalidEvent) as refused:
        validate_id(bad, "user_id", 256)
    assert refused.value.code == code
    with pytest.raises(InvalidEvent) as stream_refused:  # the stream worker's parser
        parse_entry({b"user_id": bad.encode("utf-8", "surrogatepass"), b"item_id": b"101",
                     b"event_id": b"e"})
    assert stream_refused.value.field == "user_id"
    async with serving(make_settings(), engine) as client:
        body = json.dumps({"user_id": bad, "item_id": ITEM, "event_id": "e"})
        posted = await client.post("/v1/events", content=body.encode(),
                                   headers={"content-type": "application/json"})
        as_event = await client.post("/v1/events", content=json.dumps(
            {"user_id": "fine", "item_id": ITEM, "event_id": bad}).encode(),
            headers={"content-type": "application/json"})
    assert posted.status_code == 422 and error_of(posted)["code"] == code, posted.text
    assert as_event.status_code == 422 and error_of(as_event)["field"] == "event_id"


GOOD_IDS = ["plain", "with space", "ünïcødé-ユーザー", "emoji-🙂", "per%cent+plus?q=1&x#f", "42",
            "a.b:c;d'e\"f", "x" * 256]


async def test_every_id_that_can_be_written_can_be_read_and_deleted(make_settings, engine):
    from urllib.parse import quote

    async with serving(make_settings(), engine) as client:
        for user in GOOD_IDS:
            path = quote(user, safe="")
            posted = await client.post("/v1/events", json={"user_id": user, "item_id": ITEM,
                                                           "event_id": user})
            read = await client.get(f"/v1/users/{path}/recommendations")
            status = await client.get(f"/v1/users/{path}/events/{path}")
            deleted = await client.delete(f"/v1/users/{path}")
            gone = await client.get(f"/v1/users/{path}/recommendations")
            assert posted.status_code == 200, (user, posted.text)
            assert read.json()["source"] == "model" and read.json()["user_id"] == user, user
            assert status.json()["applied"] is True, user
            assert deleted.json() == {"user_id": user, "deleted": True}, user
            assert gone.json()["source"] == "popularity", user


async def test_delete_of_a_recommendations_path_deletes_nobody(make_settings, engine):
    async with serving(make_settings(), engine) as client:
        await client.post("/v1/events", json={"user_id": "x", "item_id": ITEM, "event_id": "e"})
        ambiguous = await client.delete("/v1/users/x/recommendations")
        still = await client.get("/v1/users/x/recommendations")
    assert ambiguous.status_code == 405 and error_of(ambiguous)["code"] == "method_not_allowed"
    assert still.json()["source"] == "model"


# -- probe 7: safe retries -----------------------------------------------------------------------------------
async def test_event_ids_are_required_by_default_and_their_status_can_be_asked(make_settings,
                                                                              engine):
    async with serving(make_settings(require_event_id=True), engine) as client:
        no_id = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM})
        no_id_batch = await client.post("/v1/events/batch", json={"events": [
            {"user_id": "u", "item_id": ITEM, "event_id": "a"}, {"user_id": "u", "item_id": ITEM}]})
        before = await client.get("/v1/users/u/events/e1")
        first = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                       "event_id": "e1"})
        retry = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                       "event_id": "e1"})
        after = await client.get("/v1/users/u/events/e1")
        bad = await client.get("/v1/users/u/events/a%0Ab")
    assert no_id.status_code == 422
    assert (error_of(no_id)["code"], error_of(no_id)["field"]) == ("event_id_required", "event_id")
    assert error_of(no_id_batch)["field"] == "events[1].event_id"
    assert before.json() == {"user_id": "u", "event_id": "e1", "applied": False, "window": 1000}
    assert first.json()["applied"] is True and retry.json()["applied"] is False
    assert retry.json()["position"] == 1
    assert after.json()["applied"] is True
    assert bad.status_code == 422 and error_of(bad)["code"] == "invalid_id"


async def test_after_a_redis_restart_reads_succeed_at_once_on_fresh_connections(
        make_settings, engine, own_redis):
    settings = make_settings(redis_url=own_redis.url)
    async with serving(settings, engine) as client:
        # fill the pool with several connections
        await asyncio.gather(*(client.post("/v1/events", json={
            "user_id": f"u{i}", "item_id": ITEM, "event_id": "e"}) for i in range(8)))
        port = own_redis.port
        own_redis.stop()
        own_redis.requested_port = port
        own_redis.start()  # same port, empty, every pooled connection now dead
        reads = [await client.get(f"/v1/users/u{i}/recommendations") for i in range(8)]
        writes = [await client.post("/v1/events", json={"user_id": f"u{i}", "item_id": ITEM,
                                                         "event_id": "e2"}) for i in range(8)]
    assert [r.status_code for r in reads] == [200] * 8  # retried once, on a fresh connection
    codes = [w.status_code for w in writes]
    # a write is never retried by the service; at most the first one meets a dead connection
    assert codes.count(200) >= 7 and set(codes) <= {200, 503}, codes


# -- probe 8: access control -----------------------------------------------------------------------------
async def test_api_keys_scopes_and_rate_limits(make_settings, engine, tmp_path):
    keys_file = tmp_path / "keys"
    import hashlib

    reader_key = "r" * 20
    keys_file.write_text(f"# name scopes key [rate]\nreader recommendations:read"
                         f" sha256:{hashlib.sha256(reader_key.encode()).hexdigest()}\n")
    settings = make_settings(api_keys=f"writer events:write {KEY} 2;admin admin {'a' * 16}",
                             api_keys_file=keys_file, rate_limit_burst=3)
    bearer = {"authorization": f"Bearer {KEY}"}
    event = {"user_id": "u", "item_id": ITEM, "event_id": "e"}
    async with serving(settings, engine) as client:
        anonymous = await client.post("/v1/events", json=event)
        unknown = await client.post("/v1/events", json=event, headers={"x-api-key": "n" * 20})
        written = await client.post("/v1/events", json=event, headers=bearer)
        wrong_scope = await client.get("/v1/users/u/recommendations", headers=bearer)
        read = await client.get("/v1/users/u/recommendations", headers={"x-api-key": reader_key})
        delete_by_reader = await client.delete("/v1/users/u", headers={"x-api-key": reader_key})
        burst = [await client.post("/v1/events", json=event, headers=bearer) for _ in range(4)]
        closed = {path: (await client.get(path)).status_code
                  for path in ("/metrics", "/docs", "/openapi.json", "/v1/model")}
        admin = {path: (await client.get(path, headers={"x-api-key": "a" * 16})).status_code
                 for path in ("/metrics", "/docs", "/openapi.json", "/v1/model")}
        open_probes = [(await client.get(p)).status_code for p in ("/healthz", "/readyz")]
    assert anonymous.status_code == 401 and error_of(anonymous)["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert unknown.status_code == 401
    assert written.status_code == 200
    assert wrong_scope.status_code == 403 and error_of(wrong_scope)["code"] == "forbidden"
    assert read.status_code == 200
    assert delete_by_reader.status_code == 403
    limited = [r for r in burst if r.status_code == 429]
    assert limited and error_of(limited[0])["code"] == "rate_limited"
    assert int(limited[0].headers["retry-after"]) >= 1
    assert closed == {path: 401 for path in closed}
    assert admin == {path: 200 for path in admin}
    assert open_probes == [200, 200]


def test_no_keys_on_a_public_address_refuses_to_start(make_settings):
    with pytest.raises(ConfigurationError, match="no API keys"):
        create_app(make_settings(host="0.0.0.0"))
    create_app(make_settings(host="0.0.0.0", allow_anonymous=True))  # on purpose
    create_app(make_settings(host="0.0.0.0", api_keys=f"w events:write {KEY}"))
    create_app(make_settings(host="127.0.0.1"))  # loopback: open, with a warning
    with pytest.raises(ConfigurationError, match="unknown scope"):
        create_app(make_settings(api_keys=f"w events:delete {KEY}"))
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(make_settings(api_keys="w events:write short"))


def test_worker_metrics_listen_on_loopback_by_default(make_settings):
    assert make_settings().worker_metrics_host == "127.0.0.1"


# -- probe 9: the OpenAPI document says what is enforced ----------------------------------------------------
async def test_openapi_states_the_enforced_limits_and_timestamp_false_is_refused(make_settings,
                                                                                engine):
    async with serving(make_settings(max_n=50, max_id_length=64, max_batch_size=7,
                                     require_event_id=True),
                       engine) as client:
        spec = (await client.get("/openapi.json")).json()
        false_ts = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                         "event_id": "e", "timestamp": False})
        string_ts = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                          "event_id": "e", "timestamp": "1"})
        int_ts = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEM,
                                                       "event_id": "e", "timestamp": 5})
    n = next(p for p in spec["paths"]["/v1/events"]["post"]["parameters"] if p["name"] == "n")
    assert n["schema"]["maximum"] == 50 and n["schema"]["minimum"] == 0
    user_id = spec["components"]["schemas"]["EventIn"]["properties"]["user_id"]
    assert user_id["maxLength"] == 64 and user_id["minLength"] == 1 and "pattern" in user_id
    assert "event_id" in spec["components"]["schemas"]["EventIn"]["required"]
    assert spec["components"]["schemas"]["BatchIn"]["properties"]["events"]["maxItems"] == 7
    path_user = next(p for p in spec["paths"]["/v1/users/{user_id}"]["delete"]["parameters"]
                     if p["name"] == "user_id")
    assert path_user["schema"]["maxLength"] == 64
    assert false_ts.status_code == 422 and error_of(false_ts)["field"] == "timestamp"
    assert string_ts.status_code == 422
    assert int_ts.status_code == 200


async def test_a_503_during_a_stall_is_resolved_by_asking_then_retrying_once(
        make_settings, engine, own_redis):
    """The probe's DEBUG SLEEP (here SIGSTOP/SIGCONT of the redis-server: the embedded one has no
    DEBUG command): the POST times out (503) while Redis stalls; whether it committed or not,
    asking GET .../events/{event_id} and retrying with the same id applies it once."""
    import os
    import signal

    settings = make_settings(redis_url=own_redis.url, redis_timeout_seconds=0.3)
    event = {"user_id": "s", "item_id": ITEM, "event_id": "during-stall"}
    async with serving(settings, engine) as client:
        assert (await client.post("/v1/events", json={**event, "event_id": "e0"})
                ).status_code == 200
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            stalled = await client.post("/v1/events", json=event)
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        status = (await client.get("/v1/users/s/events/during-stall")).json()
        retried = await client.post("/v1/events", json=event)
        snapshot = await client.app.state.store.snapshot("s")  # type: ignore[attr-defined]
    assert stalled.status_code == 503, stalled.text
    assert error_of(stalled)["code"] == "state_store_unavailable"
    assert retried.status_code == 200
    assert retried.json()["applied"] is (not status["applied"])  # applied exactly once
    assert snapshot.position == 2 and snapshot.event_ids == ["e0", "during-stall"]


@pytest.mark.parametrize("error,reason", [
    ("ReadOnlyError", "read_only"), ("OutOfMemoryError", "full"),
    ("BusyLoadingError", "unavailable"), ("ClusterDownError", "unavailable"),
    ("TryAgainError", "unavailable"), ("MasterDownError", "unavailable"),
    ("NoPermissionError", "unavailable"), ("AuthenticationError", "unavailable"),
    ("ExecAbortError", "unavailable"), ("ConnectionError", "unavailable"),
    ("TimeoutError", "unavailable")])
def test_every_redis_error_class_has_a_reason(error, reason):
    """The classes redis-py parses replies into (their prefix stripped from the message)."""
    import redis.exceptions

    from service.state.repo import unavailable_reason

    assert unavailable_reason(getattr(redis.exceptions, error)("message")) == reason


@pytest.mark.parametrize("message,reason", [
    ("BUSY Redis is busy running a script", "unavailable"),
    ("MISCONF Errors writing to the AOF file", "unavailable"),
    ("NOREPLICAS Not enough good replicas to write", "unavailable"),
    ("Error in script: OOM command not allowed", "full"),
    ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
    ("ERR unknown command", None)])
def test_reply_prefixes_without_a_class_have_a_reason(message, reason):
    from redis.exceptions import ResponseError

    from service.state.repo import unavailable_reason

    assert unavailable_reason(ResponseError(message)) == reason
