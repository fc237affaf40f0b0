"""End to end: HTTP API -> Redis -> ingest and gpu worker processes -> Postgres and S3.

Real processes and services throughout (tests/conftest.py, tests/e2e/conftest.py); the model is
a tiny random checkpoint on the CPU, so answers are noise, but they must be exactly the noise
the engine gives for the same rendered pages.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.stack import (
    EXAMPLES,
    get_job,
    manifest,
    read_jsonl,
    run_infer,
    submit,
    wait_for,
    wait_for_manifest,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SAMPLES = ["invoice.pdf", "receipt.png", "fax.tiff"]  # 2 + 1 + 3 pages
FAST = {"max_new_tokens": 3, "detail_max_tiles": 4, "adaptive_max_tiles": 3}


# --- helpers ------------------------------------------------------------------------------------


def all_results(api: Any, job_id: str, limit: int = 2) -> list[dict[str, Any]]:
    """Every answer through the paginated endpoint, `limit` per page to exercise the cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        response = httpx.get(f"{api.url}/v1/jobs/{job_id}/results", headers=api.headers, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return items


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Any:
    from pipeline.engine import Engine

    return Engine.load(str(tiny_model), device="cpu")


def engine_answers(
    engine: Any, settings: Any, files: dict[str, bytes], questions: list[str], options: dict
) -> dict:
    """(filename, page, question index) -> answer text, computed in this process on the same
    rendered pages with the same options: what the workers must have stored."""
    from pipeline.documents import inspect_document, render_pages
    from pipeline.requests import InferenceOptions, PageRequest
    from workers.inputs import document_limits

    limits = document_limits(settings)
    known = InferenceOptions.__dataclass_fields__
    inference = InferenceOptions(**{name: value for name, value in options.items() if name in known})
    keys, requests = [], []
    for name, data in files.items():
        count = inspect_document(data, limits).page_count
        for page in render_pages(data, list(range(1, count + 1)), limits):
            for index, question in enumerate(questions):
                keys.append((name, page.page_number, index))
                requests.append(PageRequest(images=[page.pixels], question=question, options=inference))
    return {key: answer.text for key, answer in zip(keys, engine.run(requests), strict=True)}


class Webhooks:
    """A local HTTP server that records the webhook POSTs it receives and answers 500 to the
    first `fail_first` of them."""

    def __init__(self) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received
        self.fail_first = 0
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(500 if len(received) <= hooks.fail_first else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    yield hooks
    hooks.server.shutdown()


# --- tests --------------------------------------------------------------------------------------


def test_ocr_job_answers_equal_the_engine(
    api_server: Any, workers: Any, settings: Any, s3: Any, engine: Any
) -> None:
    from jobs.db import session_scope
    from jobs.models import Result
    from pipeline.requests import OCR_QUESTION

    files = {name: (EXAMPLES / name).read_bytes() for name in SAMPLES}
    job = submit(api_server, list(files.items()), task="ocr", options=FAST)
    job = wait_for(api_server, job["id"])

    assert job["status"] == "succeeded", job
    assert job["counts"] == {
        "documents": 3,
        "documents_failed": 0,
        "pages": 6,
        "pages_done": 6,
        "pages_failed": 0,
    }
    expected = engine_answers(engine, settings, files, [OCR_QUESTION], job["options"])
    assert len(expected) == 6

    api_answers = {
        (r["filename"], r["page"], r["question_index"]): r["answer"]
        for r in all_results(api_server, job["id"])
    }
    assert api_answers == expected

    names = {d["id"]: d["filename"] for d in job["documents"]}
    with session_scope() as session:
        rows = session.scalars(select(Result).where(Result.job_id == uuid.UUID(job["id"]))).all()
        stored = {(names[str(r.document_id)], r.page_number, r.question_index): r.answer for r in rows}
    assert len(rows) == 6
    assert stored == expected

    for document in job["documents"]:
        assert document["status"] == "succeeded"
        lines = read_jsonl(s3, settings.s3_bucket, document["result"])
        pages = [line["page"] for line in lines]
        assert pages == sorted(set(pages)) == list(range(1, document["pages"] + 1))  # each page once
        assert {(document["filename"], line["page"], 0): line["answer"] for line in lines} == {
            key: text for key, text in expected.items() if key[0] == document["filename"]
        }
    body = wait_for_manifest(s3, settings.s3_bucket, job["id"])
    assert body["status"] == "succeeded" and body["counts"] == job["counts"]
    # The manifest is written just after the job's status changes; the API shows it from then on.
    manifest_uri = f"s3://{settings.s3_bucket}/jobs/{job['id']}/manifest.json"
    assert get_job(api_server, job["id"])["manifest"] == manifest_uri


def test_qa_job_answers_every_question(
    api_server: Any, workers: Any, settings: Any, s3: Any, engine: Any
) -> None:
    questions = ["What is the total?", "Where is the cafe?"]
    files = {"receipt.png": (EXAMPLES / "receipt.png").read_bytes()}
    job = wait_for(
        api_server,
        submit(api_server, list(files.items()), task="qa", questions=questions, options=FAST)["id"],
    )

    assert job["status"] == "succeeded", job
    results = all_results(api_server, job["id"])
    assert [(r["question_index"], r["question"]) for r in results] == list(enumerate(questions))
    expected = engine_answers(engine, settings, files, questions, job["options"])
    assert {(r["filename"], r["page"], r["question_index"]): r["answer"] for r in results} == expected
    lines = read_jsonl(s3, settings.s3_bucket, job["documents"][0]["result"])
    assert [(line["page"], line["question_index"]) for line in lines] == [(1, 0), (1, 1)]


def test_good_and_bad_documents_end_partial(
    api_server: Any, workers: Any, settings: Any, s3: Any, tiny_model: Path, tmp_path: Path
) -> None:
    pdf = (EXAMPLES / "invoice.pdf").read_bytes()
    files = [
        ("receipt.png", (EXAMPLES / "receipt.png").read_bytes()),
        ("notes.txt", b"just some plain text, not a document\n"),
        ("truncated.pdf", pdf[: len(pdf) // 3]),
        ("photo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64),  # a PNG header and nothing readable
    ]
    job = wait_for(api_server, submit(api_server, files, task="ocr", options=FAST)["id"])

    assert job["status"] == "partial", job
    by_name = {d["filename"]: d for d in job["documents"]}
    assert by_name["receipt.png"]["status"] == "succeeded"
    assert by_name["notes.txt"]["error"]["code"] == "unsupported_type"
    assert by_name["truncated.pdf"]["error"]["code"] == "corrupt_pdf"
    assert by_name["photo.png"]["error"]["code"] == "corrupt_image"
    for name in ("notes.txt", "truncated.pdf", "photo.png"):
        assert by_name[name]["status"] == "failed" and by_name[name]["error"]["message"]
    assert job["counts"]["documents_failed"] == 3 and job["counts"]["pages_done"] == 1
    body = wait_for_manifest(s3, settings.s3_bucket, job["id"])
    assert {d["filename"]: (d["error"] or {}).get("code") for d in body["documents"]} == {
        "receipt.png": None,
        "notes.txt": "unsupported_type",
        "truncated.pdf": "corrupt_pdf",
        "photo.png": "corrupt_image",
    }
    # The same files one by one through `monkeyjobs infer` get the same verdicts.
    for name, data in files:
        (tmp_path / name).write_bytes(data)
        code, [line] = run_infer(
            str(tmp_path / name),
            "--model",
            str(tiny_model),
            "--max-new-tokens",
            "2",
            "--detail-max-tiles",
            "4",
        )
        verdict = line.get("error", {}).get("code")
        assert verdict == (by_name[name]["error"] or {}).get("code"), (name, line)
        assert code == (0 if verdict is None else 1)


def test_cancel_stops_the_job(api_server: Any, workers: Any, settings: Any, s3: Any) -> None:
    from jobs.db import session_scope
    from jobs.lifecycle import OPEN_PAGE_STATES
    from jobs.models import Page

    files = [(f"{i}-{name}", (EXAMPLES / name).read_bytes()) for i in range(3) for name in SAMPLES]
    job = submit(api_server, files, task="ocr", options={"max_new_tokens": 64})
    response = httpx.post(f"{api_server.url}/v1/jobs/{job['id']}/cancel", headers=api_server.headers)
    assert response.status_code in (200, 202), response.text

    job = wait_for(api_server, job["id"], timeout_s=10)
    assert job["status"] == "cancelled"
    deadline = time.monotonic() + 60
    with session_scope() as session:  # the chunk in flight, if any, ends; nothing else starts
        while session.scalar(
            select(func.count()).where(Page.job_id == uuid.UUID(job["id"]), Page.status.in_(OPEN_PAGE_STATES))
        ):
            assert time.monotonic() < deadline
            time.sleep(0.5)
            session.rollback()
    job = get_job(api_server, job["id"])
    assert job["status"] == "cancelled"
    assert job["counts"]["pages_done"] < 18
    assert wait_for_manifest(s3, settings.s3_bucket, job["id"])["status"] == "cancelled"


def test_job_ends_once_even_when_its_tasks_come_again(
    api_server: Any, workers: Any, settings: Any, s3: Any, webhooks: Webhooks
) -> None:
    """Redelivered ingest and inference tasks (what acks_late and the reconciler may cause)
    change nothing: no second answer, counters, manifest and webhook as they were."""
    from jobs import queue
    from jobs.db import session_scope
    from jobs.models import Job, Page, Result, Tenant
    from jobs.webhooks import SIGNATURE_HEADER, verify_signature

    files = [(name, (EXAMPLES / name).read_bytes()) for name in ("invoice.pdf", "receipt.png")]
    job = submit(api_server, files, task="ocr", options=FAST, webhook_url=webhooks.url)
    job = wait_for(api_server, job["id"])
    assert job["status"] == "succeeded"
    job_id = uuid.UUID(job["id"])

    deadline = time.monotonic() + 30
    while not webhooks.received:
        assert time.monotonic() < deadline, "no webhook"
        time.sleep(0.2)
    headers, body = webhooks.received[0]
    with session_scope() as session:
        secret = session.scalars(select(Tenant.webhook_secret).join(Job).where(Job.id == job_id)).one()
        page_ids = session.scalars(select(Page.id).where(Page.job_id == job_id)).all()
    assert verify_signature(secret, body, headers[SIGNATURE_HEADER])
    first_manifest, parsed = manifest(s3, settings.s3_bucket, job["id"])
    assert body == first_manifest and parsed["status"] == "succeeded"

    for document in job["documents"]:
        queue.enqueue_ingest(document["id"])
    queue.enqueue_infer(page_ids)
    for page_id in page_ids:
        queue.enqueue_infer([page_id])
    queue.enqueue_webhook(job["id"])
    import redis

    client = redis.Redis.from_url(settings.broker_url)
    deadline = time.monotonic() + 30
    while any(client.llen(name) for name in queue.QUEUES):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2)  # the last task taken finishes

    with session_scope() as session:
        assert session.scalar(select(func.count()).where(Result.job_id == job_id)) == 3
    again = get_job(api_server, job["id"])
    assert again["counts"] == job["counts"] and again["finished_at"] == job["finished_at"]
    assert manifest(s3, settings.s3_bucket, job["id"])[0] == first_manifest
    assert len(webhooks.received) == 1


def test_webhook_is_retried_until_delivered(
    api_server: Any, workers: Any, settings: Any, webhooks: Webhooks
) -> None:
    from jobs.db import session_scope
    from jobs.models import Job, Tenant
    from jobs.webhooks import SIGNATURE_HEADER, verify_signature

    webhooks.fail_first = 2
    files = [("receipt.png", (EXAMPLES / "receipt.png").read_bytes())]
    job = wait_for(
        api_server, submit(api_server, files, task="ocr", options=FAST, webhook_url=webhooks.url)["id"]
    )
    assert job["status"] == "succeeded"
    job_id = uuid.UUID(job["id"])

    deadline = time.monotonic() + 30
    while True:
        with session_scope() as session:
            row = session.execute(
                select(Job.webhook_delivered_at, Job.webhook_attempts, Tenant.webhook_secret)
                .join(Tenant)
                .where(Job.id == job_id)
            ).one()
        if row.webhook_delivered_at is not None:
            break
        assert time.monotonic() < deadline, f"webhook not delivered after {row.webhook_attempts} attempts"
        time.sleep(0.2)
    assert row.webhook_attempts == 3 and len(webhooks.received) == 3
    bodies = {body for _, body in webhooks.received}
    assert len(bodies) == 1  # every retry posts the same signed bytes
    assert all(
        verify_signature(row.webhook_secret, body, headers[SIGNATURE_HEADER])
        for headers, body in webhooks.received
    )


def test_documents_given_as_s3_uris(api_server: Any, workers: Any, settings: Any, s3: Any) -> None:
    """Documents read from the user's bucket; one that does not exist fails alone."""
    key = f"user-data/{uuid.uuid4()}/receipt.png"
    s3.put_object(Bucket=settings.s3_bucket, Key=key, Body=(EXAMPLES / "receipt.png").read_bytes())
    body = {
        "task": "ocr",
        "options": FAST,
        "documents": [
            {"uri": f"s3://{settings.s3_bucket}/{key}"},
            {"uri": f"s3://{settings.s3_bucket}/user-data/missing.pdf", "filename": "missing.pdf"},
        ],
    }
    response = httpx.post(f"{api_server.url}/v1/jobs", headers=api_server.headers, json=body, timeout=30)
    assert response.status_code == 202, response.text
    job = wait_for(api_server, response.json()["id"])

    assert job["status"] == "partial", job
    found, missing = job["documents"]
    assert found["status"] == "succeeded" and found["pages_done"] == 1
    assert missing["status"] == "failed" and missing["error"]["code"] == "source_not_found"
