"""Request coalescing (service/http/coalescer.py): concurrent POST /v1/events go out as one apply_batch,
with the same results as one by one, per-user order kept, errors confined to their batch."""
from __future__ import annotations

import asyncio

import pytest

from service.http.coalescer import CoalescerClosed, EventCoalescer
from service.state.domain import Event, UnknownItemError
from tests.service.helpers import open_store, replay, serving

pytestmark = pytest.mark.anyio

ITEMS = [str(100 + i) for i in range(1, 40)]


def user_items(user: int, count: int) -> list[str]:
    return [ITEMS[(5 * user + 3 * k) % len(ITEMS)] for k in range(count)]


async def post_users_concurrently(client, users: int, per_user: int, n: int) -> dict[str, list]:
    """Every user posts its events one after another; the users run concurrently."""

    async def one_user(user: int) -> list[dict]:
        answers = []
        for k, item in enumerate(user_items(user, per_user)):
            response = await client.post(f"/v1/events?n={n}", json={
                "user_id": f"u{user}", "item_id": item, "event_id": f"u{user}-{k}"})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        return answers

    results = await asyncio.gather(*(one_user(u) for u in range(users)))
    return {f"u{u}": answers for u, answers in enumerate(results)}


async def test_concurrent_requests_are_coalesced_with_the_same_results_as_one_by_one(
        make_settings, engine):
    users, per_user = 16, 5
    async with serving(make_settings(coalesce=True), engine) as client:
        coalescer = client.app.state.coalescer  # type: ignore[attr-defined]
        assert isinstance(coalescer, EventCoalescer)
        coalesced = await post_users_concurrently(client, users, per_user, n=3)
        batches, events = coalescer.batches, coalescer.events
        snapshots = {u: await client.app.state.store.snapshot(u)  # type: ignore[attr-defined]
                     for u in coalesced}
    assert events == users * per_user
    assert batches < events  # requests really were sent together

    # Reference: the same events, one request at a time, with coalescing off (another prefix).
    async with serving(make_settings(coalesce=False), engine) as client:
        assert client.app.state.coalescer is None  # type: ignore[attr-defined]
        for user in range(users):
            for k, item in enumerate(user_items(user, per_user)):
                response = await client.post("/v1/events?n=3", json={
                    "user_id": f"ref{user}", "item_id": item, "event_id": f"u{user}-{k}"})
                reference = response.json()
                answer = coalesced[f"u{user}"][k]
                assert answer["position"] == reference["position"] == k + 1
                assert answer["chunk_time"] == reference["chunk_time"]
                assert ([r["item_id"] for r in answer["recommendations"]]
                        == [r["item_id"] for r in reference["recommendations"]])
                assert [r["score"] for r in answer["recommendations"]] == pytest.approx(
                    [r["score"] for r in reference["recommendations"]], rel=1e-5, abs=1e-6)
                assert "queue" not in reference["latency_ms"]
                assert answer["latency_ms"]["queue"] >= 0
                assert answer["latency_ms"]["total"] >= answer["latency_ms"]["queue"]
    for user in range(users):
        snap = snapshots[f"u{user}"]
        assert snap.recent_items == user_items(user, per_user)
        assert snap.state == replay(engine, snap.recent_items)


async def test_one_users_concurrent_submissions_keep_their_order(make_settings, engine):
    settings = make_settings(coalesce=True)
    async with open_store(settings, engine) as store:
        coalescer = EventCoalescer(store, max_batch=4)
        mine = [Event("olga", ITEMS[(7 * k) % len(ITEMS)], event_id=f"o-{k}") for k in range(30)]
        others = [Event(f"x{k % 5}", ITEMS[k % len(ITEMS)]) for k in range(30)]
        interleaved = [e for pair in zip(mine, others) for e in pair]
        outcomes = await asyncio.gather(*(coalescer.submit(e, n=2) for e in interleaved))
        await coalescer.aclose()
        snap = await store.snapshot("olga")
    assert coalescer.events == 60 and coalescer.batches == 15  # 60 events, at most 4 per call
    assert all(o.batch_size <= 4 for o in outcomes)
    assert [o.result.position for o in outcomes[0::2]] == list(range(1, 31))
    assert snap.recent_items == [e.item_id for e in mine]
    assert snap.event_ids == [e.event_id for e in mine]
    assert snap.state == replay(engine, snap.recent_items)


async def test_a_repeated_event_id_in_one_batch_is_applied_once(make_settings, engine):
    async with open_store(make_settings(coalesce=True), engine) as store:
        coalescer = EventCoalescer(store)
        event = Event("pia", ITEMS[0], event_id="same")
        first, second = await asyncio.gather(coalescer.submit(event), coalescer.submit(event))
        await coalescer.aclose()
        snap = await store.snapshot("pia")
    assert coalescer.batches == 1
    assert (first.result.applied, second.result.applied) == (True, False)
    assert first.result.position == second.result.position == snap.position == 1


async def test_an_error_in_one_batch_reaches_only_its_requests(make_settings, engine):
    async with open_store(make_settings(coalesce=True), engine) as store:
        coalescer = EventCoalescer(store, max_batch=2)
        # Submitted all at once: batches [a0, a1], [missing, b0], [c0, c1]. The route checks items
        # itself, so an unknown item only stands in here for any error apply_batch raises.
        events = [Event("a", ITEMS[0]), Event("a", ITEMS[1]), Event("b", "missing"),
                  Event("b", ITEMS[2]), Event("c", ITEMS[3]), Event("c", ITEMS[4])]
        outcomes = await asyncio.gather(*(coalescer.submit(e) for e in events),
                                        return_exceptions=True)
        later = await coalescer.submit(Event("b", ITEMS[5]))  # the drain task still works
        await coalescer.aclose()
        snaps = {u: await store.snapshot(u) for u in "abc"}
    assert coalescer.batches == 4
    assert isinstance(outcomes[2], UnknownItemError) and outcomes[3] is outcomes[2]
    assert [o.result.position for o in (outcomes[0], outcomes[1], outcomes[4], outcomes[5])] \
        == [1, 2, 1, 2]
    assert later.result.position == 1  # b's batch applied nothing
    assert snaps["a"].recent_items == ITEMS[:2] and snaps["c"].recent_items == ITEMS[3:5]
    assert snaps["b"].recent_items == [ITEMS[5]]


async def test_a_cancelled_request_does_not_break_the_drain(make_settings, engine):
    async with open_store(make_settings(coalesce=True), engine) as store:
        coalescer = EventCoalescer(store)
        tasks = [asyncio.create_task(coalescer.submit(Event("d", ITEMS[k]))) for k in range(3)]
        tasks[1].cancel()  # before dispatch: its event is never applied
        done = await asyncio.gather(*tasks, return_exceptions=True)
        in_flight = asyncio.create_task(coalescer.submit(Event("e", ITEMS[0])))
        await asyncio.sleep(0.001)
        in_flight.cancel()  # possibly while its batch is in flight
        after = await coalescer.submit(Event("d", ITEMS[5]))
        await coalescer.aclose()
        snap = await store.snapshot("d")
    assert isinstance(done[1], asyncio.CancelledError)
    assert [done[0].result.position, done[2].result.position] == [1, 2]
    assert after.result.position == 3
    assert snap.recent_items == [ITEMS[0], ITEMS[2], ITEMS[5]]


async def test_shutdown_answers_everything_queued_then_refuses(make_settings, engine):
    async with open_store(make_settings(coalesce=True), engine) as store:
        coalescer = EventCoalescer(store, max_batch=3)
        tasks = [asyncio.create_task(coalescer.submit(Event(f"s{k % 4}", ITEMS[k])))
                 for k in range(20)]
        await asyncio.sleep(0)  # every submit queued, nothing answered yet
        await coalescer.aclose()
        assert all(t.done() and not t.cancelled() and t.exception() is None for t in tasks)
        with pytest.raises(CoalescerClosed):
            await coalescer.submit(Event("s0", ITEMS[0]))
        positions = [(await store.snapshot(f"s{u}")).position for u in range(4)]
    assert positions == [5, 5, 5, 5]


async def test_app_lifespan_creates_and_stops_the_coalescer(make_settings, engine):
    async with serving(make_settings(coalesce=True, coalesce_max_batch=8), engine) as client:
        app = client.app  # type: ignore[attr-defined]
        assert app.state.coalescer.max_batch == 8
        bad = await client.post("/v1/events", json={"user_id": "q", "item_id": "missing"})
        ok = await client.post("/v1/events", json={"user_id": "q", "item_id": ITEMS[0]})
    assert app.state.coalescer is None and app.state.store is None
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_item"
    assert bad.json()["error"]["field"] == "item_id"
    assert ok.status_code == 200 and ok.json()["position"] == 1


async def test_coalescing_off_applies_each_request_on_its_own(make_settings, engine):
    async with serving(make_settings(coalesce=False), engine) as client:
        answers = await asyncio.gather(*(client.post("/v1/events", json={
            "user_id": f"f{k % 3}", "item_id": ITEMS[k]}) for k in range(9)))
        bad = await client.post("/v1/events", json={"user_id": "f0", "item_id": "missing"})
        snaps = [await client.app.state.store.snapshot(f"f{u}")  # type: ignore[attr-defined]
                 for u in range(3)]
    assert all(a.status_code == 200 for a in answers)
    assert all("queue" not in a.json()["latency_ms"] for a in answers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_item"
    assert [s.position for s in snaps] == [3, 3, 3]


class RacingEngine:
    """The real engine; before every step another connection bumps one user's pos key, as a
    writer in another process committing that user meanwhile would. That user's compare-and-set
    is refused on every attempt; the other users are untouched."""

    def __init__(self, engine, redis_url: str, pos_key: str) -> None:
        import redis

        self._engine, self._pos_key = engine, pos_key
        self._client = redis.Redis.from_url(redis_url)

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def apply(self, *args, **kwargs):
        self._client.incr(self._pos_key)
        return self._engine.apply(*args, **kwargs)

    def apply_sequences(self, *args, **kwargs):
        self._client.incr(self._pos_key)
        return self._engine.apply_sequences(*args, **kwargs)

    def close(self) -> None:
        self._client.close()


@pytest.mark.parametrize("n", [0, 2])
async def test_one_users_conflict_fails_only_that_users_requests(make_settings, engine,
                                                                 redis_url, n):
    from service.state.domain import StateConflictError
    from service.state.keys import KeySchema

    settings = make_settings(coalesce=True, cas_retry_limit=3)
    racing = RacingEngine(engine, redis_url, KeySchema(settings.key_prefix).user("b").pos)
    try:
        async with open_store(settings, racing) as store:
            coalescer = EventCoalescer(store)
            events = [Event("a", ITEMS[0], "a-0"), Event("b", ITEMS[1], "b-0"),
                      Event("c", ITEMS[2], "c-0"), Event("a", ITEMS[3], "a-1"),
                      Event("b", ITEMS[4], "b-1")]
            outcomes = await asyncio.gather(*(coalescer.submit(e, n=n) for e in events),
                                            return_exceptions=True)
            await coalescer.aclose()
            direct = await store.apply_each([Event("c", ITEMS[5], "c-1"),
                                             Event("b", ITEMS[6], "b-2")], n=n)
            with pytest.raises(StateConflictError):  # apply_batch raises, after committing c
                await store.apply_batch([Event("b", ITEMS[7], "b-3"),
                                         Event("c", ITEMS[8], "c-2")], n=n)
            snaps = {u: await store.snapshot(u) for u in "abc"}
    finally:
        racing.close()
    assert coalescer.batches == 1  # all five in one apply_each
    assert [o.result.position for o in (outcomes[0], outcomes[2], outcomes[3])] == [1, 1, 2]
    assert all(len(o.result.recommendations) == n for o in (outcomes[0], outcomes[2]))
    assert isinstance(outcomes[1], StateConflictError) and outcomes[1].user_id == "b"
    assert outcomes[4] is outcomes[1]
    assert direct[0].position == 2 and isinstance(direct[1], StateConflictError)
    assert snaps["a"].recent_items == [ITEMS[0], ITEMS[3]]
    assert snaps["c"].recent_items == [ITEMS[2], ITEMS[5], ITEMS[8]]
    assert snaps["c"].state == replay(engine, snaps["c"].recent_items)
    assert snaps["b"].state is None and snaps["b"].recent_items == []  # never committed
