"""jobs.lifecycle against the real Postgres: counters, duplicate deliveries, the single ending."""

from __future__ import annotations

import uuid

import pytest

from jobs import lifecycle as lc
from jobs.auth import get_or_create_tenant
from jobs.db import session_scope
from jobs.models import Document, Job, Result

pytestmark = pytest.mark.timeout(60)


def make_job(documents: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with session_scope() as session:
        tenant = get_or_create_tenant(session, "lifecycle")
        job = Job(tenant_id=tenant.id, task="ocr", documents_total=documents)
        session.add(job)
        session.flush()
        rows = [Document(job_id=job.id, ordinal=i, source_uri=f"s3://b/{i}") for i in range(documents)]
        session.add_all(rows)
        session.flush()
        return job.id, [row.id for row in rows]


def answer(index: int = 0) -> lc.ResultRow:
    return lc.ResultRow(index, "q", "a", [1, 2], tiles=3, image_tokens=4, seconds=0.1)


def test_job_ends_once_with_partial_status(service_env: dict[str, str]) -> None:
    job_id, (good, bad) = make_job(2)
    with session_scope() as session:
        assert lc.begin_ingest(session, good) is not None
        pages = lc.add_pages(session, good, [1, 2], lease_s=60, detected_format="pdf")
        assert lc.add_pages(session, good, [1, 2], lease_s=60) == pages  # redelivered ingest
        assert lc.mark_pages_queued(session, pages, lease_s=60) == pages
        claimed, _ = lc.claim_pages(session, pages, "w1", lease_s=60, max_attempts=3)
        assert [p.id for p in claimed] == pages
        again, _ = lc.claim_pages(session, pages, "w2", lease_s=60, max_attempts=3)
        assert again == []  # held under a live lease
    with session_scope() as session:
        assert lc.complete_page(session, pages[0], [answer()]).changed
        assert not lc.complete_page(session, pages[0], [answer()]).changed  # duplicate delivery
        ended = lc.fail_page(session, pages[1], "render_timeout", "too slow")
        assert ended.document_finished and not ended.job_finished
        assert lc.begin_ingest(session, bad) is not None
        last = lc.fail_document(session, bad, "corrupt_pdf", "broken")
        assert last.job_finished and last.job_status == "partial"
        assert not lc.fail_document(session, bad, "corrupt_pdf", "broken").changed
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        counts = (job.documents_done, job.documents_failed, job.pages_total, job.pages_done, job.pages_failed)
        assert counts == (1, 1, 2, 1, 1) and job.status == "partial" and job.finalized_at is not None
        assert session.query(Result).filter(Result.job_id == job_id).count() == 1
        assert not lc.cancel_job(session, job_id)


def test_exhausted_pages_are_failed_and_cancel_stops_pending_work(service_env: dict[str, str]) -> None:
    job_id, (document,) = make_job(1)
    with session_scope() as session:
        lc.begin_ingest(session, document)
        first, second = lc.add_pages(session, document, [1, 2], lease_s=0)
        claimed, _ = lc.claim_pages(session, [first], "w1", lease_s=0, max_attempts=1)
        assert [p.id for p in claimed] == [first]
    with session_scope() as session:
        assert lc.find_stale_work(session, document_stale_s=3600).page_ids[-2:] == [first, second]
        claimed, outcome = lc.claim_pages(session, [first], "w2", lease_s=60, max_attempts=1)
        assert claimed == [] and outcome.changed  # its worker died once: quarantined
        assert lc.cancel_job(session, job_id)
    with session_scope() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.pages_failed) == ("cancelled", 1)
        assert session.get_one(Document, document).status == "cancelled"


def test_a_late_answer_for_a_cancelled_page_is_not_stored(service_env: dict[str, str]) -> None:
    """A worker whose lease ran out (its page went back to the queue, then the job was
    cancelled) finishes late: the page stays cancelled and no answer row appears."""
    job_id, (document,) = make_job(1)
    with session_scope() as session:
        lc.begin_ingest(session, document)
        (page,) = lc.add_pages(session, document, [1], lease_s=60)
        assert lc.cancel_job(session, job_id)
    with session_scope() as session:
        assert not lc.complete_page(session, page, [answer()]).changed
    with session_scope() as session:
        assert session.query(Result).filter(Result.job_id == job_id).count() == 0
        assert session.get_one(Job, job_id).pages_done == 0
