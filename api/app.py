"""The FastAPI application. `create_app()` is the factory uvicorn runs (`monkeyjobs api`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api import health, problems, routes
from api.schemas import ProblemDetails
from jobs.settings import Settings, get_settings
from jobs.storage import Storage

DESCRIPTION = """Batch OCR and document QA with the Mini-Monkey model.

Submit documents with `POST /v1/jobs`, poll `GET /v1/jobs/{id}`, read answers from
`GET /v1/jobs/{id}/results` or the per-document JSONL in S3. Every `/v1` route needs
`Authorization: Bearer <key>`. Errors are `application/problem+json` (RFC 9457)."""


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with the two request bodies of `POST /v1/jobs` and problem+json for every 422
    (FastAPI's own validation schema is replaced: our handler answers with a problem)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (*routes.EXTRA_SCHEMAS, ProblemDetails):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for path in schema["paths"].values():
        for operation in path.values():
            if "422" in operation.get("responses", {}):
                operation["responses"]["422"] = {"description": "Invalid request.", "content": problem}
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="monkeyjobs", version="0.1.0", description=DESCRIPTION)
    app.state.settings = settings
    app.state.storage = Storage(settings)
    app.state.metrics = health.metrics_registry(settings)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(routes.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
