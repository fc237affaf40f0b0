"""The API process SIGKILLed during a submission; the client retries with the same
`Idempotency-Key` against a new API process: exactly one job, and it completes.

Two moments of death: with half of the upload sent (nothing committed yet: the retry creates
the job) and right after the job row is committed, before the client has read any answer (the
retry must return that job, not make a second one). The request is written on a raw socket so
that the test decides how much of it the API receives before it dies.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.faults.harness import assert_exactly_once, wait_until
from tests.stack import EXAMPLES, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

OPTIONS = '{"max_new_tokens": 3, "detail_max_tiles": 4, "adaptive_max_tiles": 3}'
SAMPLE = "receipt.png"  # one page


def submission(url: str, api_key: str, idempotency_key: str) -> httpx.Request:
    return httpx.Request(
        "POST",
        f"{url}/v1/jobs",
        headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": idempotency_key},
        files=[("files", (SAMPLE, (EXAMPLES / SAMPLE).read_bytes(), "application/octet-stream"))],
        data={"task": "ocr", "options": OPTIONS},
    )


def wire_bytes(request: httpx.Request) -> bytes:
    """The request as HTTP/1.1 puts it on the wire."""
    head = f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    return (head + "\r\n").encode() + request.read()


def jobs_with_key(idempotency_key: str) -> list[uuid.UUID]:
    from jobs.db import session_scope
    from jobs.models import Job

    with session_scope() as session:
        return list(session.scalars(select(Job.id).where(Job.idempotency_key == idempotency_key)))


def job_count() -> int:
    from jobs.db import session_scope
    from jobs.models import Job

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


@pytest.mark.usefixtures("workers")
@pytest.mark.parametrize("moment", ["mid-upload", "after-commit"])
def test_api_killed_during_submission(
    moment: str, start_api: Callable[..., Any], settings: Any, s3: Any
) -> None:
    first = start_api()
    idempotency_key = f"fault-{uuid.uuid4()}"
    wire = wire_bytes(submission(first.url, first.key, idempotency_key))
    jobs_before = job_count()

    with socket.create_connection(("127.0.0.1", int(first.url.rsplit(":", 1)[1]))) as client:
        if moment == "mid-upload":
            client.sendall(wire[: len(wire) // 2])
        else:
            client.sendall(wire)
            wait_until(lambda: bool(jobs_with_key(idempotency_key)), 30, "the API committed the job")
        first.process.kill()  # SIGKILL: no shutdown, no answer
        first.process.wait(timeout=10)
    committed = jobs_with_key(idempotency_key)
    assert len(committed) == (0 if moment == "mid-upload" else 1), committed

    # The client retries the same request (same key, same bytes) on the API's replacement.
    second = start_api()
    retry = submission(second.url, first.key, idempotency_key)
    with httpx.Client(timeout=30) as http:
        response = http.send(retry)
    assert response.status_code == 202, response.text
    job = response.json()
    assert jobs_with_key(idempotency_key) == [uuid.UUID(job["id"])]
    assert job_count() == jobs_before + 1
    assert response.headers.get("Idempotent-Replayed") == ("true" if committed else None)

    assert_exactly_once(wait_for(second, job["id"], timeout_s=120), settings, s3, pages=1)
