"""Request and response bodies of the HTTP API. Every field carries a description: they are the
reference documentation in `/openapi.json`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.formats import DocumentError, validate_page_selection
from jobs.states import DocumentStatus, JobStatus, TaskKind

MAX_NEW_TOKENS = 8192
PAGES_DESCRIPTION = (
    'Pages to read, 1-based, e.g. "1-3,7". Leave out for every page. A page beyond the end of '
    "the document fails that document with `page_out_of_range`."
)


def check_pages(value: str | None) -> str | None:
    """Validate a page selection's syntax (ValueError -> 422)."""
    if value is not None:
        try:
            validate_page_selection(value)
        except DocumentError as exc:
            raise ValueError(exc.message) from exc
    return value


class JobOptions(BaseModel):
    """Inference knobs of a job. Defaults are those of the published Mini-Monkey evaluation."""

    model_config = ConfigDict(extra="forbid")

    msac: bool = Field(True, description="Multi-scale adaptive cropping; false tiles at one scale only.")
    scm: bool = Field(
        False, description="Scale compression mechanism: drop part of one scale's image tokens."
    )
    scm_keep_ratio: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of the compressed scale's image tokens SCM keeps."
    )
    max_new_tokens: int = Field(512, ge=1, le=MAX_NEW_TOKENS, description="Most tokens generated per answer.")
    detail_min_tiles: int = Field(4, ge=1, le=64, description="Fewest 448x448 tiles at the detail scale.")
    detail_max_tiles: int = Field(12, ge=1, le=64, description="Most 448x448 tiles at the detail scale.")
    adaptive_min_tiles: int = Field(3, ge=1, le=64, description="Fewest tiles at the adaptive scale.")
    adaptive_max_tiles: int = Field(7, ge=1, le=64, description="Most tiles at the adaptive scale.")

    @model_validator(mode="after")
    def _ranges(self) -> JobOptions:
        if self.detail_min_tiles > self.detail_max_tiles:
            raise ValueError("detail_min_tiles must not exceed detail_max_tiles")
        if self.adaptive_min_tiles > self.adaptive_max_tiles:
            raise ValueError("adaptive_min_tiles must not exceed adaptive_max_tiles")
        return self


class JobSpec(BaseModel):
    """What to do with the documents: shared by the multipart and the JSON form of `POST /v1/jobs`."""

    model_config = ConfigDict(extra="forbid")

    task: TaskKind = Field(
        TaskKind.OCR, description="`ocr`: the text of every page; `qa`: answer `questions`."
    )
    questions: list[str] = Field(
        default_factory=list, description="Questions asked of every page (task `qa` only), in order."
    )
    options: JobOptions = Field(default_factory=JobOptions, description="Inference knobs.")
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Free JSON object kept with the job and returned as given."
    )
    webhook_url: str | None = Field(
        None,
        description="Called with a POST of the final job object when the job ends, signed with "
        "`X-Monkeyjobs-Signature: sha256=<HMAC-SHA256 of the body under the tenant's secret>`.",
    )
    pages: str | None = Field(None, description=PAGES_DESCRIPTION + " Applies to every document.")

    _check_pages = field_validator("pages")(check_pages)

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _questions_match_task(self) -> JobSpec:
        if self.task is TaskKind.QA and not self.questions:
            raise ValueError("task `qa` needs at least one question")
        if self.task is TaskKind.OCR and self.questions:
            raise ValueError("task `ocr` takes no questions; use task `qa` to ask questions")
        if any(not question.strip() for question in self.questions):
            raise ValueError("questions must not be empty")
        return self


class DocumentSource(BaseModel):
    """A document already in S3, read by the workers with the service's credentials."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(description="`s3://bucket/key` of the document.")
    filename: str | None = Field(None, description="Name shown in status and results; default: the key.")
    pages: str | None = Field(None, description=PAGES_DESCRIPTION + " Overrides the job's `pages`.")

    _check_pages = field_validator("pages")(check_pages)

    @field_validator("uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        from jobs.storage import parse_s3_uri

        parse_s3_uri(value)
        return value


class JobCreate(JobSpec):
    """JSON form of `POST /v1/jobs` (`Content-Type: application/json`)."""

    documents: list[DocumentSource] = Field(min_length=1, description="The documents of the job, in order.")


class JobCreateMultipart(BaseModel):
    """Multipart form of `POST /v1/jobs` (`multipart/form-data`): the documents are uploaded."""

    files: list[bytes] = Field(description="The documents, one `files` part each (repeat the field).")
    task: TaskKind = Field(TaskKind.OCR, description="`ocr` or `qa`.")
    questions: str | None = Field(None, description='JSON list of questions, e.g. `["Who signed?"]` (qa).')
    options: str | None = Field(None, description="JSON object of `JobOptions`.")
    metadata: str | None = Field(None, description="JSON object kept with the job.")
    webhook_url: str | None = Field(None, description="URL called when the job ends.")
    pages: str | None = Field(None, description=PAGES_DESCRIPTION)


class Counts(BaseModel):
    documents: int = Field(description="Documents in the job.")
    documents_failed: int = Field(description="Documents that failed as a whole (see their `error`).")
    pages: int = Field(description="Pages found so far in the documents read (selected pages only).")
    pages_done: int = Field(description="Pages answered.")
    pages_failed: int = Field(description="Pages that failed (see `page_errors`).")


class ErrorInfo(BaseModel):
    code: str = Field(description="Stable error code (see docs/errors.md).")
    message: str | None = Field(description="What was wrong, for humans.")


class PageError(BaseModel):
    page: int = Field(description="1-based page number in the document.")
    code: str | None = Field(description="Stable error code.")
    message: str | None = Field(description="What was wrong, for humans.")


class DocumentOut(BaseModel):
    id: uuid.UUID = Field(description="Document id.")
    filename: str | None = Field(description="Name as submitted, control characters escaped.")
    status: DocumentStatus = Field(description="Document status.")
    format: str | None = Field(description="Format recognised from the content (`pdf`, `png`, ...).")
    pages: int | None = Field(description="Pages selected for reading; null until the document is read.")
    pages_done: int = Field(description="Pages answered.")
    pages_failed: int = Field(description="Pages failed.")
    error: ErrorInfo | None = Field(description="Why the whole document failed, if it did.")
    page_errors: list[PageError] = Field(description="Pages that failed, with their reasons.")
    result: str | None = Field(description="`s3://` URI of the document's JSONL once written.")
    result_url: str | None = Field(
        None, description="API path that redirects to a presigned URL of the JSONL, once written."
    )


class JobSummary(BaseModel):
    id: uuid.UUID = Field(description="Job id.")
    status: JobStatus = Field(description="queued, running, succeeded, partial, failed or cancelled.")
    task: TaskKind = Field(description="`ocr` or `qa`.")
    questions: list[str] = Field(description="Questions asked (qa).")
    options: dict[str, Any] = Field(description="Effective inference options.")
    metadata: dict[str, Any] = Field(description="The submitter's metadata.")
    created_at: datetime = Field(description="When the job was accepted.")
    started_at: datetime | None = Field(description="When work on it started.")
    finished_at: datetime | None = Field(description="When it ended.")
    counts: Counts = Field(description="Progress counters.")


class JobOut(JobSummary):
    documents: list[DocumentOut] = Field(description="Every document with its status and errors.")
    results_url: str = Field(description="API path of the paginated answers.")
    manifest: str | None = Field(description="`s3://` URI of the job manifest, once the job ended.")


class JobList(BaseModel):
    items: list[JobSummary] = Field(description="Jobs, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class ResultItem(BaseModel):
    document_id: uuid.UUID = Field(description="Document id.")
    filename: str | None = Field(description="Document name as submitted (escaped).")
    page: int = Field(description="1-based page number.")
    question_index: int = Field(description="Index of the question in the job's `questions` (0 for OCR).")
    question: str = Field(description="The prompt asked.")
    answer: str = Field(description="The model's answer (the page text for OCR).")
    finish_reason: str | None = Field(description="`stop` (end of answer) or `length` (max_new_tokens hit).")


class ResultList(BaseModel):
    items: list[ResultItem] = Field(description="Answers in document, page, question order.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class ProblemDetails(BaseModel):
    """An error (RFC 9457), served as `application/problem+json`."""

    type: str = Field(description="URI identifying the kind of problem (`about:blank` for plain HTTP ones).")
    title: str = Field(description="Short summary of the HTTP status.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What went wrong in this case.")
    instance: str = Field(description="Path of the request.")
    errors: list[dict[str, Any]] | None = Field(
        None, description="Per-field (validation) or per-document (refused upload) errors."
    )


class Readiness(BaseModel):
    ready: bool = Field(description="True when every dependency answered.")
    checks: dict[str, str] = Field(description="`ok` or the error, per dependency (postgres, redis, s3).")
