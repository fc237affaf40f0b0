"""A page that kills its worker `max_page_attempts` times is quarantined: it fails with
`attempts_exhausted`, its chunk-mate is answered once, and the job still ends (`partial`).

The test plays the killer page: each time page 2 of the document is `running`, it SIGKILLs the
gpu worker's pool process, which is what an OOM kill or a crash inside the model does to it.
The worker's main process survives and starts a new pool process; Celery hands the chunk back
(`task_reject_on_worker_lost`) and the workers' attempt counting in Postgres does the rest.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.faults.harness import OPTIONS, results_per_page, wait_until
from tests.stack import EXAMPLES, WorkerProcess, read_jsonl, submit, wait_for, wait_for_manifest

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

MAX_ATTEMPTS = 2
KILLER_PAGE = 2  # of invoice.pdf (2 pages: one chunk)


def page_state(job_id: str, page_number: int) -> tuple[str, int] | None:
    from jobs.db import session_scope
    from jobs.models import Page

    with session_scope() as session:
        row = session.execute(
            select(Page.status, Page.attempts).where(
                Page.job_id == uuid.UUID(job_id), Page.page_number == page_number
            )
        ).first()
    return None if row is None else (row.status, row.attempts)


def pool_process(worker: WorkerProcess) -> int:
    """The pid of the worker's one pool process (the child of its main process)."""
    pid = worker.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_page_that_kills_its_worker_is_quarantined(
    api_server: Any, start_test_worker: Callable[..., WorkerProcess], settings: Any, s3: Any
) -> None:
    start_test_worker("ingest")
    gpu = start_test_worker("gpu", MONKEYJOBS_MAX_PAGE_ATTEMPTS=str(MAX_ATTEMPTS))
    job_id = str(
        submit(
            api_server,
            [("invoice.pdf", (EXAMPLES / "invoice.pdf").read_bytes())],
            task="ocr",
            options=OPTIONS,
        )["id"]
    )

    for attempt in range(1, MAX_ATTEMPTS + 1):
        wait_until(
            lambda attempt=attempt: page_state(job_id, KILLER_PAGE) == ("running", attempt),
            90,
            f"page {KILLER_PAGE} runs for the {attempt}. time",
        )
        os.kill(pool_process(gpu), signal.SIGKILL)

    job = wait_for(api_server, job_id, timeout_s=120)
    assert job["status"] == "partial", job
    assert (job["counts"]["pages_done"], job["counts"]["pages_failed"]) == (1, 1), job["counts"]
    assert page_state(job_id, KILLER_PAGE) == ("failed", MAX_ATTEMPTS)  # never given a third try
    assert sorted(results_per_page(job_id).values()) == [0, 1]
    assert gpu.process.poll() is None, "the worker itself survived its killer page"

    (document,) = wait_for_manifest(s3, settings.s3_bucket, job_id)["documents"]
    assert document["page_errors"][0]["page"] == KILLER_PAGE
    assert document["page_errors"][0]["code"] == "attempts_exhausted"
    lines = read_jsonl(s3, settings.s3_bucket, document["result"])
    assert [(line["page"], line["answer"] is None) for line in lines] == [(1, False), (KILLER_PAGE, True)]
    assert lines[1]["error"]["code"] == "attempts_exhausted"
