"""Nothing lost, nothing twice: jobs complete with exactly one answer per page when a gpu worker
is SIGKILLed mid-chunk, when Redis loses every message, when the database drops the workers'
connections, and a SIGTERMed worker finishes its chunk before it exits.

Each test starts its own ingest and gpu worker processes (tests/stack.py: 10 s page lease,
reconciler every second) against the session's Postgres, Redis and S3, runs the 8-page job of
tests/faults/harness.py, and is bounded in time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.faults.harness import assert_exactly_once, page_counts, submit_job, wait_until
from tests.stack import WorkerProcess, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


@pytest.fixture
def workers(start_worker: Callable[..., WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """An ingest and a gpu worker for one test (a test may append more); all stopped after it,
    so that the next test's workers are the only ones on the queues."""
    started = [start_worker("ingest"), start_worker("gpu")]
    yield started
    for worker in started:
        worker.stop()


def job_under_way(api: Any) -> str:
    """Submit the 8-page job and return once a page is answered (the rest still to do)."""
    job_id = submit_job(api)
    wait_until(lambda: page_counts(job_id).get("done", 0) >= 1, 90, "a page is answered")
    return job_id


def test_gpu_worker_killed_mid_chunk(
    api_server: Any,
    start_worker: Callable[..., WorkerProcess],
    workers: list[WorkerProcess],
    settings: Any,
    s3: Any,
) -> None:
    first = workers[1]
    job_id = submit_job(api_server)
    # Kill it once it has answered something and holds a chunk: answers exist and work is in flight.
    wait_until(
        lambda: page_counts(job_id).get("done", 0) >= 1 and page_counts(job_id).get("running", 0) >= 1,
        90,
        "the first worker answered a page and holds the next chunk",
    )
    first.stop(signal.SIGKILL)
    workers.append(start_worker("gpu"))

    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)


def test_broker_loses_every_message(
    api_server: Any, workers: list[WorkerProcess], settings: Any, s3: Any
) -> None:
    import redis

    from tests.conftest import REDIS_CLAIM_KEY

    job_id = job_under_way(api_server)
    client = redis.Redis.from_url(settings.broker_url)
    assert client.llen("gpu") > 0, "nothing was waiting: the test would prove nothing"
    client.flushdb()  # what a Redis restart without persistence does (for this test's database)
    client.set(REDIS_CLAIM_KEY, "flushed by the test", ex=3600)

    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)


def test_database_drops_the_workers_connections(
    api_server: Any, workers: list[WorkerProcess], settings: Any, s3: Any
) -> None:
    from sqlalchemy.engine import make_url

    from jobs.db import session_scope

    job_id = job_under_way(api_server)
    database = make_url(settings.database_url).database
    with session_scope() as session:
        killed = session.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        )
    assert killed >= 1

    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)


def test_sigterm_finishes_the_chunk_then_exits(
    api_server: Any,
    start_worker: Callable[..., WorkerProcess],
    workers: list[WorkerProcess],
    settings: Any,
    s3: Any,
) -> None:
    gpu = workers[1]
    job_id = submit_job(api_server)
    wait_until(lambda: page_counts(job_id).get("running", 0) >= 1, 90, "a chunk is running")
    done_before = page_counts(job_id).get("done", 0)

    assert gpu.stop(signal.SIGTERM, group=False, timeout_s=60) == 0  # warm shutdown, like `docker stop`
    counts = page_counts(job_id)
    assert counts.get("running", 0) == 0, counts  # the chunk in flight was finished, not dropped
    assert counts.get("done", 0) > done_before
    assert "Warm shutdown" in gpu.log()

    workers.append(start_worker("gpu"))
    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)
