"""GET /v1/model: what is being served; POST /v1/admin/model/reload: swap in a new artifact."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from service.http.api.deps import EngineDep
from service.http.errors import ERROR_RESPONSES, ApiError
from service.http.schemas import ModelOut, ReloadOut
from service.ops.labels import ErrorCode, Route

log = logging.getLogger(__name__)

router = APIRouter(tags=["model"])


@router.get(Route.MODEL.value, response_model=ModelOut, summary="The served model")
async def get_model(engine: EngineDep) -> ModelOut:
    manifest, config = engine.manifest, engine.config
    return ModelOut(model_version=engine.version, model=config.model, rule=config.rule,
                    block_len=config.block_len, slots=config.slots,
                    chunk_times=list(manifest.chunk_times), num_items=config.num_items,
                    state_bytes=len(engine.initial_state()), config=config.to_dict(),
                    source=dict(manifest.source))


@router.post(Route.MODEL_RELOAD.value, response_model=ReloadOut, responses=ERROR_RESPONSES,
             summary="Load the artifact again (model rollover without a restart)")
async def reload(request: Request) -> ReloadOut:
    """Loads the artifact now in the configured artifact directory; requests in flight finish on
    the old model, the next ones use the new one; stored states of the old version are rebuilt
    when their user is next touched. Same as SIGHUP to a worker process."""
    from service.http.app import reload_model

    if getattr(request.app.state, "store", None) is None:
        raise ApiError(ErrorCode.NOT_READY, "the service is starting or stopping")
    try:
        previous, current = await reload_model(request.app)
    except Exception as error:  # noqa: BLE001 - whatever the loader raised, the old model stays
        log.warning("model reload failed: %s: %s", type(error).__name__, error)
        raise ApiError(ErrorCode.VALIDATION_ERROR, f"the artifact cannot be loaded ({error});"
                       " the old model keeps serving") from None
    return ReloadOut(previous_version=previous, model_version=current)
