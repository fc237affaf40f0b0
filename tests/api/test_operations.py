"""Health, readiness, metrics, OpenAPI, webhook signatures and the API's import weight."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from jobs.webhooks import sign_body, verify_signature
from tests.conftest import REPO_ROOT, ApiServer, free_port

pytestmark = pytest.mark.timeout(120)


def test_healthz_and_readyz(api_server: ApiServer) -> None:
    assert httpx.get(f"{api_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api_server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok", "s3": "ok"}


def test_readyz_names_redis_when_the_broker_is_down(start_api: Callable[..., ApiServer]) -> None:
    dead = start_api(MONKEYJOBS_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = httpx.get(f"{dead.url}/readyz", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["postgres"] == "ok" and body["checks"]["s3"] == "ok"
    assert body["checks"]["redis"] != "ok" and "redis" in body["detail"]
    # A job is still accepted: Postgres holds it and the reconciler sends it once Redis is back.
    accepted = httpx.post(
        f"{dead.url}/v1/jobs",
        headers=dead.headers,
        json={"documents": [{"uri": "s3://bucket/doc.pdf"}]},
        timeout=30,
    )
    assert accepted.status_code == 202


def test_metrics(api_server: ApiServer) -> None:
    httpx.post(
        f"{api_server.url}/v1/jobs", headers=api_server.headers, json={"documents": [{"uri": "s3://b/k.png"}]}
    ).raise_for_status()
    response = httpx.get(f"{api_server.url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    queued = [line for line in text.splitlines() if line.startswith('monkeyjobs_jobs{status="queued"}')]
    assert queued and float(queued[0].split()[-1]) >= 1
    for name in (
        'monkeyjobs_pages_total{outcome="done"}',
        'monkeyjobs_queue_depth{queue="ingest"}',
        'monkeyjobs_queue_depth{queue="gpu"}',
        'monkeyjobs_page_seconds_bucket{le="+Inf"}',
    ):
        assert name in text


def _schemas_without_descriptions(spec: dict) -> list[str]:
    missing = []
    for name, schema in spec["components"]["schemas"].items():
        for field, prop in schema.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}")
    return missing


def test_openapi_describes_every_field(api_server: ApiServer) -> None:
    spec = httpx.get(f"{api_server.url}/openapi.json").json()
    assert {"JobCreate", "JobCreateMultipart", "JobOut", "ProblemDetails"} <= set(
        spec["components"]["schemas"]
    )
    assert _schemas_without_descriptions(spec) == []
    create = spec["paths"]["/v1/jobs"]["post"]
    assert set(create["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    for path in spec["paths"].values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] != "path":
                    assert parameter.get("description"), parameter["name"]


def test_webhook_signature() -> None:
    body = b'{"id": "x", "status": "succeeded"}'
    signature = sign_body("secret", body)
    assert signature.startswith("sha256=") and len(signature) == len("sha256=") + 64
    assert verify_signature("secret", body, signature)
    assert not verify_signature("other", body, signature)
    assert not verify_signature("secret", body + b" ", signature)


def test_api_imports_without_torch() -> None:
    code = "import sys, api.app; api.app.create_app; print('torch' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"
