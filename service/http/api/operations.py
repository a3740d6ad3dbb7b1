"""GET /healthz (process up), GET /readyz (artifact loaded and Redis answering), GET /metrics."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.http.errors import error_response
from service.http.schemas import StatusOut
from service.ops import metrics
from service.ops.labels import ErrorCode, Route

router = APIRouter(tags=["operations"])


@router.get(Route.HEALTHZ.value, response_model=StatusOut, summary="Liveness")
async def healthz() -> StatusOut:
    return StatusOut(status="ok")


@router.get(Route.READYZ.value, response_model=StatusOut, summary="Readiness",
            responses={503: {"description": "not_ready: artifact not loaded or Redis down"}})
async def readyz(request: Request) -> JSONResponse | StatusOut:
    store = getattr(request.app.state, "store", None)
    checks = {"artifact": store is not None, "redis": store is not None and await store.ping()}
    if not all(checks.values()):
        failed = ", ".join(name for name, ok in checks.items() if not ok)
        code = ErrorCode.NOT_READY if not checks["artifact"] else ErrorCode.STATE_STORE_UNAVAILABLE
        return error_response(code, f"not ready: {failed} unavailable", None)
    return StatusOut(status="ready", checks=checks)


@router.get(Route.METRICS.value, summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render_latest()
    return Response(content=body, media_type=content_type)
