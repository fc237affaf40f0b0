"""Refusals: problem+json shape, auth, 413/415/422."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.api.test_jobs import png_bytes, submit
from tests.conftest import ApiServer

pytestmark = pytest.mark.timeout(120)


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert body["instance"] == response.request.url.path
    return body


def test_missing_or_wrong_key_is_401(api_server: ApiServer) -> None:
    assert_problem(httpx.get(f"{api_server.url}/v1/jobs"), 401)
    response = httpx.get(f"{api_server.url}/v1/jobs", headers={"Authorization": "Bearer mk_nope_nope"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_unknown_route_and_bad_id_are_problems(api_server: ApiServer) -> None:
    assert_problem(httpx.get(f"{api_server.url}/v1/nothing", headers=api_server.headers), 404)
    body = assert_problem(httpx.get(f"{api_server.url}/v1/jobs/not-a-uuid", headers=api_server.headers), 422)
    assert body["errors"][0]["location"] == ["path", "job_id"]
    missing = httpx.get(
        f"{api_server.url}/v1/jobs/00000000-0000-0000-0000-000000000000", headers=api_server.headers
    )
    assert_problem(missing, 404)


@pytest.mark.parametrize(
    "fields",
    [
        {"task": "qa"},  # qa without questions
        {"task": "ocr", "questions": json.dumps(["why?"])},
        {"task": "translate"},
        {"options": json.dumps({"max_new_tokens": 0})},
        {"options": json.dumps({"detail_min_tiles": 9, "detail_max_tiles": 4})},
        {"options": json.dumps({"no_such_knob": 1})},
        {"options": "{not json"},
        {"pages": "3-1"},
        {"pages": "a,b"},
        {"webhook_url": "ftp://example.com/hook"},
    ],
)
def test_bad_options_are_422(api_server: ApiServer, fields: dict[str, str]) -> None:
    assert_problem(submit(api_server, [("a.png", png_bytes())], **fields), 422)


def test_json_body_errors_are_422(api_server: ApiServer) -> None:
    for body in (
        {"documents": []},
        {"documents": [{"uri": "https://x/y"}]},
        {"documents": [{"uri": "s3://b"}]},
    ):
        assert_problem(httpx.post(f"{api_server.url}/v1/jobs", headers=api_server.headers, json=body), 422)


def test_no_supported_document_is_415(api_server: ApiServer) -> None:
    body = assert_problem(submit(api_server, [("a.zip", b"PK\x03\x04rest"), ("b.txt", b"hello")]), 415)
    assert [error["code"] for error in body["errors"]] == ["unsupported_type", "unsupported_type"]
    response = httpx.post(
        f"{api_server.url}/v1/jobs",
        headers={**api_server.headers, "Content-Type": "text/plain"},
        content=b"x",
    )
    assert_problem(response, 415)


def test_limits_are_413(start_api) -> None:
    small = start_api(
        MONKEYJOBS_MAX_FILE_BYTES="100", MONKEYJOBS_MAX_DOCUMENTS_PER_JOB="2", MONKEYJOBS_MAX_JOB_BYTES="5000"
    )
    assert_problem(submit(small, [("a.png", png_bytes())] * 3), 413)
    assert_problem(submit(small, [("big.png", png_bytes() + b"\0" * 200)]), 413)
    assert_problem(submit(small, [("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 3000)] * 2), 413)
    # One file over the per-file limit in an otherwise good request fails only that document.
    mixed = submit(small, [("big.png", png_bytes() + b"\0" * 200), ("ok.png", b"\x89PNG\r\n\x1a\n")])
    assert mixed.status_code == 202
    assert [d["error"] and d["error"]["code"] for d in mixed.json()["documents"]] == ["file_too_large", None]
