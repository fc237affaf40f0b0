"""Job creation: read the request (multipart uploads or JSON with s3:// URIs), check what can be
checked at once, store uploads in S3, write the job and its documents in one transaction.

A bulk request is not refused for one bad file: a document that is already known bad (empty,
unsupported type, over the size limit) is written `failed` with its code and the job goes on.
Only a request unusable as a whole is refused: 413 over the request or job limits, 415 when no
document is supported, 422 for bad options, questions or page selections.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from api.problems import Problem
from api.schemas import JobCreate, JobSpec
from jobs.formats import SNIFF_BYTES, DocumentError, ErrorCode, check_format, safe_filename
from jobs.models import Document, Job
from jobs.queue import try_enqueue_ingest
from jobs.settings import Settings
from jobs.states import DocumentStatus
from jobs.storage import Storage, parse_s3_uri

log = logging.getLogger(__name__)

# Room for multipart boundaries and form fields on top of the documents' own bytes.
REQUEST_OVERHEAD_BYTES = 1024 * 1024
SIZE_CODES = frozenset({ErrorCode.FILE_TOO_LARGE.value})


@dataclass
class Incoming:
    """One document of a request before it is written."""

    filename: str | None
    pages: str | None
    upload: IO[bytes] | None = None  # an uploaded file, positioned anywhere
    size: int | None = None
    source_uri: str | None = None  # for s3:// documents
    format: str | None = None
    error: DocumentError | None = None


def validation_problem(exc: ValidationError, where: str) -> Problem:
    errors = [
        {"location": [where, *(str(part) for part in e["loc"])], "message": e["msg"]} for e in exc.errors()
    ]
    return Problem(422, "The request is not valid; see `errors`.", "validation-error", errors=errors)


def _json_field(form: Any, name: str) -> Any:
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Problem(
            422, f"Form field `{name}` must be JSON: {exc}", "validation-error", errors=[{"location": [name]}]
        ) from exc


def spec_from_form(form: Any) -> JobSpec:
    fields = {
        "task": form.get("task") or "ocr",
        "questions": _json_field(form, "questions"),
        "options": _json_field(form, "options"),
        "metadata": _json_field(form, "metadata"),
        "webhook_url": form.get("webhook_url") or None,
        "pages": form.get("pages") or None,
    }
    try:
        return JobSpec.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise validation_problem(exc, "body") from exc


def incoming_uploads(form: Any, spec: JobSpec, settings: Settings) -> list[Incoming]:
    uploads = [item for item in form.getlist("files") if isinstance(item, UploadFile)]
    if not uploads:
        raise Problem(422, "Upload at least one document as a `files` part.", "validation-error")
    docs = []
    for upload in uploads:
        upload.file.seek(0, 2)
        size = upload.file.tell()
        upload.file.seek(0)
        docs.append(Incoming(filename=upload.filename, pages=spec.pages, upload=upload.file, size=size))
    return docs


def incoming_uris(body: JobCreate) -> list[Incoming]:
    return [
        Incoming(
            filename=doc.filename or parse_s3_uri(doc.uri).key.rsplit("/", 1)[-1],
            pages=doc.pages or body.pages,
            source_uri=doc.uri,
        )
        for doc in body.documents
    ]


def check_request(spec: JobSpec, docs: list[Incoming], settings: Settings) -> None:
    """Refuse requests unusable as a whole; mark documents known bad at upload."""
    if len(docs) > settings.max_documents_per_job:
        raise Problem(
            413,
            f"{len(docs)} documents; a job takes at most {settings.max_documents_per_job}.",
            "too-many-documents",
        )
    if len(spec.questions) > settings.max_questions:
        raise Problem(422, f"At most {settings.max_questions} questions per job.", "validation-error")
    if any(len(q) > settings.max_question_chars for q in spec.questions):
        raise Problem(
            422, f"Questions are limited to {settings.max_question_chars} characters.", "validation-error"
        )
    total = sum(doc.size or 0 for doc in docs)
    if total > settings.max_job_bytes:
        raise Problem(
            413,
            f"The documents total {total} bytes; a job takes at most {settings.max_job_bytes}.",
            "job-too-large",
        )
    for doc in docs:
        if doc.upload is None:
            continue
        if doc.size and doc.size > settings.max_file_bytes:
            doc.error = DocumentError(
                ErrorCode.FILE_TOO_LARGE,
                f"The file has {doc.size} bytes; the limit is {settings.max_file_bytes} bytes per document.",
            )
            continue
        head = doc.upload.read(SNIFF_BYTES)
        doc.upload.seek(0)
        try:
            doc.format = check_format(head).value
        except DocumentError as exc:
            doc.error = exc
    if all(doc.error is not None for doc in docs):
        errors = [
            {"filename": safe_filename(doc.filename or ""), **doc.error.to_dict()}
            for doc in docs
            if doc.error
        ]
        if all(doc.error is not None and doc.error.code.value in SIZE_CODES for doc in docs):
            raise Problem(413, "Every document is over the size limit.", "file-too-large", errors=errors)
        raise Problem(
            415,
            "No document of the request can be read; see `errors`.",
            "unsupported-documents",
            errors=errors,
        )


def find_job(session: Session, tenant_id: int, idempotency_key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key)
    )


def pending_document_ids(session: Session, job_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(Document.id)
            .where(Document.job_id == job_id, Document.status == DocumentStatus.PENDING.value)
            .order_by(Document.ordinal)
        )
    )


def create_job(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: int,
    spec: JobSpec,
    docs: list[Incoming],
    idempotency_key: str | None,
) -> tuple[uuid.UUID, bool]:
    """Write the job (or find the one made with the same idempotency key) and send its ingest
    tasks. Returns the job id and whether it already existed."""
    if idempotency_key:
        existing = find_job(session, tenant_id, idempotency_key)
        if existing is not None:
            # A retry after the first attempt died between commit and enqueue must not leave
            # its documents waiting for the reconciler; ingest tolerates a second task.
            try_enqueue_ingest(pending_document_ids(session, existing.id), settings)
            return existing.id, True
    check_request(spec, docs, settings)
    job_id = uuid.uuid4()
    rows = []
    for ordinal, doc in enumerate(docs):
        document_id = uuid.uuid4()
        row = Document(
            id=document_id,
            job_id=job_id,
            ordinal=ordinal,
            filename=safe_filename(doc.filename) if doc.filename is not None else None,
            source_uri=doc.source_uri,
            size_bytes=doc.size,
            detected_format=doc.format,
            page_selection=doc.pages,
        )
        if doc.error is not None:
            row.status = DocumentStatus.FAILED.value
            row.error_code = doc.error.code.value
            row.error_message = doc.error.message
        elif doc.upload is not None:
            key = storage.input_key(job_id, document_id)
            storage.put(key, doc.upload)
            row.input_key = key
            row.source_uri = storage.uri(key)
        rows.append(row)
    failed = sum(1 for doc in docs if doc.error is not None)
    job = Job(
        id=job_id,
        tenant_id=tenant_id,
        task=spec.task.value,
        questions=spec.questions,
        options=spec.options.model_dump(),
        job_metadata=spec.metadata,
        webhook_url=spec.webhook_url,
        idempotency_key=idempotency_key or None,
        documents_total=len(docs),
        documents_failed=failed,
    )
    session.add(job)
    session.flush()  # the job row first: documents reference it
    session.add_all(rows)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        # Two requests with one idempotency key raced; the other one's job is the answer.
        existing = find_job(session, tenant_id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing.id, True
    # Sent only after the commit, so an ingest task never looks for rows that do not exist yet.
    try_enqueue_ingest([row.id for row in rows if row.status == DocumentStatus.PENDING.value], settings)
    return job_id, False
