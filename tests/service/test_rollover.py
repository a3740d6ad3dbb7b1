"""Model rollover without a restart (issue 12): under a bounded load of events with ids the artifact
is swapped (POST /v1/admin/model/reload, or SIGHUP); no 5xx, every acknowledged event applied
exactly once, every state touched afterwards carries the new version, the rebuilds counted."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time

import pytest

from model.manifest import Manifest
from tests.service.helpers import metric, serving, tiny_vocab

pytestmark = pytest.mark.anyio

ITEMS = tiny_vocab().ids[1:]
TASKS, USERS_PER_TASK, EVENTS_PER_USER = 6, 2, 12  # 144 events, a few seconds


def version_of(artifact) -> str:
    return str(Manifest.load(artifact).model_version)


@pytest.mark.parametrize("coalesce", [False, True], ids=["one-apply-each", "coalesced"])
async def test_rollover_under_load_loses_nothing_and_moves_every_touched_state(
        make_settings, artifacts, tmp_path, coalesce):
    live = tmp_path / "artifact"
    shutil.copytree(artifacts["main"], live)
    old, new = version_of(artifacts["main"]), version_of(artifacts["other"])
    assert old != new
    settings = make_settings(artifact_dir=live, coalesce=coalesce)
    rebuilds = metric("cmnrec_state_rebuilds_total", reason="version_mismatch")
    reloads = metric("cmnrec_model_reloads_total")
    answers: list[tuple[float, float, str, int, dict]] = []  # start, end, user, status, body
    acknowledged: dict[str, list[str]] = {}
    swapped = asyncio.Event()
    swap_done_at: list[float] = []

    async with serving(settings) as client:
        async def load(task: int) -> None:
            users = [f"r{task}-{u}" for u in range(USERS_PER_TASK)]
            for k in range(EVENTS_PER_USER):
                for user in users:
                    event = {"user_id": user, "item_id": ITEMS[(task + 3 * k) % len(ITEMS)],
                             "event_id": f"{user}-{k}"}
                    for _attempt in range(20):  # a 409/503 is retried with the same event id
                        started = time.monotonic()
                        response = await client.post("/v1/events?n=3", json=event)
                        answers.append((started, time.monotonic(), user, response.status_code,
                                        response.json()))
                        if response.status_code == 200:
                            acknowledged.setdefault(user, []).append(event["event_id"])
                            break
                if k == EVENTS_PER_USER // 3 and task == 0:
                    swapped.set()

        async def swap() -> None:
            await swapped.wait()
            shutil.rmtree(live)
            shutil.copytree(artifacts["other"], live)  # the deploy: a new artifact in place
            reply = await client.post("/v1/admin/model/reload")
            swap_done_at.append(time.monotonic())
            assert reply.status_code == 200, reply.text
            assert reply.json() == {"previous_version": old, "model_version": new}

        await asyncio.gather(swap(), *(load(t) for t in range(TASKS)))
        # touch every user once more: the states must now be of the new version
        touched = {user: await client.get(f"/v1/users/{user}/recommendations")
                   for user in acknowledged}
        snapshots = {user: await client.app.state.store.snapshot(user)  # type: ignore[attr-defined]
                     for user in acknowledged}

    statuses = [status for _, _, _, status, _ in answers]
    assert not [s for s in statuses if s >= 500], statuses
    versions_before = {body["model_version"] for start, end, _, status, body in answers
                       if status == 200 and end < swap_done_at[0]}
    versions_after = {body["model_version"] for start, _, _, status, body in answers
                      if status == 200 and start > swap_done_at[0]}
    assert versions_before == {old} or versions_before == {old, new}
    assert versions_after == {new}  # every request started after the swap used the new model
    assert len(acknowledged) == TASKS * USERS_PER_TASK
    for user, event_ids in acknowledged.items():
        snap = snapshots[user]
        assert len(event_ids) == EVENTS_PER_USER
        assert sorted(snap.event_ids) == sorted(event_ids), user  # each applied exactly once
        assert snap.position == EVENTS_PER_USER == len(snap.recent_items), user
        assert snap.model_version == new, user
        assert touched[user].json()["model_version"] == new
    assert metric("cmnrec_model_reloads_total") == reloads + 1
    assert metric("cmnrec_state_rebuilds_total", reason="version_mismatch") - rebuilds >= len(
        acknowledged)  # the old states were rebuilt lazily, each counted


async def test_sighup_reloads_the_model(make_settings, artifacts, tmp_path):
    live = tmp_path / "artifact"
    shutil.copytree(artifacts["main"], live)
    async with serving(make_settings(artifact_dir=live)) as client:
        # the lifespan installed the handler (on the main thread): SIGHUP no longer kills
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None)
        before = (await client.get("/v1/model")).json()["model_version"]
        shutil.rmtree(live)
        shutil.copytree(artifacts["other"], live)
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (await client.get("/v1/model")).json()["model_version"] == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload the model"
            await asyncio.sleep(0.05)
        posted = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEMS[0],
                                                       "event_id": "e"})
    assert before == version_of(artifacts["main"])
    assert posted.json()["model_version"] == version_of(artifacts["other"])
    assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None)  # removed on shutdown


async def test_a_broken_artifact_is_refused_and_the_old_model_keeps_serving(make_settings,
                                                                           artifacts, tmp_path):
    live = tmp_path / "artifact"
    shutil.copytree(artifacts["main"], live)
    async with serving(make_settings(artifact_dir=live)) as client:
        (live / "manifest.json").write_text("{not json")
        refused = await client.post("/v1/admin/model/reload")
        posted = await client.post("/v1/events", json={"user_id": "u", "item_id": ITEMS[0],
                                                       "event_id": "e"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "validation_error"
    assert posted.json()["model_version"] == version_of(artifacts["main"])
