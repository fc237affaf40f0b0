"""Queue and task names, and a send-only Celery producer.

The API and the reconciler send tasks by name (`send_task`), so they never import `workers/`
(nor torch). The queue only carries hints: Postgres says what work exists, and every task can
be sent again without harm.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from celery import Celery

from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)

INGEST_QUEUE = "ingest"
GPU_QUEUE = "gpu"
QUEUES: tuple[str, ...] = (INGEST_QUEUE, GPU_QUEUE)

INGEST_TASK = "monkeyjobs.ingest_document"  # args: [document_id: str]
INFER_TASK = "monkeyjobs.infer_pages"  # args: [page_ids: list[int]]
WEBHOOK_TASK = "monkeyjobs.send_webhook"  # args: [job_id: str]

TASK_QUEUES: dict[str, str] = {INGEST_TASK: INGEST_QUEUE, INFER_TASK: GPU_QUEUE, WEBHOOK_TASK: INGEST_QUEUE}

# Publishing gives up quickly: a task not sent is found again by the reconciler from Postgres,
# while a request handler that hangs on a dead broker helps nobody.
PUBLISH_RETRY_POLICY: dict[str, float] = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.3}


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Options producers and workers must agree on (the Redis transport's visibility timeout)."""
    return {"visibility_timeout": settings.visibility_timeout_s}


@lru_cache(maxsize=4)
def _producer(settings: Settings) -> Celery:
    app = Celery("monkeyjobs-producer", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_transport_options = broker_transport_options(settings)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.task_default_queue = INGEST_QUEUE
    return app


def get_producer(settings: Settings | None = None) -> Celery:
    """A Celery app used only to send tasks, configured from `settings`."""
    settings = settings or get_settings()
    return _producer(settings)


def send(task: str, args: list[Any], settings: Settings | None = None) -> None:
    """Send `task` with `args` to its queue. Raises when the broker cannot be reached."""
    get_producer(settings).send_task(
        task, args=args, queue=TASK_QUEUES[task], retry=True, retry_policy=PUBLISH_RETRY_POLICY
    )


def enqueue_ingest(document_id: uuid.UUID | str, settings: Settings | None = None) -> None:
    send(INGEST_TASK, [str(document_id)], settings)


def enqueue_infer(page_ids: Iterable[int], settings: Settings | None = None) -> None:
    send(INFER_TASK, [list(page_ids)], settings)


def enqueue_webhook(job_id: uuid.UUID | str, settings: Settings | None = None) -> None:
    send(WEBHOOK_TASK, [str(job_id)], settings)


def try_enqueue_ingest(document_ids: Iterable[uuid.UUID | str], settings: Settings | None = None) -> int:
    """Send one ingest task per document; on a broker error log and stop (the reconciler will
    find the documents still `pending` in Postgres). Returns how many were sent."""
    sent = 0
    for document_id in document_ids:
        try:
            enqueue_ingest(document_id, settings)
        except Exception:
            log.warning("broker unreachable; %s left for the reconciler", document_id, exc_info=True)
            break
        sent += 1
    return sent


def queue_depths(redis_client: Any) -> dict[str, int]:
    """Messages waiting in each queue. Celery's Redis transport keeps a queue as a Redis list
    named after it (priority 0), so its length is the depth."""
    return {queue: int(redis_client.llen(queue)) for queue in QUEUES}
