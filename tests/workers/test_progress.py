"""jobs.progress against the real Postgres: chunks across documents, pages handed back, the
manifest claimed once, and JSONL lines rebuilt from the rows."""

from __future__ import annotations

import uuid

import pytest

from jobs import lifecycle, progress
from jobs.db import session_scope
from jobs.models import Job
from tests.test_lifecycle import answer, make_job

pytestmark = pytest.mark.timeout(60)


def ingest(document_id: uuid.UUID, pages: list[int]) -> list[int]:
    with session_scope() as session:
        lifecycle.begin_ingest(session, document_id)
        return lifecycle.add_pages(session, document_id, pages, lease_s=60, detected_format="png")


def test_small_documents_share_chunks_and_the_last_one_flushes(service_env: dict[str, str]) -> None:
    job_id, (a, b, c) = make_job(3)
    first, second = ingest(a, [1]), ingest(b, [1, 2, 3, 4])
    with session_scope() as session:
        # c is still being read: only full chunks go, mixing a's and b's pages.
        assert progress.pending_chunks(session, job_id, 2) == [first + second[:1], second[1:3]]
        lifecycle.mark_pages_queued(session, first + second[:3], lease_s=60)
    third = ingest(c, [1])
    with session_scope() as session:
        # Nothing is being read any more: the partial chunk goes too.
        assert progress.pending_chunks(session, job_id, 2) == [second[3:] + third]


def test_pages_held_by_a_dead_pool_process_come_back(service_env: dict[str, str]) -> None:
    _, (document,) = make_job(1)
    pages = ingest(document, [1, 2])
    with session_scope() as session:
        lifecycle.claim_pages(session, pages, "gpu@host:1", lease_s=600, max_attempts=3)
        assert progress.release_own_pages(session, pages, "gpu@host:2") == []  # another worker's
        assert sorted(progress.release_own_pages(session, pages, "gpu@host:1")) == pages
        claimed, _ = lifecycle.claim_pages(session, pages, "gpu@host:1", lease_s=600, max_attempts=3)
        assert [page.attempts for page in claimed] == [2, 2]


def test_lines_and_manifest_are_rebuilt_from_the_rows(service_env: dict[str, str]) -> None:
    job_id, (document,) = make_job(1)
    pages = ingest(document, [1, 2])
    with session_scope() as session:
        lifecycle.complete_page(session, pages[0], [answer()])
        outcome = lifecycle.fail_page(session, pages[1], "render_timeout", "too slow")
    assert outcome.job_finished
    with session_scope() as session:
        lines = progress.document_lines(session, document)
        assert [(line["page"], line["answer"]) for line in lines] == [(1, "a"), (2, None)]
        assert lines[1]["error"] == {"code": "render_timeout", "message": "too slow"}
        manifest = progress.build_manifest(session, job_id, {document: "s3://b/k.jsonl"})
        assert manifest["status"] == "partial" and manifest["counts"]["pages_failed"] == 1
        assert manifest["documents"][0]["page_errors"] == [
            {"page": 2, "code": "render_timeout", "message": "too slow"}
        ]
        assert progress.build_manifest(session, job_id, {document: "s3://b/k.jsonl"}) == manifest
        assert progress.claim_manifest(session, job_id, "jobs/x/manifest.json")
        assert not progress.claim_manifest(session, job_id, "jobs/x/manifest.json")  # the webhook goes once
        assert session.get_one(Job, job_id).manifest_key == "jobs/x/manifest.json"
