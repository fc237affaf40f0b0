"""S3 down for 10 s in the middle of a job: the job still completes, each page answered once.

The API and both workers reach the session's S3 server through a `TcpGate`; the test takes the
gate down after the first answer, while pages remain to be read from S3 and JSONL to be written,
and brings it back 10 s later. Workers retry S3 errors (botocore's own retries, then the task's
retry with backoff and jitter); what a retry cannot cover is published by the reconciler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.faults.harness import TcpGate, assert_exactly_once, page_counts, submit_job, wait_until
from tests.stack import WorkerProcess, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

OUTAGE_S = 10.0


@pytest.fixture
def s3_gate(s3_endpoint: str) -> Iterator[TcpGate]:
    endpoint = urlsplit(s3_endpoint)
    assert endpoint.hostname and endpoint.port
    gate = TcpGate(endpoint.hostname, endpoint.port)
    yield gate
    gate.close()


def test_s3_down_for_ten_seconds(
    start_api: Callable[..., Any],
    start_test_worker: Callable[..., WorkerProcess],
    s3_gate: TcpGate,
    settings: Any,
    s3: Any,
) -> None:
    through_gate = {"MONKEYJOBS_S3_ENDPOINT_URL": s3_gate.url}
    api = start_api(**through_gate)
    start_test_worker("ingest", **through_gate)
    start_test_worker("gpu", **through_gate)
    job_id = submit_job(api)
    wait_until(lambda: page_counts(job_id).get("done", 0) >= 1, 90, "a page is answered")

    s3_gate.down()
    time.sleep(OUTAGE_S)  # the length of the fault itself, not a wait for some state
    s3_gate.up()
    assert s3_gate.resets > 0, "nobody called S3 while it was down: the test would prove nothing"

    assert_exactly_once(wait_for(api, job_id, timeout_s=150), settings, s3)
