"""The Postgres schema as SQLAlchemy 2 typed models. Alembic revisions in `migrations/` follow it.

Invariants the database itself enforces (so that racing workers cannot break them):
- one page row per (document, page number) and one result row per (page, question index):
  a second write of the same result is a unique-key conflict, never a duplicate;
- one job per (tenant, idempotency key);
- statuses are checked against `jobs.states`.
Counters are only ever changed with `UPDATE ... SET n = n + 1` (see `jobs.progress`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from jobs.states import DocumentStatus, JobStatus, PageStatus, TaskKind

# Deterministic constraint names so that migrations can drop exactly what they created.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONB,
        list[Any]: JSONB,
        list[str]: JSONB,
        list[int]: JSONB,
    }


def _in(column: str, enum: type[StrEnum]) -> str:
    values = ", ".join(f"'{member.value}'" for member in enum)
    return f"{column} IN ({values})"


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def _counter() -> Mapped[int]:
    # server_default too, so that rows inserted by plain SQL start at zero as well.
    return mapped_column(Integer, default=0, server_default="0")


def _status(initial: StrEnum) -> Mapped[str]:
    return mapped_column(String(16), default=initial.value, server_default=initial.value)


class Tenant(Base):
    """A customer: owns API keys and jobs; signs its webhooks with its own secret."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    webhook_secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = _created()

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant")


class ApiKey(Base):
    """An API key, stored as the sha256 of the secret (keys are random, so no salt is needed)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32))  # shown to operators to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key"),
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint(_in("task", TaskKind), name="task"),
        Index("ix_jobs_tenant_id_created_at_id", "tenant_id", "created_at", "id"),
        Index("ix_jobs_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = _status(JobStatus.QUEUED)
    task: Mapped[str] = mapped_column(String(8))
    questions: Mapped[list[str]] = mapped_column(default=list, server_default="[]")
    options: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # `metadata` is reserved on declarative classes; the column keeps the API's name.
    job_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict, server_default="{}")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))

    documents_total: Mapped[int] = _counter()
    documents_done: Mapped[int] = _counter()  # ended succeeded or partial
    documents_failed: Mapped[int] = _counter()
    pages_total: Mapped[int] = _counter()
    pages_done: Mapped[int] = _counter()
    pages_failed: Mapped[int] = _counter()

    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by the one UPDATE that ends the job (`... WHERE finalized_at IS NULL`): the job ends once.
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    manifest_key: Mapped[str | None] = mapped_column(Text)
    webhook_delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    webhook_attempts: Mapped[int] = _counter()
    webhook_last_error: Mapped[str | None] = mapped_column(Text)

    tenant: Mapped[Tenant] = relationship()
    documents: Mapped[list[Document]] = relationship(
        back_populates="job", order_by="Document.ordinal", passive_deletes=True
    )


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("job_id", "ordinal"),
        CheckConstraint(_in("status", DocumentStatus), name="status"),
        Index("ix_documents_status_updated_at", "status", "updated_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)  # position in the submission, from 0
    # As given, with control characters escaped (`jobs.formats.safe_filename`); never used as a path.
    filename: Mapped[str | None] = mapped_column(Text)
    # s3://bucket/key the ingest worker reads; NULL for an upload refused at once (nothing stored).
    source_uri: Mapped[str | None] = mapped_column(Text)
    input_key: Mapped[str | None] = mapped_column(Text)  # our copy under inputs/, for uploads
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    detected_format: Mapped[str | None] = mapped_column(String(32))
    page_selection: Mapped[str | None] = mapped_column(Text)  # e.g. "1-3,7"; NULL = every page
    page_count: Mapped[int | None] = mapped_column(Integer)  # pages selected, set by ingest
    pages_done: Mapped[int] = _counter()
    pages_failed: Mapped[int] = _counter()
    status: Mapped[str] = _status(DocumentStatus.PENDING)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = _counter()  # ingest attempts
    result_key: Mapped[str | None] = mapped_column(Text)  # the JSONL, once written
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    job: Mapped[Job] = relationship(back_populates="documents")


class Page(Base):
    __tablename__ = "pages"
    __table_args__ = (
        UniqueConstraint("document_id", "page_number"),
        CheckConstraint(_in("status", PageStatus), name="status"),
        CheckConstraint("page_number >= 1", name="page_number"),
        # The reconciler's scan: non-terminal pages whose lease ran out.
        Index("ix_pages_status_leased_until", "status", "leased_until"),
        Index("ix_pages_job_id_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    page_number: Mapped[int] = mapped_column(Integer)  # 1-based, in the original document
    status: Mapped[str] = _status(PageStatus.PENDING)
    attempts: Mapped[int] = _counter()
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))  # hostname/pid that holds or held it
    # Queued or running work is considered lost when this passes without a heartbeat.
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seconds: Mapped[float | None] = mapped_column(Float)  # engine time, for the latency metric


class Result(Base):
    """One answer: for `ocr` jobs question_index 0 with the OCR prompt, for `qa` one per question."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("page_id", "question_index"),
        Index("ix_results_job_id_document_id_page_number", "job_id", "document_id", "page_number"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    page_id: Mapped[int] = mapped_column(ForeignKey("pages.id", ondelete="CASCADE"))
    page_number: Mapped[int] = mapped_column(Integer)
    question_index: Mapped[int] = mapped_column(Integer)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list[int]] = mapped_column(default=list, server_default="[]")
    tiles: Mapped[int] = mapped_column(Integer)
    image_tokens: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = _created()
