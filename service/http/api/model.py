"""GET /v1/model: what is being served."""
from __future__ import annotations

from fastapi import APIRouter

from service.http.api.deps import EngineDep
from service.http.schemas import ModelOut
from service.ops.labels import Route

router = APIRouter(tags=["model"])


@router.get(Route.MODEL.value, response_model=ModelOut, summary="The served model")
async def get_model(engine: EngineDep) -> ModelOut:
    manifest, config = engine.manifest, engine.config
    return ModelOut(model_version=engine.version, model=config.model, rule=config.rule,
                    block_len=config.block_len, slots=config.slots,
                    chunk_times=list(manifest.chunk_times), num_items=config.num_items,
                    state_bytes=len(engine.initial_state()), config=config.to_dict(),
                    source=dict(manifest.source))
