"""The Celery app of the workers and the settings that keep work from being lost.

Postgres is the source of truth for what work exists; a message is only a hint that some work
should be looked at. So every task may run twice (its writes are idempotent) and must never run
zero times:

- `task_acks_late`: a message is acknowledged after its task returns, not when it is received,
  so a worker that dies mid-chunk leaves the message to be delivered again;
- `task_reject_on_worker_lost`: when the pool process running a task dies (OOM, segfault, a
  SIGTERM to the child), the message goes back to the queue instead of being acknowledged;
- `worker_prefetch_multiplier = 1`: a worker holds no chunk beyond the one it runs, so an idle
  worker (or one started later) takes the rest;
- the Redis transport's `visibility_timeout` (setting `visibility_timeout_s`) is longer than the
  longest chunk and than any retry countdown: a message unacknowledged for that long is
  delivered again (that is how a vanished worker's message comes back when Redis kept it);
- `task_time_limit` ends a chunk that hangs before the visibility timeout would hand its
  message to a second worker while the first still runs it;
- no result backend (`task_ignore_result`): results live in Postgres and S3;
- `worker_cancel_long_running_tasks_on_connection_loss = False`: when the broker blips, a GPU
  chunk in flight finishes and writes its answers (idempotently) rather than being killed and
  losing the loaded engine.

Transient errors are retried with `retry_with_backoff` (exponential, full jitter); what the
queue loses anyway is found again in Postgres by `workers.reconciler`.
"""

from __future__ import annotations

import random
from typing import NoReturn

import botocore.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Celery, Task
from kombu import Queue

from jobs import queue as names
from jobs.settings import Settings, get_settings

# Retries of transient errors (S3 5xx, timeouts, database disconnects): ~10 minutes of outage.
TRANSIENT_MAX_RETRIES = 10
TRANSIENT_BACKOFF_S = 1.0
TRANSIENT_BACKOFF_MAX_S = 60.0


def is_transient(exc: BaseException) -> bool:
    """True for errors that a later try may not meet: S3 5xx/throttling/timeouts, a lost
    database connection, a broker blip. Anything else is the input's or the code's fault."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout", "Throttling"}
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(
            exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
        )
    return isinstance(
        exc,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | kombu.exceptions.OperationalError
        | ConnectionError
        | TimeoutError,
    )


def backoff_delay(retries: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before retry number `retries + 1`: exponential with full jitter, so that
    many workers failing at once do not come back at once."""
    return random.uniform(0.0, min(cap_s, base_s * 2.0**retries))


def retry_with_backoff(
    task: Task,
    exc: BaseException,
    *,
    base_s: float = TRANSIENT_BACKOFF_S,
    cap_s: float = TRANSIENT_BACKOFF_MAX_S,
    max_retries: int = TRANSIENT_MAX_RETRIES,
) -> NoReturn:
    """Raise the task's `Retry` after a jittered exponential delay (or `exc` once retries are
    spent). The countdown stays below the visibility timeout so the delayed message is not
    redelivered to a second worker while the first still holds it."""
    cap_s = min(cap_s, get_settings().visibility_timeout_s / 2)
    countdown = backoff_delay(task.request.retries, base_s, cap_s)
    raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries)


def make_app(settings: Settings) -> Celery:
    """The workers' Celery app, configured from `settings`."""
    app = Celery("monkeyjobs", set_as_current=True)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options={
            **names.broker_transport_options(settings),
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "retry_on_timeout": True,
            "health_check_interval": 25,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits for Redis to come back, forever
        result_backend=None,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # a failure is recorded in Postgres, not redelivered
        task_time_limit=max(60, settings.visibility_timeout_s - 60),
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        # The default exchange ("") puts a message straight into the list named by its routing key,
        # as the API's producer does: no binding keys in Redis that a FLUSHALL would lose.
        task_queues=[Queue(name, routing_key=name) for name in names.QUEUES],
        task_default_exchange="",
        task_default_queue=names.INGEST_QUEUE,
        task_create_missing_queues=False,
        task_routes={
            task: {"queue": queue, "routing_key": queue} for task, queue in names.TASK_QUEUES.items()
        },
        include=["workers.ingest", "workers.gpu", "workers.webhook"],
    )
    return app


app = make_app(get_settings())
