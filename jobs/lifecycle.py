"""State changes of jobs, documents and pages, each safe when many workers race.

Every change is one `UPDATE ... WHERE <source states> RETURNING`, so of two writers only one
moves a row; counters only move by `SET n = n + 1`. The functions take the caller's session and
do not commit: the caller's transaction (e.g. `jobs.db.session_scope`) makes the change atomic
with whatever it writes beside it.

Flow: the API creates a job and documents (`pending`); ingest calls `begin_ingest`, then
`add_pages` (or `fail_document`), then `mark_pages_queued` for each chunk it sends; a GPU worker
calls `claim_pages`, `heartbeat`, and for each page `complete_page` or `fail_page`. When a call
ends the job, its `Outcome.job_finished` is true exactly once, and that caller writes the
manifest and sends the webhook. The reconciler uses `find_stale_work`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from jobs.models import Document, Job, Page, Result
from jobs.states import (
    JOB_TERMINAL,
    DocumentStatus,
    JobStatus,
    PageStatus,
    final_document_status,
    final_job_status,
)

OPEN_PAGE_STATES = (PageStatus.PENDING.value, PageStatus.QUEUED.value, PageStatus.RUNNING.value)
OPEN_DOCUMENT_STATES = (
    DocumentStatus.PENDING.value,
    DocumentStatus.INGESTING.value,
    DocumentStatus.RUNNING.value,
)
JOB_TERMINAL_VALUES = tuple(s.value for s in JOB_TERMINAL)

# Error codes this module writes itself; document-format codes live in `jobs.formats`.
ATTEMPTS_EXHAUSTED = "attempts_exhausted"


@dataclass(frozen=True)
class ResultRow:
    """One answer of one page, as the engine gave it."""

    question_index: int
    question: str
    answer: str
    token_ids: list[int]
    tiles: int
    image_tokens: int
    seconds: float
    prompt_tokens: int | None = None
    finish_reason: str | None = None


@dataclass
class Outcome:
    """What a state change did. `changed` is False when the row had already moved (a duplicate
    delivery): the caller then must not repeat side effects."""

    changed: bool = False
    document_finished: bool = False
    job_finished: bool = False
    job_id: uuid.UUID | None = None
    job_status: JobStatus | None = None


@dataclass
class StaleWork:
    document_ids: list[uuid.UUID] = field(default_factory=list)
    page_ids: list[int] = field(default_factory=list)


def _now() -> datetime:
    return func.now()  # type: ignore[return-value]  # the database clock, one for all workers


def _lease(seconds: float) -> datetime:
    return func.now() + timedelta(seconds=seconds)  # type: ignore[return-value]


def mark_job_running(session: Session, job_id: uuid.UUID) -> bool:
    """queued -> running (first activity). False when it was not queued."""
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.RUNNING.value, started_at=_now())
        .returning(Job.id)
    ).first()
    return row is not None


def begin_ingest(session: Session, document_id: uuid.UUID) -> Document | None:
    """pending/ingesting -> ingesting, counting the attempt. None when the document is past
    ingest (a duplicate task) or its job was cancelled: the caller then does nothing."""
    document = session.execute(
        update(Document)
        .where(
            Document.id == document_id,
            Document.status.in_([DocumentStatus.PENDING.value, DocumentStatus.INGESTING.value]),
        )
        .values(status=DocumentStatus.INGESTING.value, attempts=Document.attempts + 1)
        .returning(Document)
    ).scalar_one_or_none()
    if document is not None:
        mark_job_running(session, document.job_id)
    return document


def add_pages(
    session: Session,
    document_id: uuid.UUID,
    page_numbers: Sequence[int],
    lease_s: float,
    detected_format: str | None = None,
) -> list[int]:
    """Write the page rows of an ingested document (ingesting -> running) and add them to the
    job's page count, once. Returns the ids of its pages still `pending`, in page order: the
    work to enqueue. Safe to call again for the same document (rows are not duplicated).

    `lease_s`: pending pages count as stale for the reconciler after this long."""
    if not page_numbers:
        raise ValueError("a document without pages must be failed with fail_document")
    document = session.get(Document, document_id)
    if document is None:
        raise LookupError(f"no document {document_id}")
    session.execute(
        insert(Page)
        .values(
            [
                {
                    "job_id": document.job_id,
                    "document_id": document_id,
                    "page_number": number,
                    "leased_until": _lease(lease_s),
                }
                for number in page_numbers
            ]
        )
        .on_conflict_do_nothing(index_elements=["document_id", "page_number"])
    )
    moved = session.execute(
        update(Document)
        .where(Document.id == document_id, Document.status == DocumentStatus.INGESTING.value)
        .values(
            status=DocumentStatus.RUNNING.value,
            page_count=len(page_numbers),
            detected_format=detected_format or Document.detected_format,
        )
        .returning(Document.job_id)
    ).first()
    if moved is not None:
        session.execute(
            update(Job).where(Job.id == moved.job_id).values(pages_total=Job.pages_total + len(page_numbers))
        )
    return list(
        session.scalars(
            select(Page.id)
            .where(Page.document_id == document_id, Page.status == PageStatus.PENDING.value)
            .order_by(Page.page_number)
        )
    )


def mark_pages_queued(session: Session, page_ids: Sequence[int], lease_s: float) -> list[int]:
    """pending/queued (or a running page whose lease ran out) -> queued, with a fresh lease.
    Call in the same transaction just before sending the chunk. Returns the ids moved."""
    return list(
        session.scalars(
            update(Page)
            .where(
                Page.id.in_(page_ids),
                or_(
                    Page.status.in_([PageStatus.PENDING.value, PageStatus.QUEUED.value]),
                    and_(Page.status == PageStatus.RUNNING.value, Page.leased_until < _now()),
                ),
            )
            .values(status=PageStatus.QUEUED.value, leased_until=_lease(lease_s))
            .returning(Page.id)
        )
    )


def claim_pages(
    session: Session, page_ids: Sequence[int], worker: str, lease_s: float, max_attempts: int
) -> tuple[list[Page], Outcome]:
    """Take pages for inference: open pages not held under a live lease by another worker move
    to running with a lease and one more attempt. Pages that already used `max_attempts` (they
    keep killing workers) are failed with `attempts_exhausted` instead. Returns the claimed
    pages in id order and the outcome of those failures (it may end the job)."""
    claimable = and_(
        Page.id.in_(page_ids),
        Page.status.in_(OPEN_PAGE_STATES),
        not_(and_(Page.status == PageStatus.RUNNING.value, Page.leased_until > _now())),
    )
    exhausted = session.scalars(select(Page.id).where(claimable, Page.attempts >= max_attempts)).all()
    outcome = Outcome()
    for page_id in exhausted:
        _merge(
            outcome,
            fail_page(
                session,
                page_id,
                ATTEMPTS_EXHAUSTED,
                f"the page was tried {max_attempts} times without finishing (its worker was lost)",
            ),
        )
    pages = session.scalars(
        update(Page)
        .where(claimable, Page.attempts < max_attempts)
        .values(
            status=PageStatus.RUNNING.value,
            attempts=Page.attempts + 1,
            worker=worker,
            started_at=_now(),
            heartbeat_at=_now(),
            leased_until=_lease(lease_s),
        )
        .returning(Page)
    ).all()
    return sorted(pages, key=lambda page: page.id), outcome


def heartbeat(session: Session, page_ids: Sequence[int], worker: str, lease_s: float) -> int:
    """Extend the lease of the running pages this worker holds. Returns how many."""
    result = session.execute(
        update(Page)
        .where(Page.id.in_(page_ids), Page.status == PageStatus.RUNNING.value, Page.worker == worker)
        .values(heartbeat_at=_now(), leased_until=_lease(lease_s))
        .returning(Page.id)
    )
    return len(result.all())


def complete_page(
    session: Session, page_id: int, results: Sequence[ResultRow], seconds: float | None = None
) -> Outcome:
    """End a page as done and store its answers, bumping the document and job counters once.

    The page is ended first, by a conditional UPDATE: a page that already ended (a duplicate
    delivery) or was cancelled meanwhile gets no answer rows; the unique key on
    (page_id, question_index) makes a second write impossible all the same."""
    page = session.get(Page, page_id)
    if page is None:
        raise LookupError(f"no page {page_id}")
    outcome = _end_page(session, page_id, PageStatus.DONE, seconds=seconds)
    if outcome.changed and results:
        session.execute(
            insert(Result)
            .values(
                [
                    {
                        "job_id": page.job_id,
                        "document_id": page.document_id,
                        "page_id": page_id,
                        "page_number": page.page_number,
                        "question_index": r.question_index,
                        "question": r.question,
                        "answer": r.answer,
                        "token_ids": r.token_ids,
                        "tiles": r.tiles,
                        "image_tokens": r.image_tokens,
                        "prompt_tokens": r.prompt_tokens,
                        "finish_reason": r.finish_reason,
                        "seconds": r.seconds,
                    }
                    for r in results
                ]
            )
            .on_conflict_do_nothing(index_elements=["page_id", "question_index"])
        )
    return outcome


def fail_page(session: Session, page_id: int, code: str, message: str) -> Outcome:
    """End a page as failed with a stable code and a human message."""
    return _end_page(session, page_id, PageStatus.FAILED, code=code, message=message)


def _end_page(
    session: Session,
    page_id: int,
    status: PageStatus,
    code: str | None = None,
    message: str | None = None,
    seconds: float | None = None,
) -> Outcome:
    ended = session.execute(
        update(Page)
        .where(Page.id == page_id, Page.status.in_(OPEN_PAGE_STATES))
        .values(
            status=status.value,
            error_code=code,
            error_message=message,
            finished_at=_now(),
            leased_until=None,
            seconds=seconds,
        )
        .returning(Page.document_id, Page.job_id)
    ).first()
    if ended is None:
        return Outcome()
    done = status is PageStatus.DONE
    counter = "pages_done" if done else "pages_failed"
    session.execute(update(Job).where(Job.id == ended.job_id).values({counter: getattr(Job, counter) + 1}))
    document = session.execute(
        update(Document)
        .where(Document.id == ended.document_id)
        .values({counter: getattr(Document, counter) + 1})
        .returning(Document.page_count, Document.pages_done, Document.pages_failed)
    ).one()
    outcome = Outcome(changed=True, job_id=ended.job_id)
    if document.pages_done + document.pages_failed == document.page_count:
        final = final_document_status(document.pages_done, document.pages_failed)
        _merge(
            outcome, _end_document(session, ended.document_id, final, from_states=(DocumentStatus.RUNNING,))
        )
    return outcome


def fail_document(session: Session, document_id: uuid.UUID, code: str, message: str) -> Outcome:
    """End a document that could not be read as a whole (before it has pages): failed with a
    stable code and a human message. The rest of the job goes on."""
    return _end_document(
        session,
        document_id,
        DocumentStatus.FAILED,
        from_states=(DocumentStatus.PENDING, DocumentStatus.INGESTING),
        code=code,
        message=message,
    )


def _end_document(
    session: Session,
    document_id: uuid.UUID,
    status: DocumentStatus,
    from_states: Sequence[DocumentStatus],
    code: str | None = None,
    message: str | None = None,
) -> Outcome:
    values: dict[str, object] = {"status": status.value, "finished_at": _now()}
    if code is not None:
        values |= {"error_code": code, "error_message": message}
    ended = session.execute(
        update(Document)
        .where(Document.id == document_id, Document.status.in_([s.value for s in from_states]))
        .values(values)
        .returning(Document.job_id)
    ).first()
    if ended is None:
        return Outcome()
    counter = "documents_failed" if status is DocumentStatus.FAILED else "documents_done"
    session.execute(update(Job).where(Job.id == ended.job_id).values({counter: getattr(Job, counter) + 1}))
    outcome = Outcome(changed=True, document_finished=True, job_id=ended.job_id)
    _merge(outcome, finalize_job_if_complete(session, ended.job_id))
    return outcome


def finalize_job_if_complete(session: Session, job_id: uuid.UUID) -> Outcome:
    """End the job when every document has ended. The row lock plus `finalized_at IS NULL`
    make this true for exactly one caller."""
    job = session.execute(
        select(
            Job.documents_total, Job.documents_done, Job.documents_failed, Job.pages_done, Job.pages_failed
        )
        .where(Job.id == job_id, Job.finalized_at.is_(None))
        .with_for_update()
    ).first()
    if job is None or job.documents_done + job.documents_failed < job.documents_total:
        return Outcome(job_id=job_id)
    status = final_job_status(job.documents_failed, job.pages_done, job.pages_failed)
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            status=status.value,
            finalized_at=_now(),
            finished_at=_now(),
            started_at=func.coalesce(Job.started_at, _now()),
        )
    )
    return Outcome(changed=True, job_finished=True, job_id=job_id, job_status=status)


def cancel_job(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a job that has not ended: its open documents and its pending/queued pages are
    cancelled; pages already running may still finish (their answers are kept) but the job
    stays cancelled. False when the job had already ended."""
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.finalized_at.is_(None), Job.status.not_in(JOB_TERMINAL_VALUES))
        .values(status=JobStatus.CANCELLED.value, finalized_at=_now(), finished_at=_now())
        .returning(Job.id)
    ).first()
    if cancelled is None:
        return False
    session.execute(
        update(Page)
        .where(Page.job_id == job_id, Page.status.in_([PageStatus.PENDING.value, PageStatus.QUEUED.value]))
        .values(status=PageStatus.CANCELLED.value, finished_at=_now(), leased_until=None)
    )
    session.execute(
        update(Document)
        .where(Document.job_id == job_id, Document.status.in_(OPEN_DOCUMENT_STATES))
        .values(status=DocumentStatus.CANCELLED.value, finished_at=_now())
    )
    return True


def find_stale_work(session: Session, document_stale_s: float, limit: int = 1000) -> StaleWork:
    """Work Postgres says is open but nobody is doing: documents pending/ingesting untouched for
    `document_stale_s` (their ingest task was lost) and open pages whose lease ran out (their
    chunk was lost with Redis or with a worker). The reconciler sends these again."""
    documents = session.scalars(
        select(Document.id)
        .where(
            Document.status.in_([DocumentStatus.PENDING.value, DocumentStatus.INGESTING.value]),
            Document.updated_at < func.now() - timedelta(seconds=document_stale_s),
        )
        .order_by(Document.updated_at)
        .limit(limit)
    ).all()
    pages = session.scalars(
        select(Page.id)
        .where(Page.status.in_(OPEN_PAGE_STATES), Page.leased_until < func.now())
        .order_by(Page.id)
        .limit(limit)
    ).all()
    return StaleWork(document_ids=list(documents), page_ids=list(pages))


def touch_document(session: Session, document_id: uuid.UUID) -> None:
    """Reset a document's staleness clock (the reconciler just re-sent its ingest task)."""
    session.execute(update(Document).where(Document.id == document_id).values(updated_at=_now()))


def _merge(into: Outcome, other: Outcome) -> None:
    into.changed |= other.changed
    into.document_finished |= other.document_finished
    if other.job_finished:
        into.job_finished = True
        into.job_status = other.job_status
    into.job_id = into.job_id or other.job_id
