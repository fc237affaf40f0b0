"""The `/v1` job routes. Thin: parsing and shaping here, state changes in `jobs.*`."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from api.problems import Problem
from api.schemas import (
    JobCreate,
    JobCreateMultipart,
    JobList,
    JobOut,
    JobSummary,
    ProblemDetails,
    ResultItem,
    ResultList,
)
from api.submit import create_job, incoming_uploads, incoming_uris, spec_from_form, validation_problem
from jobs import lifecycle, progress
from jobs.models import Document, Job, Result, Tenant
from jobs.states import JobStatus
from jobs.storage import Storage

router = APIRouter(prefix="/v1", tags=["jobs"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemDetails, "content": {"application/problem+json": {}}, "description": phrase}
    for code, phrase in (
        (401, "No valid API key."),
        (404, "No such job for this tenant."),
        (422, "Invalid request."),
    )
}
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/JobCreateMultipart"}},
            "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
        },
    }
}
# Schemas referenced only from CREATE_BODY; `api.app` adds them to the OpenAPI components.
EXTRA_SCHEMAS = (JobCreate, JobCreateMultipart)


def encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise Problem(422, "The cursor is not one this API returned.", "invalid-cursor") from exc
    if not isinstance(values, list) or len(values) != arity:
        raise Problem(422, "The cursor is not one this API returned.", "invalid-cursor")
    return values


def tenant_job(session: Session, tenant: Tenant, job_id: uuid.UUID) -> Job:
    """The job if it belongs to `tenant`; 404 otherwise (another tenant's job does not exist)."""
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant.id:
        raise Problem(404, f"No job {job_id}.", "job-not-found")
    return job


def job_view(session: Session, storage: Storage, job: Job) -> JobOut:
    """The job as `GET /v1/jobs/{id}` shows it: the manifest's shape plus API links."""
    documents = session.scalars(
        select(Document).where(Document.job_id == job.id, Document.result_key.is_not(None))
    )
    result_uri = {doc.id: storage.uri(doc.result_key) for doc in documents if doc.result_key}
    manifest = progress.build_manifest(session, job.id, result_uri)
    for doc in manifest["documents"]:
        if doc["result"]:
            doc["result_url"] = f"/v1/jobs/{job.id}/documents/{doc['id']}/result"
    manifest["results_url"] = f"/v1/jobs/{job.id}/results"
    manifest["manifest"] = storage.uri(job.manifest_key) if job.manifest_key else None
    return JobOut.model_validate(manifest)


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        status=JobStatus(job.status),
        task=job.task,
        questions=job.questions,
        options=job.options,
        metadata=job.job_metadata,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        counts={
            "documents": job.documents_total,
            "documents_failed": job.documents_failed,
            "pages": job.pages_total,
            "pages_done": job.pages_done,
            "pages_failed": job.pages_failed,
        },
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses={
        **ERRORS,
        413: ERRORS[422] | {"description": "Over a request or job limit."},
        415: ERRORS[422] | {"description": "No document of the request is supported."},
    },
    openapi_extra=CREATE_BODY,
    summary="Submit a job",
)
async def submit_job(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    tenant: TenantDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="The same key from the same tenant returns the same job."),
    ] = None,
) -> JobOut:
    """Accept documents (multipart upload, or JSON with `s3://` URIs) and queue the job.

    Answers 202 with the job and a `Location` header. Documents already known bad are listed
    `failed` with their error code; the job goes on with the rest."""
    content_type = request.headers.get("content-type", "")
    length = int(request.headers.get("content-length") or 0)
    if length > settings.max_job_bytes + 1024 * 1024:
        raise Problem(
            413,
            f"The request has {length} bytes; a job takes at most {settings.max_job_bytes}.",
            "job-too-large",
        )
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=settings.max_documents_per_job + 1)
        try:
            spec = spec_from_form(form)
            docs = incoming_uploads(form, spec, settings)
            job_id, replayed = await run_in_threadpool(
                create_job, session, storage, settings, tenant.id, spec, docs, idempotency_key
            )
        finally:
            await form.close()
    elif content_type.startswith("application/json"):
        try:
            body = JobCreate.model_validate_json(await request.body())
        except ValidationError as exc:
            raise validation_problem(exc, "body") from exc
        job_id, replayed = await run_in_threadpool(
            create_job, session, storage, settings, tenant.id, body, incoming_uris(body), idempotency_key
        )
    else:
        raise Problem(
            415,
            "Send `multipart/form-data` (uploads) or `application/json` (s3:// URIs).",
            "unsupported-media-type",
        )
    response.headers["Location"] = f"/v1/jobs/{job_id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return await run_in_threadpool(lambda: job_view(session, storage, session.get_one(Job, job_id)))


@router.get("/jobs", response_model=JobList, responses=ERRORS, summary="List jobs")
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Jobs per page (default and maximum: settings).")
    ] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JobList:
    """The tenant's jobs, newest first, with cursor pagination."""
    size = min(limit or settings.page_size_default, settings.page_size_max)
    query = select(Job).where(Job.tenant_id == tenant.id)
    if status is not None:
        query = query.where(Job.status == status.value)
    if cursor:
        created, last_id = decode_cursor(cursor, 2)
        try:
            key = (datetime.fromisoformat(created), uuid.UUID(last_id))
        except (TypeError, ValueError) as exc:
            raise Problem(422, "The cursor is not one this API returned.", "invalid-cursor") from exc
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*key))
    jobs = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(size + 1)))
    more = len(jobs) > size
    jobs = jobs[:size]
    next_cursor = encode_cursor([jobs[-1].created_at.isoformat(), str(jobs[-1].id)]) if more else None
    return JobList(items=[job_summary(job) for job in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=ERRORS, summary="Get a job")
def get_job(job_id: uuid.UUID, session: SessionDep, storage: StorageDep, tenant: TenantDep) -> JobOut:
    """Status, counts, per-document errors and where the results are."""
    return job_view(session, storage, tenant_job(session, tenant, job_id))


@router.get("/jobs/{job_id}/results", response_model=ResultList, responses=ERRORS, summary="List answers")
def list_results(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    tenant: TenantDep,
    limit: Annotated[int | None, Query(ge=1, description="Answers per page.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> ResultList:
    """The job's answers so far, in document, page and question order, with cursor pagination."""
    tenant_job(session, tenant, job_id)
    size = min(limit or settings.page_size_default, settings.page_size_max)
    order = (Document.ordinal, Result.page_number, Result.question_index)
    query = (
        select(Result, Document.ordinal, Document.filename)
        .join(Document, Document.id == Result.document_id)
        .where(Result.job_id == job_id)
    )
    if cursor:
        values = decode_cursor(cursor, 3)
        if not all(isinstance(value, int) for value in values):
            raise Problem(422, "The cursor is not one this API returned.", "invalid-cursor")
        query = query.where(tuple_(*order) > tuple_(*values))
    rows = session.execute(query.order_by(*order).limit(size + 1)).all()
    more = len(rows) > size
    rows = rows[:size]
    items = [
        ResultItem(
            document_id=result.document_id,
            filename=filename,
            page=result.page_number,
            question_index=result.question_index,
            question=result.question,
            answer=result.answer,
            finish_reason=result.finish_reason,
        )
        for result, _, filename in rows
    ]
    next_cursor = None
    if more:
        last, ordinal, _ = rows[-1]
        next_cursor = encode_cursor([ordinal, last.page_number, last.question_index])
    return ResultList(items=items, next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}/documents/{document_id}/result",
    status_code=307,
    response_class=RedirectResponse,
    responses={**ERRORS, 307: {"description": "Redirect to a presigned URL of the document's JSONL."}},
    summary="Download a document's results",
)
def document_result(
    job_id: uuid.UUID, document_id: uuid.UUID, session: SessionDep, storage: StorageDep, tenant: TenantDep
) -> RedirectResponse:
    """Redirects to a presigned S3 URL of the document's JSONL (one line per answer)."""
    tenant_job(session, tenant, job_id)
    document = session.get(Document, document_id)
    if document is None or document.job_id != job_id:
        raise Problem(404, f"No document {document_id} in job {job_id}.", "document-not-found")
    if not document.result_key:
        raise Problem(404, "The document's results are not written yet.", "results-not-ready")
    return RedirectResponse(storage.presign_get(document.result_key), status_code=307)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**ERRORS, 409: ERRORS[422] | {"description": "The job has already ended."}},
    summary="Cancel a job",
)
def cancel_job(job_id: uuid.UUID, session: SessionDep, storage: StorageDep, tenant: TenantDep) -> JobOut:
    """Cancel a job that has not ended: pages not yet started are not run. The manifest and the
    webhook of the cancelled job follow from the workers' reconciler."""
    job = tenant_job(session, tenant, job_id)
    if not lifecycle.cancel_job(session, job.id):
        session.rollback()
        raise Problem(409, f"Job {job_id} has already ended ({job.status}).", "job-ended")
    session.commit()
    session.refresh(job)
    return job_view(session, storage, job)
