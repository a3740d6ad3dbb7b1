"""Helpers for the service tests: tiny exported models and an in-process client of the app."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from data.dataset import ItemVocab

NUM_ITEMS = 40  # catalogue incl. padding
TINY_DIMS = dict(embed_dim=8, hidden_dim=12, mem_width=6, read_heads=2, attn_dim=5)


def tiny_vocab(num_items: int = NUM_ITEMS) -> ItemVocab:
    items = [str(100 + i) for i in range(1, num_items)]
    return ItemVocab.from_items(items, titles={"101": "The First Movie (1995)",
                                               "102": "Second Movie (1996)"})


def make_artifact(root: Path, name: str, *, model: str = "cmnrec", rule: str = "tsc",
                  block_len: int = 5, slots: int = 2, seed: int = 0,
                  vocab: ItemVocab | None = None, counts: Sequence[int] | None = None,
                  **dims: Any) -> Path:
    """Export a random-weight model (no training) and return its artifact directory."""
    import torch

    from model.config import ModelConfig
    from model.network import build_model
    from training.checkpoint import save_run
    from training.export_run import export_run

    vocab = vocab or tiny_vocab()
    config = ModelConfig(num_items=len(vocab), model=model, rule=rule, block_len=block_len,
                         slots=slots, **{**TINY_DIMS, **dims})
    if counts is None:
        counts = [0] + [(7 * i) % 11 + 1 for i in range(1, len(vocab))]
    torch.manual_seed(seed)
    run_dir = save_run(root / "runs" / name, build_model(config), vocab,
                       np.asarray(counts, dtype=np.int64), {"seed": seed}).parent
    return Path(export_run(run_dir, root / "artifacts" / name))


@asynccontextmanager
async def serving(settings: Any, engine: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, and an httpx client talking to it in-process."""
    from service.http.app import create_app

    app = create_app(settings, engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cmnrec.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@asynccontextmanager
async def open_store(settings: Any, engine: Any) -> AsyncIterator[Any]:
    """A StateStore on its own Redis pool, closed afterwards."""
    from service.state.connection import open_redis
    from service.state.store import StateStore

    redis = open_redis(settings.redis_url, settings)
    try:
        yield StateStore.from_settings(redis, engine, settings)
    finally:
        await redis.aclose()


def sync_redis(url: str) -> Any:
    """A redis-py client of `url` (a RedisCluster for a cluster URL)."""
    from service.state.cluster import open_sync

    return open_sync(url)


def async_redis(url: str) -> Any:
    """A redis.asyncio client of `url` (a RedisCluster for a cluster URL), bytes replies."""
    import redis.asyncio as aioredis

    from service.state.cluster import is_cluster_url, plain_url

    if is_cluster_url(url):
        return aioredis.RedisCluster.from_url(plain_url(url))
    return aioredis.Redis.from_url(url)


def replay(engine: Any, items: Sequence[str]) -> bytes:
    """The state blob after stepping external item ids one by one from the initial state."""
    state = engine.initial_state()
    for item in items:
        state = engine.apply([engine.vocab.encode(item)], [state]).states[0]
    return state


def metric(name: str, **labels: str) -> float:
    """Current value of a metric sample in this process (0 when absent)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels or None)
    return float(value or 0.0)
