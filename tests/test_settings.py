"""Settings and states: the documentation covers every setting; the lifecycle tables are closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.settings import ENV_PREFIX, Settings
from jobs.states import (
    DOCUMENT_TRANSITIONS,
    JOB_TERMINAL,
    JOB_TRANSITIONS,
    PAGE_TRANSITIONS,
    DocumentStatus,
    IllegalTransition,
    JobStatus,
    PageStatus,
    check_transition,
    final_job_status,
)

DOCS = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_described_and_documented() -> None:
    text = DOCS.read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"`{ENV_PREFIX}{name.upper()}`" in text, f"{name} missing from the README"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONKEYJOBS_S3_BUCKET", "elsewhere")
    monkeypatch.setenv("MONKEYJOBS_GPU_CHUNK_PAGES", "3")
    settings = Settings()
    assert (settings.s3_bucket, settings.gpu_chunk_pages) == ("elsewhere", 3)


def test_transition_tables_cover_every_state_and_end_in_terminal_states() -> None:
    for table, enum in (
        (JOB_TRANSITIONS, JobStatus),
        (DOCUMENT_TRANSITIONS, DocumentStatus),
        (PAGE_TRANSITIONS, PageStatus),
    ):
        assert set(table) == set(enum)
    for status in JOB_TERMINAL:
        with pytest.raises(IllegalTransition):
            check_transition(JOB_TRANSITIONS, status, JobStatus.RUNNING)
    check_transition(PAGE_TRANSITIONS, PageStatus.RUNNING, PageStatus.QUEUED)  # a lost chunk re-sent


def test_final_job_status() -> None:
    assert final_job_status(documents_failed=0, pages_done=3, pages_failed=0) is JobStatus.SUCCEEDED
    assert final_job_status(documents_failed=1, pages_done=3, pages_failed=0) is JobStatus.PARTIAL
    assert final_job_status(documents_failed=2, pages_done=0, pages_failed=0) is JobStatus.FAILED
