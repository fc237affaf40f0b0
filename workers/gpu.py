"""Task `monkeyjobs.infer_pages(page_ids)`: one chunk of pages, one engine batch.

A gpu worker runs one pool process per GPU; that process loads the engine once, at start
(`load_engine_in_pool_process`, hooked on `worker_process_init`), and keeps it for every chunk.
The parent process never imports torch (it forks the pool, and CUDA does not survive a fork).

A chunk (pages of one or several documents, see `jobs.progress.pending_chunks`): read its
pages' documents from S3 (before claiming, so that an S3 bad minute does not
use up attempts), claim the pages (`jobs.lifecycle.claim_pages`: skip pages already ended or
held by a live worker; fail pages that used up `max_page_attempts`, the quarantine of pages that
kill their worker), render them in an isolated subprocess (a page that fails to render fails
alone), run every page x question as ONE engine batch, then store each page's answers in its
own transaction (idempotent; counters bumped once). The transaction that ends a document's last
page also writes its JSONL, the one that ends the job its manifest (`workers.publish`); the
webhook is sent after that commit.

While the chunk runs, a heartbeat thread extends the pages' lease so that the reconciler does
not take them for lost. A chunk that comes back after its worker was lost (some page already
has an attempt) is split into one task per page, so that one page that crashes the process
cannot use up the attempts of its chunk-mates.

SIGTERM: the worker's warm shutdown lets the chunk finish (the batch is one engine call), and
`task_acks_late` + `task_reject_on_worker_lost` hand it back to the queue if the pool process
is killed instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from celery import Task, signals
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs import lifecycle, progress, queue
from jobs.db import session_scope
from jobs.formats import DocumentError, ErrorCode
from jobs.models import Document, Job, Page
from jobs.queue import INFER_TASK
from jobs.settings import Settings, get_settings
from jobs.states import TaskKind
from pipeline.documents import render_pages
from pipeline.requests import OCR_QUESTION, InferenceOptions, PageAnswer, PageRequest
from workers.celery_app import app, is_transient, retry_with_backoff
from workers.inputs import document_limits, read_document
from workers.publish import notify, publish_outcome, with_retries

if TYPE_CHECKING:
    from pipeline.engine import Engine

log = logging.getLogger(__name__)

OPTION_FIELDS = frozenset(field.name for field in dataclasses.fields(InferenceOptions))


@cache
def get_engine() -> Engine:
    """The engine of this process, loaded on first use with the settings' model and device."""
    from pipeline.engine import Engine

    settings = get_settings()
    started = time.monotonic()
    engine = Engine.load(
        settings.model,
        device=settings.device or None,
        dtype=settings.dtype or None,
        max_batch_tiles=settings.max_batch_tiles,
    )
    # The engine logs its device, dtype and attention backend itself.
    log.info("engine %s loaded in %.1f s", settings.model, time.monotonic() - started)
    return engine


def load_engine_in_pool_process() -> None:
    """Load the engine in each pool process as it starts, before it takes a task."""
    signals.worker_process_init.connect(lambda **_: get_engine(), weak=False)


def worker_name(task: Task) -> str:
    """Who holds a page: the node name and the pid of the worker's main process. A gpu worker
    runs one pool process, so a page this name still holds when a task starts was left by a
    pool process that died."""
    return f"{task.request.hostname}:{os.getppid()}"


@dataclass(frozen=True)
class _Source:
    job_id: uuid.UUID
    input_key: str | None
    source_uri: str


@app.task(name=INFER_TASK, bind=True)
def infer_pages(self: Task, page_ids: list[int]) -> None:
    settings = get_settings()
    try:
        _infer(self, [int(page_id) for page_id in page_ids], settings)
    except Exception as exc:
        if is_transient(exc):
            log.warning("chunk %s: transient error, retrying: %s", page_ids, exc)
            retry_with_backoff(self, exc)
        raise


def _infer(task: Task, page_ids: list[int], settings: Settings) -> None:
    worker = worker_name(task)
    with session_scope() as session:
        progress.release_own_pages(session, page_ids, worker)
        open_pages = session.execute(
            select(Page.id, Page.attempts, Page.document_id)
            .join(Job, Job.id == Page.job_id)
            .where(
                Page.id.in_(page_ids), Page.status.in_(lifecycle.OPEN_PAGE_STATES), Job.finalized_at.is_(None)
            )
        ).all()
        sources = {
            document.id: _Source(document.job_id, document.input_key, document.source_uri)
            for document in session.scalars(
                select(Document).where(Document.id.in_({row.document_id for row in open_pages}))
            )
        }
    if not open_pages:
        return
    if len(open_pages) > 1 and any(row.attempts > 0 for row in open_pages):
        _split([row.id for row in open_pages], settings)
        return
    data: dict[uuid.UUID, bytes | DocumentError] = {}
    for document_id, source in sources.items():
        try:
            data[document_id] = read_document(source.input_key, source.source_uri, settings)
        except DocumentError as error:  # the input vanished after ingest: its pages fail
            data[document_id] = error

    candidates = [row.id for row in open_pages]

    def claim(session: Session) -> tuple[list[Page], dict[uuid.UUID, Job], uuid.UUID | None]:
        progress.lock_jobs(session, {source.job_id for source in sources.values()})
        pages, outcome = lifecycle.claim_pages(
            session, candidates, worker, settings.page_lease_s, settings.max_page_attempts
        )
        jobs = {
            job.id: job for job in session.scalars(select(Job).where(Job.id.in_({p.job_id for p in pages})))
        }
        # Pages failed for using up their attempts may have ended their document and job.
        return pages, jobs, publish_outcome(session, outcome, sources)

    pages, jobs, finished_job = with_retries(claim)
    notify(finished_job)
    if pages:
        with _heartbeat([page.id for page in pages], worker, settings):
            _run(pages, jobs, data, settings, task)


def _split(page_ids: list[int], settings: Settings) -> None:
    """Send each page as its own task (this chunk came back after its worker was lost)."""
    log.warning("chunk %s came back after a lost worker: sending its pages one by one", page_ids)
    for page_id in page_ids:
        with session_scope() as session:
            if lifecycle.mark_pages_queued(session, [page_id], settings.page_lease_s):
                queue.enqueue_infer([page_id], settings)


def _questions(job: Job) -> list[str]:
    return list(job.questions) if job.task == TaskKind.QA.value else [OCR_QUESTION]


def _options(job: Job) -> InferenceOptions:
    return InferenceOptions(**{name: value for name, value in job.options.items() if name in OPTION_FIELDS})


def _run(
    pages: list[Page],
    jobs: dict[uuid.UUID, Job],
    data: dict[uuid.UUID, bytes | DocumentError],
    settings: Settings,
    task: Task,
) -> None:
    """Render, infer and store the claimed pages."""
    failures: list[tuple[int, DocumentError]] = []
    rendered: list[tuple[Page, Image.Image]] = []
    by_document: dict[uuid.UUID, list[Page]] = {}
    for page in pages:
        by_document.setdefault(page.document_id, []).append(page)
    limits = document_limits(settings)
    for document_id, document_pages in by_document.items():
        source = data[document_id]
        if isinstance(source, DocumentError):
            failures.extend((page.id, source) for page in document_pages)
            continue
        try:
            images = render_pages(source, [page.page_number for page in document_pages], limits)
        except DocumentError as error:
            failures.extend((page.id, error) for page in document_pages)
            continue
        for page, image in zip(document_pages, images, strict=True):
            if isinstance(image, DocumentError):
                failures.append((page.id, image))
            else:
                rendered.append((page, image.pixels))

    requests: list[PageRequest] = []
    owners: list[tuple[Page, int, str]] = []
    for page, image in rendered:
        job = jobs[page.job_id]
        options = _options(job)
        for index, question in enumerate(_questions(job)):
            requests.append(PageRequest(images=[image], question=question, options=options))
            owners.append((page, index, question))
    answers: list[PageAnswer] = []
    if requests:
        try:
            answers = get_engine().run(requests)
        except Exception as exc:
            if len(rendered) > 1:
                # One bad page must not fail its chunk-mates: hand the pages back one by one.
                log.exception("engine batch of %d pages failed; splitting the chunk", len(rendered))
                with session_scope() as session:
                    released = progress.release_own_pages(
                        session, [p.id for p, _ in rendered], worker_name(task)
                    )
                _split(released, settings)
                rendered = []
            else:
                message = f"The model failed on this page: {type(exc).__name__}: {exc}"[:1000]
                failures.extend(
                    (page.id, DocumentError(ErrorCode.INFERENCE_FAILED, message)) for page, _ in rendered
                )
                rendered = []

    rows: dict[int, list[lifecycle.ResultRow]] = {page.id: [] for page, _ in rendered}
    for (page, index, question), answer in zip(owners, answers, strict=True):
        rows[page.id].append(
            lifecycle.ResultRow(
                question_index=index,
                question=question,
                answer=answer.text,
                token_ids=list(answer.token_ids),
                tiles=answer.tiles,
                image_tokens=answer.image_tokens,
                seconds=answer.seconds,
                prompt_tokens=answer.prompt_tokens,
                finish_reason=answer.finish_reason,
            )
        )
    by_id = {page.id: page for page in pages}
    for page_id, results in rows.items():
        _store(by_id[page_id], results=results)
    for page_id, error in failures:
        _store(by_id[page_id], error=error)


def _store(
    page: Page, results: list[lifecycle.ResultRow] | None = None, error: DocumentError | None = None
) -> None:
    """End one page (done with `results`, or failed with `error`) in its own transaction,
    publishing what that ends (its document's JSONL, the job's manifest) before the commit."""

    def write(session: Session) -> uuid.UUID | None:
        progress.lock_jobs(session, [page.job_id])
        if error is None:
            answers = results or []
            outcome = lifecycle.complete_page(
                session, page.id, answers, seconds=sum(r.seconds for r in answers)
            )
        else:
            outcome = lifecycle.fail_page(session, page.id, error.code.value, error.message)
        return publish_outcome(session, outcome, [page.document_id])

    notify(with_retries(write))


@contextmanager
def _heartbeat(page_ids: list[int], worker: str, settings: Settings) -> Iterator[None]:
    """Extend the pages' lease every third of it while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.page_lease_s / 3):
            try:
                with session_scope() as session:
                    lifecycle.heartbeat(session, page_ids, worker, settings.page_lease_s)
            except Exception:  # a missed beat only shortens the lease; the next one may succeed
                log.warning("heartbeat of pages %s failed", page_ids, exc_info=True)

    thread = threading.Thread(target=beat, name="page-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
