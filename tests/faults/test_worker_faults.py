"""Nothing lost, nothing twice: jobs complete with exactly one answer per page when a gpu worker
is SIGKILLed mid-chunk, when Redis loses every message, when the database drops the workers'
connections, and when a gpu worker is SIGTERMed (it finishes its chunk before it exits; SIGTERM
to its whole process group kills the pool process mid-chunk and the chunk comes back).

Each test starts its own ingest and gpu worker processes (tests/stack.py: 10 s page lease,
reconciler every second) against the session's Postgres, Redis and S3, runs the 8-page job of
tests/faults/harness.py, and is bounded in time.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.faults.harness import assert_exactly_once, page_counts, submit_job, wait_until
from tests.stack import WorkerProcess, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


def job_under_way(api: Any) -> str:
    """Submit the 8-page job and return once a page is answered (the rest still to do)."""
    job_id = submit_job(api)
    wait_until(lambda: page_counts(job_id).get("done", 0) >= 1, 90, "a page is answered")
    return job_id


def test_gpu_worker_killed_mid_chunk(
    api_server: Any,
    start_test_worker: Callable[..., WorkerProcess],
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
    start_test_worker("gpu")

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
    start_test_worker: Callable[..., WorkerProcess],
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

    start_test_worker("gpu")
    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)


def test_sigterm_to_the_whole_process_group(
    api_server: Any,
    start_test_worker: Callable[..., WorkerProcess],
    workers: list[WorkerProcess],
    settings: Any,
    s3: Any,
) -> None:
    """SIGTERM to the main and the pool process at once (`kill -TERM -<pgid>`, systemd's
    control-group stop): the pool process may die with its chunk unfinished; the worker must
    still exit in time, and the chunk must come back (handed back or found by its lease)."""
    gpu = workers[1]
    job_id = submit_job(api_server)
    wait_until(lambda: page_counts(job_id).get("running", 0) >= 1, 90, "a chunk is running")

    # It exits by itself (a negative status would be the SIGKILL `stop` sends after 60 s).
    assert gpu.stop(signal.SIGTERM, group=True, timeout_s=60) >= 0
    assert "Warm shutdown" in gpu.log()

    start_test_worker("gpu")
    assert_exactly_once(wait_for(api_server, job_id, timeout_s=150), settings, s3)
