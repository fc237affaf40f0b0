"""The e2e tests share one ingest worker and one gpu worker per module."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.stack import WorkerProcess, s3, start_worker, worker_env

__all__ = ["s3", "start_worker", "worker_env"]  # fixtures, found by pytest through this module


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., WorkerProcess]) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """One ingest worker (with the reconciler) and one gpu worker, stopped when the module ends
    so that the fault tests' workers are the only ones on the queues."""
    pair = (start_worker("ingest"), start_worker("gpu"))
    yield pair
    for worker in pair:
        worker.stop()
