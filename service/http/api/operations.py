"""GET /healthz (process up), GET /readyz (artifact loaded and Redis answering), GET /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.http.errors import STORE_CODES, error_response
from service.http.schemas import StatusOut
from service.ops import metrics
from service.ops.labels import ErrorCode, Route

router = APIRouter(tags=["operations"])


@router.get(Route.HEALTHZ.value, response_model=StatusOut, summary="Liveness")
async def healthz() -> StatusOut:
    return StatusOut(status="ok")


@router.get(Route.READYZ.value, response_model=StatusOut, summary="Readiness",
            responses={503: {"description": "not_ready: artifact not loaded;"
                                            " state_store_unavailable, state_store_read_only,"
                                            " state_store_full: Redis does not accept writes"}})
async def readyz(request: Request) -> JSONResponse | StatusOut:
    store = getattr(request.app.state, "store", None)
    if store is None:
        return error_response(ErrorCode.NOT_READY, "not ready: artifact unavailable", None)
    # A write probe, not a PING: a read-only replica or a full Redis answers PING but refuses
    # every event.
    reason = await store.repo.writable(f"{request.app.state.settings.key_prefix}:readyz")
    if reason is not None:
        code, message = STORE_CODES[reason]
        return error_response(code, f"not ready: {message}", None)
    return StatusOut(status="ready", checks={"artifact": True, "redis": True})


@router.get(Route.METRICS.value, summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render_latest()
    return Response(content=body, media_type=content_type)
