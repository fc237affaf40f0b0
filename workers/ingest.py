"""Task `monkeyjobs.ingest_document(document_id)`: from a submitted file to queued page chunks.

Fetch the bytes (our `inputs/` copy or the user's `s3://` object), inspect them in an isolated
subprocess (`pipeline.documents`: format by content, page count, limits), apply the page
selection, write the page rows (idempotent) and send them to the gpu queue in chunks of
`gpu_chunk_pages`. A document that cannot be read fails alone with its error code; the job
goes on. This worker never imports torch.
"""

from __future__ import annotations

import logging
import uuid

from celery import Task
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import lifecycle, progress, queue
from jobs.db import session_scope
from jobs.formats import DocumentError, ErrorCode, parse_page_selection
from jobs.models import Document, Job
from jobs.queue import INGEST_TASK
from jobs.settings import Settings, get_settings
from pipeline.documents import inspect_document
from workers.celery_app import app, is_transient, retry_with_backoff
from workers.inputs import document_limits, read_document
from workers.publish import notify, publish_outcome, with_retries

log = logging.getLogger(__name__)


@app.task(name=INGEST_TASK, bind=True)
def ingest_document(self: Task, document_id: str) -> None:
    try:
        _ingest(uuid.UUID(document_id), get_settings(), self.request.retries)
    except Exception as exc:
        if is_transient(exc):
            log.warning("ingest of %s: transient error, retrying: %s", document_id, exc)
            retry_with_backoff(self, exc)
        # Anything else is a bug: the document stays `ingesting`, the reconciler sends it again
        # later and it fails for good once it used `max_page_attempts`.
        raise


def _ingest(document_id: uuid.UUID, settings: Settings, retries: int) -> None:
    with session_scope() as session:
        job_id = session.scalar(select(Document.job_id).where(Document.id == document_id))
        if job_id is None:
            return  # the job was deleted
        progress.lock_jobs(session, [job_id])
        document = lifecycle.begin_ingest(session, document_id)
        if document is None:
            return  # a duplicate delivery, or the job was cancelled
        attempts = document.attempts
        input_key, source_uri, selection = document.input_key, document.source_uri, document.page_selection
    # Attempts count every start; retries after transient errors (an S3 bad minute) are not the
    # document's fault, the rest are starts that never finished (a worker died on it).
    if attempts - retries > settings.max_page_attempts:
        _fail(
            job_id,
            document_id,
            DocumentError(
                ErrorCode.INTERNAL_ERROR,
                f"Reading the document was started {attempts - 1} times without finishing.",
            ),
            settings,
        )
        return
    try:
        data = read_document(input_key, source_uri, settings)
        info = inspect_document(data, document_limits(settings))
        pages = (
            parse_page_selection(selection, info.page_count)
            if selection
            else list(range(1, info.page_count + 1))
        )
        _check_job_pages(job_id, len(pages), settings)
    except DocumentError as error:
        _fail(job_id, document_id, error, settings)
        return
    # Committed before any chunk is sent: a gpu worker must find the rows of the ids it gets.
    with session_scope() as session:
        progress.lock_jobs(session, [job_id])
        lifecycle.add_pages(session, document_id, pages, settings.page_lease_s, info.format.value)
    sent = _send_pages(job_id, settings)
    log.info(
        "document %s: %s, %d pages; %d pages of the job sent", document_id, info.format, len(pages), sent
    )


def _send_pages(job_id: uuid.UUID, settings: Settings) -> int:
    """Send the job's pending pages to the gpu queue in chunks (`jobs.progress.pending_chunks`).
    Marked and sent under the job's lock, so two ingests of one job never send the same page;
    if a send fails the transaction rolls back, the pages stay `pending` with their lease and
    the task (or else the reconciler) sends them later."""
    sent = 0
    with session_scope() as session:
        progress.lock_jobs(session, [job_id])
        for chunk in progress.pending_chunks(session, job_id, settings.gpu_chunk_pages):
            queued = lifecycle.mark_pages_queued(session, chunk, settings.page_lease_s)
            if queued:
                queue.enqueue_infer(queued, settings)
                sent += len(queued)
    return sent


def _check_job_pages(job_id: uuid.UUID, pages: int, settings: Settings) -> None:
    with session_scope() as session:
        total = session.get_one(Job, job_id).pages_total
    if total + pages > settings.max_pages_per_job:
        raise DocumentError(
            ErrorCode.JOB_PAGE_LIMIT,
            f"The document's {pages} pages would take the job over its limit of "
            f"{settings.max_pages_per_job} pages.",
        )


def _fail(job_id: uuid.UUID, document_id: uuid.UUID, error: DocumentError, settings: Settings) -> None:
    log.info("document %s failed: %s", document_id, error)

    def write(session: Session) -> uuid.UUID | None:
        progress.lock_jobs(session, [job_id])
        outcome = lifecycle.fail_document(session, document_id, error.code.value, error.message)
        return publish_outcome(session, outcome, [document_id])  # the last document may end the job

    notify(with_retries(write))
    _send_pages(job_id, settings)  # this may have been the job's last document being read
