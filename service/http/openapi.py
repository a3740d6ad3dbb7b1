"""The OpenAPI document says what the service enforces: the limits that come from Settings (largest
n, id lengths, batch size, body size, whether event_id is required) are written into the generated
schema, with the id rule (service/state/domain.py validate_id) as a pattern."""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.ops.settings import Settings

ID_FIELDS = ("user_id", "item_id", "event_id")
# validate_id as an ECMA-262 pattern: no control characters, '{', '}', '/'; not all blank.
# (Lone surrogates cannot be written in a pattern; JSON text that holds one is refused the same.)
_ID_CHAR = r"[^{}/\u0000-\u001f\u007f-\u009f]"
ID_PATTERN = rf"^{_ID_CHAR}*[^{{}}/\s\u0000-\u001f\u007f-\u009f]{_ID_CHAR}*$"


def documented_limits(app: FastAPI, settings: Settings) -> None:
    """Replace app.openapi by one that adds the configured limits to the generated document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary,
                             routes=app.routes)
        _add_limits(schema, settings)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _id_schema(target: dict[str, Any], settings: Settings) -> None:
    target.update(maxLength=settings.max_id_length, minLength=1, pattern=ID_PATTERN)


def _add_limits(schema: dict[str, Any], settings: Settings) -> None:
    components = schema.get("components", {}).get("schemas", {})
    if settings.require_event_id and "EventIn" in components:
        required = components["EventIn"].setdefault("required", [])
        if "event_id" not in required:
            required.append("event_id")
    event_in = components.get("EventIn", {}).get("properties", {})
    for name in ID_FIELDS:
        prop = event_in.get(name)
        if prop is None:
            continue
        for variant in prop.get("anyOf", [prop]):
            if variant.get("type") == "string":
                _id_schema(variant, settings)
    batch = components.get("BatchIn", {}).get("properties", {}).get("events")
    if batch is not None:
        batch["maxItems"] = settings.max_batch_size
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for param in operation.get("parameters", []):
                if param.get("name") == "n" and param.get("in") == "query":
                    param["schema"]["maximum"] = settings.max_n
                    param["description"] = (f"{param.get('description', '')}; at most"
                                            f" {settings.max_n}, and n x events at most"
                                            f" {settings.max_answer_items}")
                if param.get("in") == "path" and param.get("name") in ID_FIELDS:
                    _id_schema(param["schema"], settings)
            body = operation.get("requestBody")
            if body is not None:
                body["description"] = (f"at most {settings.max_body_bytes} bytes"
                                       " (settings.max_body_bytes)")
