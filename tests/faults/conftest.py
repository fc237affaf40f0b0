"""Fault tests start and kill their own workers (tests/stack.py); each test's workers are
stopped when it ends, failed or not, so that the next test's workers are alone on the queues."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.stack import WorkerProcess, s3, start_worker, worker_env

__all__ = ["s3", "start_worker", "worker_env"]  # fixtures, found by pytest through this module


@pytest.fixture
def start_test_worker(start_worker: Callable[..., WorkerProcess]) -> Iterator[Callable[..., WorkerProcess]]:
    """`start_worker(queues, **env)` for one test: what it starts is stopped after the test."""
    started: list[WorkerProcess] = []

    def start(queues: str, **env: str) -> WorkerProcess:
        started.append(start_worker(queues, **env))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def workers(start_test_worker: Callable[..., WorkerProcess]) -> list[WorkerProcess]:
    """An ingest worker (with the reconciler) and a gpu worker for one test."""
    return [start_test_worker("ingest"), start_test_worker("gpu")]
