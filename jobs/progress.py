"""What the workers publish about finished work, rebuilt from Postgres so a rewrite is identical.

`jobs.lifecycle` moves rows (claims, answers, counters, the exactly-once job ending); this
module covers what comes after and around it:

- `document_lines` and `build_manifest`: the JSONL of a document and the job's manifest, built
  only from rows that no longer change once their document or job has ended, so writing them
  again (a redelivered task, the reconciler) gives the same bytes under the same key;
- `claim_manifest`: the one UPDATE `... WHERE manifest_key IS NULL` whose winner sends the
  webhook, so a job's webhook is sent once however many times its manifest is written;
- `release_own_pages`: pages left `running` by a pool process of this same worker that died
  (its message was handed back by `task_reject_on_worker_lost`) are taken back at once instead
  of waiting for their lease to run out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from jobs.lifecycle import OPEN_PAGE_STATES
from jobs.models import Document, Job, Page, Result
from jobs.states import DocumentStatus, PageStatus


def lock_jobs(session: Session, job_ids: Iterable[uuid.UUID]) -> None:
    """Lock job rows (in id order) before touching their documents and pages in the same
    transaction. `jobs.lifecycle.cancel_job` locks the job, then pages, then documents, while a
    page's ending locks its page, then job, then document: taking the job first everywhere keeps
    one lock order, so a cancel racing a worker waits instead of deadlocking."""
    session.execute(
        select(Job.id)
        .where(Job.id.in_(set(job_ids)))
        .order_by(Job.id)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE, as UPDATE takes
    )


def pending_chunks(session: Session, job_id: uuid.UUID, size: int) -> list[list[int]]:
    """The job's `pending` pages, in document then page order, cut into chunks of `size`: pages
    of several small documents share a chunk, so the GPU batches across documents. The last,
    partial chunk stays pending while other documents of the job are still being read (their
    pages will fill it) and is included once none is. Call with the job row locked."""
    ids = list(
        session.scalars(
            select(Page.id)
            .join(Document, Document.id == Page.document_id)
            .where(Page.job_id == job_id, Page.status == PageStatus.PENDING.value)
            .order_by(Document.ordinal, Page.page_number)
        )
    )
    reading = session.scalar(
        select(func.count())
        .select_from(Document)
        .where(
            Document.job_id == job_id,
            Document.status.in_([DocumentStatus.PENDING.value, DocumentStatus.INGESTING.value]),
        )
    )
    end = len(ids) - len(ids) % size if reading else len(ids)
    return [ids[start : start + size] for start in range(0, end, size)]


def release_own_pages(session: Session, page_ids: list[int], worker: str) -> list[int]:
    """running pages of `page_ids` held by `worker` -> queued. Call only where `worker` runs one
    task at a time (a gpu worker): then a page it still holds was left by a dead process."""
    return list(
        session.scalars(
            update(Page)
            .where(Page.id.in_(page_ids), Page.worker == worker, Page.status == PageStatus.RUNNING.value)
            .values(status=PageStatus.QUEUED.value, leased_until=func.now())
            .returning(Page.id)
        )
    )


def cancel_open_pages(session: Session, page_ids: list[int]) -> int:
    """Open pages of `page_ids` -> cancelled (their job ended while they ran). Returns how many."""
    if not page_ids:
        return 0
    result = session.execute(
        update(Page)
        .where(Page.id.in_(page_ids), Page.status.in_(OPEN_PAGE_STATES))
        .values(status=PageStatus.CANCELLED.value, finished_at=func.now(), leased_until=None)
        .returning(Page.id)
    )
    return len(result.all())


def set_result_key(session: Session, document_id: uuid.UUID, key: str) -> None:
    session.execute(update(Document).where(Document.id == document_id).values(result_key=key))


def claim_manifest(session: Session, job_id: uuid.UUID, key: str) -> bool:
    """Record the manifest's key; True for the one caller that recorded it first."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.manifest_key.is_(None))
        .values(manifest_key=key)
        .returning(Job.id)
    ).first()
    return row is not None


def document_lines(session: Session, document_id: uuid.UUID) -> list[dict[str, Any]]:
    """The JSONL lines of one document: one per page and question, in page then question order.
    A failed page gives one line per question with `answer: null` and its `error`."""
    document = session.get_one(Document, document_id)
    job = session.get_one(Job, document.job_id)
    questions = job.questions if job.questions else [None]
    results: dict[tuple[int, int], Result] = {
        (r.page_id, r.question_index): r
        for r in session.scalars(select(Result).where(Result.document_id == document_id))
    }
    lines: list[dict[str, Any]] = []
    for page in session.scalars(
        select(Page).where(Page.document_id == document_id).order_by(Page.page_number)
    ):
        if page.status == PageStatus.DONE:
            for (page_id, _), result in sorted(results.items()):
                if page_id == page.id:
                    lines.append(_line(job, document, page, result.question_index, result.question, result))
        elif page.status == PageStatus.FAILED:
            for index, question in enumerate(questions):
                lines.append(_line(job, document, page, index, question, None))
    return lines


def _line(
    job: Job, document: Document, page: Page, index: int, question: str | None, result: Result | None
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "job_id": str(job.id),
        "document_id": str(document.id),
        "filename": document.filename,
        "page": page.page_number,
        "question_index": index,
        "question": question,
        "answer": None if result is None else result.answer,
    }
    if result is None:
        line["error"] = {"code": page.error_code, "message": page.error_message}
    else:
        line.update(
            finish_reason=result.finish_reason,
            tiles=result.tiles,
            image_tokens=result.image_tokens,
            prompt_tokens=result.prompt_tokens,
        )
    return line


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def build_manifest(session: Session, job_id: uuid.UUID, result_uri: dict[uuid.UUID, str]) -> dict[str, Any]:
    """The final job object: status, counts, per-document status, errors and result location.
    Written as `manifest.json` and posted to the webhook; built from rows that no longer change
    once the job is finalised, so it is the same every time. `result_uri` maps document ids to
    where their JSONL is."""
    job = session.get_one(Job, job_id)
    documents = list(
        session.scalars(select(Document).where(Document.job_id == job_id).order_by(Document.ordinal))
    )
    failed_pages: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for page in session.scalars(
        select(Page).where(Page.job_id == job_id, Page.status == PageStatus.FAILED).order_by(Page.page_number)
    ):
        failed_pages.setdefault(page.document_id, []).append(
            {"page": page.page_number, "code": page.error_code, "message": page.error_message}
        )
    return {
        "id": str(job.id),
        "status": job.status,
        "task": job.task,
        "questions": job.questions,
        "options": job.options,
        "metadata": job.job_metadata,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "counts": {
            "documents": job.documents_total,
            "documents_failed": job.documents_failed,
            "pages": job.pages_total,
            "pages_done": job.pages_done,
            "pages_failed": job.pages_failed,
        },
        "documents": [
            {
                "id": str(document.id),
                "filename": document.filename,
                "status": document.status,
                "format": document.detected_format,
                "pages": document.page_count,
                "pages_done": document.pages_done,
                "pages_failed": document.pages_failed,
                "error": None
                if document.error_code is None
                else {"code": document.error_code, "message": document.error_message},
                "page_errors": failed_pages.get(document.id, []),
                "result": result_uri.get(document.id),
            }
            for document in documents
        ],
    }
