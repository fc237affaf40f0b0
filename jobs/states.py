"""Lifecycle of jobs, documents and pages: the states, which are final, and the allowed moves.

Workers and the API move rows only along `*_TRANSITIONS`; `check_transition` is the guard, and
the SQL updates in `jobs.models`/workers filter on the source states so that a race between two
writers leaves the row in one legal state.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted, no page has started yet
    RUNNING = "running"  # at least one document is being ingested or a page inferred
    SUCCEEDED = "succeeded"  # every document and page done
    PARTIAL = "partial"  # finished, some documents or pages failed, some did not
    FAILED = "failed"  # finished, nothing succeeded
    CANCELLED = "cancelled"  # the submitter cancelled it before it finished


class DocumentStatus(StrEnum):
    PENDING = "pending"  # row written, ingest task sent
    INGESTING = "ingesting"  # a worker is fetching and counting pages
    RUNNING = "running"  # pages written and queued for inference
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some of its pages failed
    FAILED = "failed"  # the document as a whole failed (error_code says why)
    CANCELLED = "cancelled"


class PageStatus(StrEnum):
    PENDING = "pending"  # row written, not yet sent to a GPU queue
    QUEUED = "queued"  # sent in a chunk to the gpu queue
    RUNNING = "running"  # a GPU worker holds it (lease in `pages.leased_until`)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    OCR = "ocr"
    QA = "qa"


JOB_TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED}
)
DOCUMENT_TERMINAL: frozenset[DocumentStatus] = frozenset(
    {DocumentStatus.SUCCEEDED, DocumentStatus.PARTIAL, DocumentStatus.FAILED, DocumentStatus.CANCELLED}
)
PAGE_TERMINAL: frozenset[PageStatus] = frozenset({PageStatus.DONE, PageStatus.FAILED, PageStatus.CANCELLED})

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, *JOB_TERMINAL}),
    JobStatus.RUNNING: JOB_TERMINAL,
    **{s: frozenset() for s in JOB_TERMINAL},
}
DOCUMENT_TRANSITIONS: dict[DocumentStatus, frozenset[DocumentStatus]] = {
    DocumentStatus.PENDING: frozenset(
        {DocumentStatus.INGESTING, DocumentStatus.FAILED, DocumentStatus.CANCELLED}
    ),
    # Ingest may be redelivered after a worker died mid-way: INGESTING -> INGESTING is a retry.
    DocumentStatus.INGESTING: frozenset(
        {DocumentStatus.INGESTING, DocumentStatus.RUNNING, DocumentStatus.FAILED, DocumentStatus.CANCELLED}
    ),
    DocumentStatus.RUNNING: frozenset(
        {DocumentStatus.SUCCEEDED, DocumentStatus.PARTIAL, DocumentStatus.FAILED, DocumentStatus.CANCELLED}
    ),
    **{s: frozenset() for s in DOCUMENT_TERMINAL},
}
PAGE_TRANSITIONS: dict[PageStatus, frozenset[PageStatus]] = {
    PageStatus.PENDING: frozenset({PageStatus.QUEUED, PageStatus.FAILED, PageStatus.CANCELLED}),
    # QUEUED -> QUEUED and RUNNING -> QUEUED are the reconciler re-sending lost or stale work.
    PageStatus.QUEUED: frozenset({PageStatus.QUEUED, PageStatus.RUNNING, *PAGE_TERMINAL}),
    PageStatus.RUNNING: frozenset({PageStatus.QUEUED, PageStatus.RUNNING, *PAGE_TERMINAL}),
    **{s: frozenset() for s in PAGE_TERMINAL},
}


class IllegalTransition(ValueError):
    """A state change that the lifecycle does not allow."""


def check_transition(
    table: dict[JobStatus, frozenset[JobStatus]]
    | dict[DocumentStatus, frozenset[DocumentStatus]]
    | dict[PageStatus, frozenset[PageStatus]],
    source: StrEnum,
    target: StrEnum,
) -> None:
    """Raise `IllegalTransition` unless `source -> target` is allowed by `table`."""
    if target not in table[source]:  # type: ignore[index]
        raise IllegalTransition(f"{source.value} -> {target.value} is not allowed")


def final_job_status(documents_failed: int, pages_done: int, pages_failed: int) -> JobStatus:
    """The status a finished, not cancelled, job ends in, from its counters.

    `succeeded` when nothing failed, `failed` when nothing produced an answer, `partial` between.
    """
    if documents_failed == 0 and pages_failed == 0:
        return JobStatus.SUCCEEDED
    if pages_done == 0:
        return JobStatus.FAILED
    return JobStatus.PARTIAL


def final_document_status(pages_done: int, pages_failed: int) -> DocumentStatus:
    """The status of a document whose pages have all ended."""
    if pages_failed == 0:
        return DocumentStatus.SUCCEEDED
    if pages_done == 0:
        return DocumentStatus.FAILED
    return DocumentStatus.PARTIAL
