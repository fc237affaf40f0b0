"""Every knob of the service, read once from `MONKEYJOBS_*` environment variables.

One typed object is shared by the API, the workers and the CLI so that a name means the same
thing everywhere; `docs/configuration.md` is generated from the field descriptions below.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MONKEYJOBS_"


class Settings(BaseSettings):
    """Service configuration. Each field `name` is read from `MONKEYJOBS_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- stores -------------------------------------------------------------------------------
    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/monkeyjobs",
        description="SQLAlchemy URL of the Postgres database (driver psycopg 3).",
    )
    database_pool_size: int = Field(5, ge=1, description="Connections kept open per process.")
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker URL (Redis); also read for queue depth."
    )
    s3_endpoint_url: str = Field(
        "", description="S3 endpoint (MinIO, moto, ...). Empty means AWS S3 for the region."
    )
    s3_bucket: str = Field("monkeyjobs", description="Bucket for uploaded inputs and results.")
    s3_prefix: str = Field(
        "", description="Key prefix under which every object of the service lives (e.g. `prod/`)."
    )
    s3_region: str = Field("us-east-1", description="S3 region name passed to boto3.")
    s3_presign_seconds: int = Field(
        3600, ge=1, description="Lifetime of the presigned result URLs the API redirects to."
    )

    # --- model and GPU worker -----------------------------------------------------------------
    model: str = Field(
        "mx262/MiniMonkey",
        description="Mini-Monkey checkpoint: a local directory or a Hugging Face hub id.",
    )
    device: str = Field(
        "", description="Torch device for the engine (`cuda`, `cuda:1`, `cpu`); empty = auto."
    )
    dtype: str = Field(
        "", description="Engine dtype (`bfloat16`, `float32`); empty = bf16 on CUDA, float32 on CPU."
    )
    gpu_chunk_pages: int = Field(
        8, ge=1, description="Pages per inference task: the unit a GPU worker takes and acknowledges."
    )
    max_batch_tiles: int = Field(
        256, ge=1, description="Most 448x448 tiles the engine puts into one vision-encoder batch."
    )

    # --- upload and document limits -----------------------------------------------------------
    max_file_bytes: int = Field(100 * 1024**2, ge=1, description="Largest single document, in bytes.")
    max_job_bytes: int = Field(
        1024**3, ge=1, description="Largest total size of the documents of one job (and of one request)."
    )
    max_documents_per_job: int = Field(1000, ge=1, description="Most documents in one job.")
    max_pages_per_document: int = Field(2000, ge=1, description="Most pages read from one document.")
    max_pages_per_job: int = Field(20000, ge=1, description="Most pages in one job, all documents together.")
    max_page_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Most pixels of one rendered page; larger PDF pages are rendered at a lower DPI, "
        "larger images fail with `page_over_pixel_cap`.",
    )
    pdf_dpi: int = Field(200, ge=36, le=1200, description="Resolution at which PDF pages are rendered.")
    render_timeout_s: float = Field(
        60.0, gt=0, description="Longest time decoding or rendering one page may take before it fails."
    )
    render_memory_bytes: int = Field(
        2 * 1024**3,
        ge=64 * 1024**2,
        description="Memory the isolated renderer of one document may add to its start-up footprint; "
        "a page that needs more fails with `render_memory_exceeded`.",
    )
    max_questions: int = Field(32, ge=1, description="Most questions in one `qa` job.")
    max_question_chars: int = Field(2000, ge=1, description="Longest question, in characters.")

    # --- reliability --------------------------------------------------------------------------
    visibility_timeout_s: int = Field(
        3600,
        ge=60,
        description="Redis visibility timeout: an unacknowledged task is redelivered after this long. "
        "Must exceed the longest chunk.",
    )
    page_lease_s: int = Field(
        900,
        ge=10,
        description="A page queued or running without a heartbeat for this long is stale and re-enqueued.",
    )
    reconcile_interval_s: float = Field(
        60.0, gt=0, description="How often the reconciler scans Postgres for stale work."
    )
    max_page_attempts: int = Field(
        3, ge=1, description="Attempts before a page that keeps failing (or killing its worker) is failed."
    )

    # --- webhooks -----------------------------------------------------------------------------
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook POST.")
    webhook_max_attempts: int = Field(8, ge=1, description="Webhook deliveries tried before giving up.")
    webhook_backoff_s: float = Field(
        5.0, gt=0, description="First retry delay of a webhook; doubled (with jitter) on each retry."
    )
    webhook_backoff_max_s: float = Field(600.0, gt=0, description="Longest delay between webhook retries.")

    # --- API server and client ----------------------------------------------------------------
    api_url: str = Field("http://127.0.0.1:8000", description="Client side: base URL of the API.")
    api_key: str = Field("", description="Client side: the API key sent as `Authorization: Bearer`.")
    page_size_default: int = Field(100, ge=1, description="Items per page of list endpoints when not asked.")
    page_size_max: int = Field(1000, ge=1, description="Most items per page of list endpoints.")

    log_level: str = Field("INFO", description="Log level of every process (DEBUG, INFO, WARNING, ERROR).")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
