"""The workers' reliability configuration and helpers, without worker processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

import botocore.exceptions
import pytest
import sqlalchemy.exc

from workers.celery_app import backoff_delay, is_transient, make_app


def test_celery_settings_keep_work_from_being_lost(settings: Any) -> None:
    conf = make_app(settings).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True and conf.result_backend is None
    assert conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout_s
    # A chunk is stopped before its message could be handed to a second worker.
    assert conf.task_time_limit < settings.visibility_timeout_s
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert {q.name for q in conf.task_queues} == {"ingest", "gpu"}
    assert conf.task_routes["monkeyjobs.infer_pages"]["queue"] == "gpu"
    assert conf.task_routes["monkeyjobs.ingest_document"]["queue"] == "ingest"


def test_messages_go_straight_to_their_queue_list(settings: Any, redis_url: str) -> None:
    """Published through the default exchange: no Redis binding keys, which a FLUSHALL loses."""
    import redis

    app = make_app(settings.model_copy(update={"broker_url": redis_url}))
    client = redis.Redis.from_url(redis_url)
    client.delete("gpu")
    for key in client.scan_iter("_kombu.binding*"):
        client.delete(key)
    app.send_task("monkeyjobs.infer_pages", args=[[1, 2]])
    assert client.llen("gpu") == 1
    client.delete("gpu")


def test_reconciler_sees_the_work_waiting_in_redis(settings: Any, redis_url: str) -> None:
    import redis

    from jobs import queue
    from workers.reconciler import waiting_work

    client = redis.Redis.from_url(redis_url)
    client.delete(*queue.QUEUES)
    local = settings.model_copy(update={"broker_url": redis_url})
    document_id = uuid.uuid4()
    queue.enqueue_ingest(document_id, local)
    queue.enqueue_infer([7, 8], local)
    queue.enqueue_infer([9], local)
    queue.enqueue_webhook(uuid.uuid4(), local)
    client.rpush("gpu", b"not a celery message")
    assert waiting_work(client) == ({str(document_id)}, {7, 8, 9})
    client.delete(*queue.QUEUES)


def test_reconciler_chunks_stay_within_a_document() -> None:
    from workers.reconciler import chunks

    a, b = uuid.uuid4(), uuid.uuid4()
    rows = [(1, a), (2, a), (3, a), (4, b), (5, a)]
    assert chunks(rows, 2) == [[1, 2], [3, 5], [4]]


@pytest.mark.parametrize("retries", [0, 1, 3, 10, 30])
def test_backoff_is_jittered_exponential_and_capped(retries: int) -> None:
    ceiling = min(60.0, 1.0 * 2.0**retries)
    delays = [backoff_delay(retries, 1.0, 60.0) for _ in range(200)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert len(set(delays)) > 1  # jitter: workers failing together do not retry together


def _client_error(status: int, code: str) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_client_error(503, "SlowDown"), True),
        (_client_error(500, "InternalError"), True),
        (_client_error(404, "NoSuchKey"), False),
        (_client_error(403, "AccessDenied"), False),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://s3"), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://s3"), True),
        (sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection")), True),
        (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
        (ValueError("a bug"), False),
    ],
)
def test_transient_errors_are_told_from_permanent_ones(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_workers_import_without_torch() -> None:
    """The ingest worker (and the gpu worker's parent, which forks the pool) never load torch."""
    code = (
        "import sys, workers.celery_app, workers.ingest, workers.gpu, workers.webhook, workers.reconciler\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
