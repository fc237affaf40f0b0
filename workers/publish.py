"""Writing finished work to S3: a document's JSONL, a job's manifest, then its webhook.

They are written inside the transaction that ends the document or the job, before it commits:
so once Postgres (and the API) says a document or job has ended, its objects are in the bucket,
and if the write fails the transaction rolls back and the work is tried again. Keys depend only
on ids (`jobs.storage`) and the bytes only on the rows (`jobs.progress`), so writing an object
again (a retried transaction, a redelivered task, the reconciler) gives the same object.

The webhook is the one thing sent after the commit, and only by the caller whose transaction
recorded the manifest first (`jobs.progress.claim_manifest`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import lifecycle, progress, queue
from jobs.db import session_scope
from jobs.models import Document, Job
from jobs.states import DOCUMENT_TERMINAL
from jobs.storage import JSONL_CONTENT_TYPE, get_storage
from workers.celery_app import backoff_delay, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

# In-task retries of a transaction that stores finished work (about a minute in all): the work
# is already done, so riding out an S3 or database blip beats handing the chunk back.
WRITE_ATTEMPTS = 7
WRITE_BACKOFF_S = 0.5
WRITE_BACKOFF_MAX_S = 15.0


def jsonl_bytes(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()


def manifest_bytes(session: Session, job_id: uuid.UUID) -> bytes:
    """The manifest as written to S3 and posted to the webhook (the same bytes, so the
    signature a receiver checks is over what it can also fetch from the bucket)."""
    storage = get_storage()
    results = {
        document.id: storage.uri(document.result_key)
        for document in session.scalars(
            select(Document).where(Document.job_id == job_id, Document.result_key.is_not(None))
        )
        if document.result_key
    }
    manifest = progress.build_manifest(session, job_id, results)
    return json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True).encode()


def publish_ended_documents(session: Session, document_ids: Iterable[uuid.UUID]) -> None:
    """Write the JSONL of each of these documents that has ended with pages but has none yet."""
    storage = get_storage()
    for document in session.scalars(
        select(Document).where(
            Document.id.in_(set(document_ids)),
            Document.status.in_([status.value for status in DOCUMENT_TERMINAL]),
            Document.page_count.is_not(None),
            Document.result_key.is_(None),
        )
    ):
        key = storage.document_result_key(document.job_id, document.id)
        body = jsonl_bytes(progress.document_lines(session, document.id))
        storage.put(key, body, content_type=JSONL_CONTENT_TYPE)
        progress.set_result_key(session, document.id, key)


def publish_job(session: Session, job_id: uuid.UUID) -> bool:
    """For a finalised job: every JSONL not yet written, then the manifest. True when this
    caller recorded the manifest first and the job has a webhook: send it after the commit."""
    storage = get_storage()
    progress.lock_jobs(session, [job_id])  # the job row first, as everywhere (no-op when held)
    publish_ended_documents(session, session.scalars(select(Document.id).where(Document.job_id == job_id)))
    key = storage.manifest_key(job_id)
    storage.put(key, manifest_bytes(session, job_id), content_type="application/json")
    first = progress.claim_manifest(session, job_id, key)
    log.info("job %s published: %s", job_id, storage.uri(key))
    return first and bool(session.scalars(select(Job.webhook_url).where(Job.id == job_id)).one())


def publish_outcome(
    session: Session, outcome: lifecycle.Outcome, document_ids: Iterable[uuid.UUID]
) -> uuid.UUID | None:
    """Publish what a state change ended (in its transaction): the JSONL of the given documents
    that ended, and the job when it finished. Returns the job whose webhook is to be sent
    after the commit (`notify`), if any."""
    if outcome.document_finished:
        publish_ended_documents(session, document_ids)
    if outcome.job_finished and outcome.job_id is not None and publish_job(session, outcome.job_id):
        return outcome.job_id
    return None


def notify(job_id: uuid.UUID | None) -> None:
    """After the commit: send the webhook of `job_id` (from `publish_outcome`), if any."""
    if job_id is not None:
        queue.enqueue_webhook(job_id)


def with_retries(write: Callable[[Session], T]) -> T:
    """Run `write` in a transaction, again after transient errors (S3 5xx and timeouts, lost
    database connections) with jittered exponential backoff."""
    attempt = 0
    while True:
        try:
            with session_scope() as session:
                return write(session)
        except Exception as exc:
            attempt += 1
            if not is_transient(exc) or attempt >= WRITE_ATTEMPTS:
                raise
            delay = backoff_delay(attempt, WRITE_BACKOFF_S, WRITE_BACKOFF_MAX_S)
            log.warning("storing results failed (%s); again in %.1f s", exc, delay)
            time.sleep(delay)
