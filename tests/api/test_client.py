"""`monkeyjobs submit/status/results` against the real API process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.client import results, status, submit
from jobs.db import session_scope
from jobs.models import Document
from jobs.storage import get_storage
from tests.api.test_jobs import png_bytes
from tests.conftest import ApiServer

pytestmark = pytest.mark.timeout(120)


def test_submit_status_results(api_server: ApiServer, tmp_path: Path) -> None:
    env = {"MONKEYJOBS_API_URL": api_server.url, "MONKEYJOBS_API_KEY": api_server.key}
    page = tmp_path / "page.png"
    page.write_bytes(png_bytes())
    runner = CliRunner()
    submitted = runner.invoke(
        submit,
        [
            str(page),
            "--task",
            "qa",
            "--question",
            "Total?",
            "--option",
            "scm=true",
            "--pages",
            "1",
            "--idempotency-key",
            f"cli-{uuid.uuid4()}",
        ],
        env=env,
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.strip().splitlines()[-1]
    shown = runner.invoke(status, [job_id, "--json"], env=env)
    job = json.loads(shown.output)
    assert job["questions"] == ["Total?"] and job["options"]["scm"] is True
    document = job["documents"][0]
    storage = get_storage()
    key = storage.document_result_key(job_id, document["id"])
    storage.put(key, b'{"answer": "42"}\n')
    with session_scope() as session:
        session.get_one(Document, uuid.UUID(document["id"])).result_key = key
    written = runner.invoke(results, [job_id, "-o", str(tmp_path / "out")], env=env)
    assert written.exit_code == 0, written.output
    (path,) = (tmp_path / "out").iterdir()
    assert path.name == f"{document['id']}-page.png.jsonl" and path.read_bytes() == b'{"answer": "42"}\n'
    httpx.post(f"{api_server.url}/v1/jobs/{job_id}/cancel", headers=api_server.headers)


def test_problem_is_shown_as_error(api_server: ApiServer, tmp_path: Path) -> None:
    env = {"MONKEYJOBS_API_URL": api_server.url, "MONKEYJOBS_API_KEY": api_server.key}
    bad = tmp_path / "notes.txt"
    bad.write_text("not a document")
    result = CliRunner().invoke(submit, [str(bad)], env=env)
    assert result.exit_code == 1 and "HTTP 415" in result.output and "unsupported_type" in result.output
