"""The job routes through real HTTP against a real API process, Postgres and an S3 server."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable

import boto3
import httpx
import pytest
from PIL import Image

from jobs.db import session_scope
from jobs.models import Document, Job, Page, Result
from tests.conftest import ApiServer

pytestmark = pytest.mark.timeout(120)


def png_bytes(color: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="PNG")
    return buffer.getvalue()


def submit(
    server: ApiServer, files: list[tuple[str, bytes]], key: str | None = None, **fields: str
) -> httpx.Response:
    headers = dict(server.headers)
    if key:
        headers["Idempotency-Key"] = key
    return httpx.post(
        f"{server.url}/v1/jobs",
        headers=headers,
        files=[("files", (name, data)) for name, data in files],
        data=fields,
        timeout=30,
    )


def test_multipart_job_is_accepted_and_stored(api_server: ApiServer, settings, s3_endpoint: str) -> None:
    response = submit(
        api_server,
        [("a.png", png_bytes()), ("../evil\x1bname.pdf", b""), ("notes.txt", b"plain text")],
        task="qa",
        questions=json.dumps(["What is the total?"]),
        options=json.dumps({"scm": True, "max_new_tokens": 64}),
        metadata=json.dumps({"batch": 7}),
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["task"] == "qa"
    assert job["options"]["scm"] is True and job["options"]["max_new_tokens"] == 64
    assert job["metadata"] == {"batch": 7}
    assert job["counts"]["documents"] == 3 and job["counts"]["documents_failed"] == 2
    good, empty, text = job["documents"]
    assert good["status"] == "pending" and good["format"] == "png"
    assert empty["status"] == "failed" and empty["error"]["code"] == "empty_file"
    assert empty["filename"] == "../evil\\x1bname.pdf"
    assert text["error"]["code"] == "unsupported_type"
    with session_scope() as session:
        document = session.get(Document, uuid.UUID(good["id"]))
        assert document is not None and document.input_key is not None
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    assert s3.get_object(Bucket=settings.s3_bucket, Key=document.input_key)["Body"].read() == png_bytes()
    fetched = httpx.get(f"{api_server.url}/v1/jobs/{job['id']}", headers=api_server.headers).json()
    assert fetched["id"] == job["id"] and fetched["results_url"] == f"/v1/jobs/{job['id']}/results"


def test_json_job_with_s3_uris(api_server: ApiServer) -> None:
    body = {"task": "ocr", "documents": [{"uri": "s3://other-bucket/scans/p1.pdf", "pages": "1-3,7"}]}
    response = httpx.post(f"{api_server.url}/v1/jobs", headers=api_server.headers, json=body)
    assert response.status_code == 202, response.text
    (document,) = response.json()["documents"]
    assert document["filename"] == "p1.pdf" and document["status"] == "pending"
    with session_scope() as session:
        row = session.get(Document, uuid.UUID(document["id"]))
        assert row is not None
        assert (row.source_uri, row.page_selection) == ("s3://other-bucket/scans/p1.pdf", "1-3,7")


def test_idempotency_key_is_per_tenant(api_server: ApiServer, start_api: Callable[..., ApiServer]) -> None:
    key = f"idem-{uuid.uuid4()}"
    first = submit(api_server, [("a.png", png_bytes())], key=key)
    again = submit(api_server, [("a.png", png_bytes())], key=key)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other_tenant = start_api(tenant="tenant-b")
    other = submit(other_tenant, [("a.png", png_bytes())], key=key)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    with session_scope() as session:
        assert session.query(Job).filter(Job.idempotency_key == key).count() == 2


def test_other_tenants_job_is_404(api_server: ApiServer, start_api: Callable[..., ApiServer]) -> None:
    job_id = submit(api_server, [("a.png", png_bytes())]).json()["id"]
    other = start_api(tenant="tenant-c")
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/results"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ):
        response = httpx.request(method, f"{other.url}{path}", headers=other.headers)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    listed = httpx.get(f"{other.url}/v1/jobs", headers=other.headers).json()
    assert job_id not in {job["id"] for job in listed["items"]}


def test_list_jobs_pagination_and_status_filter(start_api: Callable[..., ApiServer]) -> None:
    server = start_api(tenant=f"pager-{uuid.uuid4().hex[:6]}")
    created = [submit(server, [("a.png", png_bytes())]).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{server.url}/v1/jobs", headers=server.headers, params=params).json()
        assert len(page["items"]) <= 2
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created[::-1]
    httpx.post(f"{server.url}/v1/jobs/{created[0]}/cancel", headers=server.headers).raise_for_status()
    cancelled = httpx.get(
        f"{server.url}/v1/jobs", headers=server.headers, params={"status": "cancelled"}
    ).json()
    assert [job["id"] for job in cancelled["items"]] == [created[0]]


def test_results_pagination(api_server: ApiServer) -> None:
    job_id = uuid.UUID(submit(api_server, [("a.png", png_bytes()), ("b.png", png_bytes())]).json()["id"])
    with session_scope() as session:
        documents = session.query(Document).filter(Document.job_id == job_id).order_by(Document.ordinal).all()
        expected = []
        for document in reversed(documents):  # insertion order must not matter
            for number in (2, 1):
                page = Page(job_id=job_id, document_id=document.id, page_number=number, status="done")
                session.add(page)
                session.flush()
                for index in (1, 0):
                    session.add(
                        Result(
                            job_id=job_id,
                            document_id=document.id,
                            page_id=page.id,
                            page_number=number,
                            question_index=index,
                            question=f"q{index}",
                            answer=f"{document.ordinal}-{number}-{index}",
                            tiles=1,
                            image_tokens=256,
                            seconds=0.5,
                        )
                    )
        expected = [f"{o}-{n}-{i}" for o in (0, 1) for n in (1, 2) for i in (0, 1)]
    answers: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        response = httpx.get(
            f"{api_server.url}/v1/jobs/{job_id}/results", headers=api_server.headers, params=params
        )
        page = response.json()
        answers += [item["answer"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert answers == expected


def test_second_write_of_a_result_is_refused_by_the_database(api_server: ApiServer) -> None:
    from sqlalchemy.exc import IntegrityError

    job_id = uuid.UUID(submit(api_server, [("a.png", png_bytes())]).json()["id"])
    row = {"question_index": 0, "question": "q", "answer": "a", "tiles": 1, "image_tokens": 1, "seconds": 0.1}
    with session_scope() as session:
        document = session.query(Document).filter(Document.job_id == job_id).one()
        page = Page(job_id=job_id, document_id=document.id, page_number=1)
        session.add(page)
        session.flush()
        session.add(Result(job_id=job_id, document_id=document.id, page_id=page.id, page_number=1, **row))
        page_id, document_id = page.id, document.id
    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(Result(job_id=job_id, document_id=document_id, page_id=page_id, page_number=1, **row))


def test_cancel(api_server: ApiServer) -> None:
    job_id = submit(api_server, [("a.png", png_bytes())]).json()["id"]
    response = httpx.post(f"{api_server.url}/v1/jobs/{job_id}/cancel", headers=api_server.headers)
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    assert job["documents"][0]["status"] == "cancelled"
    again = httpx.post(f"{api_server.url}/v1/jobs/{job_id}/cancel", headers=api_server.headers)
    assert again.status_code == 409 and again.json()["status"] == 409


def test_document_result_redirects_to_presigned_url(api_server: ApiServer, settings) -> None:
    job = submit(api_server, [("a.png", png_bytes())]).json()
    document_id = job["documents"][0]["id"]
    url = f"{api_server.url}/v1/jobs/{job['id']}/documents/{document_id}/result"
    assert httpx.get(url, headers=api_server.headers).status_code == 404
    from jobs.storage import get_storage

    storage = get_storage()
    key = storage.document_result_key(job["id"], document_id)
    storage.put(key, b'{"answer": "x"}\n')
    with session_scope() as session:
        session.get_one(Document, uuid.UUID(document_id)).result_key = key
    response = httpx.get(url, headers=api_server.headers)
    assert response.status_code == 307
    assert httpx.get(response.headers["location"]).content == b'{"answer": "x"}\n'
    assert (
        httpx.get(f"{api_server.url}/v1/jobs/{job['id']}", headers=api_server.headers).json()["documents"][0][
            "result_url"
        ]
        == f"/v1/jobs/{job['id']}/documents/{document_id}/result"
    )
