"""A second process for tests/service/test_state_cache.py: one StateStore with its own state cache,
driven line by line over stdin ("user item event_id" applies one event; EOF stops) and answering
one JSON line per event: position, applied, and this process's state-cache counters.

    python -m tests.service.cache_process ARTIFACT_DIR REDIS_URL KEY_PREFIX
"""
from __future__ import annotations

import asyncio
import json
import sys


async def main(artifact: str, redis_url: str, prefix: str) -> None:
    from model.engine import StepEngine
    from service.ops.settings import Settings
    from service.state.domain import Event
    from tests.service.helpers import metric, open_store

    settings = Settings(artifact_dir=artifact, redis_url=redis_url, key_prefix=prefix,
                        state_cache_users=100)
    engine = StepEngine.load(artifact)
    loop = asyncio.get_running_loop()
    async with open_store(settings, engine) as store:
        print(json.dumps({"ready": True}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            user, item, event_id = line.split()
            result = await store.apply(Event(user, item, event_id))
            print(json.dumps({
                "position": result.position, "applied": result.applied,
                **{k: metric("cmnrec_state_cache_total", result=k) for k in ("hit", "stale")}}),
                flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
