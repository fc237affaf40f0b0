"""The reconciler: Postgres says what work exists; this loop makes sure some queue carries it.

Messages get lost: Redis restarts empty (or is `FLUSHALL`ed), a worker is SIGKILLed while its
message sits unacknowledged for up to the visibility timeout, a publish fails after its rows
were committed. Every `reconcile_interval_s` one reconciler (a Postgres advisory lock elects it
among the ingest workers) scans for:

- documents `pending`/`ingesting` untouched for `page_lease_s` and pages open whose lease ran
  out (`jobs.lifecycle.find_stale_work`). Work still waiting in a Redis queue is only a backlog:
  its lease is extended. The rest is sent again: documents to `ingest`, pages in chunks to
  `gpu`. A page that keeps coming back is failed by `claim_pages` once it used
  `max_page_attempts` (quarantine), so its job still ends;
- finalised jobs without a manifest: jobs the API cancelled (a job that ends by its last page
  gets its manifest in the same transaction): their JSONL, manifest and webhook are written;
- webhooks of finished jobs never tried (their task was lost with Redis).

It runs as a thread in each `monkeyjobs worker` that consumes `ingest` (no extra process to
deploy); its own errors (database or broker down) are logged and retried with backoff.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from celery import signals
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from jobs import lifecycle, progress, queue
from jobs.db import get_engine, session_scope
from jobs.models import Job, Page
from jobs.settings import Settings, get_settings
from workers.celery_app import backoff_delay
from workers.publish import publish_job, with_retries

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x6D6B6A6F62  # "mkjob": one reconciler scans at a time across workers
WEBHOOK_GRACE = timedelta(minutes=5)


@dataclass
class Report:
    documents_resent: list[uuid.UUID] = field(default_factory=list)
    pages_resent: list[tuple[int, uuid.UUID]] = field(default_factory=list)  # (page id, document id)
    pages_waiting: int = 0
    jobs_published: list[uuid.UUID] = field(default_factory=list)
    webhooks_resent: list[uuid.UUID] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.documents_resent or self.pages_resent or self.jobs_published or self.webhooks_resent)


def waiting_work(client: redis.Redis) -> tuple[set[str], set[int]]:
    """Document ids and page ids carried by messages waiting in the ingest and gpu queues.

    Reads Celery's Redis transport layout: a queue is a list of JSON envelopes whose `body` is
    the base64 of `[args, kwargs, embed]`."""
    documents: set[str] = set()
    pages: set[int] = set()
    for name in queue.QUEUES:
        for raw in client.lrange(name, 0, -1):
            try:
                envelope = json.loads(raw)
                task = envelope["headers"]["task"]
                args = json.loads(base64.b64decode(envelope["body"]))[0]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if task == queue.INGEST_TASK:
                documents.add(str(args[0]))
            elif task == queue.INFER_TASK:
                pages.update(int(page_id) for page_id in args[0])
    return documents, pages


def chunks(page_rows: Iterable[tuple[int, uuid.UUID]], size: int) -> list[list[int]]:
    """Page ids grouped by document, then cut into chunks of at most `size`."""
    by_document: dict[uuid.UUID, list[int]] = {}
    for page_id, document_id in page_rows:
        by_document.setdefault(document_id, []).append(page_id)
    return [ids[i : i + size] for ids in by_document.values() for i in range(0, len(ids), size)]


class Reconciler:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.broker_url, socket_timeout=30, socket_connect_timeout=10)

    def run_once(self) -> Report:
        """One scan. Returns what it did (empty when another reconciler holds the lock)."""
        report = Report()
        with get_engine().connect() as lock:
            if not lock.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY}):
                return report
            try:
                self._scan(report)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
                lock.commit()
        if report:
            log.warning(
                "reconciler re-sent %d documents, %d pages (%d more still waiting in the queue); "
                "published %d jobs; %d webhooks",
                len(report.documents_resent),
                len(report.pages_resent),
                report.pages_waiting,
                len(report.jobs_published),
                len(report.webhooks_resent),
            )
        return report

    def _scan(self, report: Report) -> None:
        waiting_documents, waiting_pages = waiting_work(self.redis)
        with session_scope() as session:
            stale = lifecycle.find_stale_work(session, document_stale_s=self.settings.page_lease_s)
            unpublished = session.scalars(
                select(Job.id).where(Job.finalized_at.is_not(None), Job.manifest_key.is_(None))
            ).all()
            report.webhooks_resent = list(
                session.scalars(
                    select(Job.id).where(
                        Job.webhook_url.is_not(None),
                        Job.manifest_key.is_not(None),
                        Job.webhook_delivered_at.is_(None),
                        Job.webhook_attempts == 0,
                        Job.finalized_at < func.now() - WEBHOOK_GRACE,
                    )
                )
            )
        # Each write below touches one table in its own transaction: no lock-order cycle with
        # a cancel or a worker ending pages at the same time.
        with session_scope() as session:
            for document_id in stale.document_ids:
                lifecycle.touch_document(session, document_id)
                if str(document_id) not in waiting_documents:
                    report.documents_resent.append(document_id)
        with session_scope() as session:
            self._stale_pages(session, stale.page_ids, waiting_pages, report)
        # Sent after the commit: a task must never see rows older than the ones it was sent for.
        for document_id in report.documents_resent:
            queue.enqueue_ingest(document_id, self.settings)
        for chunk in chunks(report.pages_resent, self.settings.gpu_chunk_pages):
            queue.enqueue_infer(chunk, self.settings)
        for job_id in unpublished:
            if with_retries(lambda session, job_id=job_id: publish_job(session, job_id)):
                queue.enqueue_webhook(job_id, self.settings)
            report.jobs_published.append(job_id)
        for job_id in report.webhooks_resent:
            queue.enqueue_webhook(job_id, self.settings)

    def _stale_pages(self, session: Session, page_ids: list[int], waiting: set[int], report: Report) -> None:
        if not page_ids:
            return
        rows = session.execute(
            select(Page.id, Page.document_id, Job.finalized_at)
            .join(Job, Job.id == Page.job_id)
            .where(Page.id.in_(page_ids))
            .order_by(Page.document_id, Page.page_number)
        ).all()
        # Pages still open in a job that has ended (it was cancelled while they ran) end too.
        progress.cancel_open_pages(session, [r.id for r in rows if r.finalized_at is not None])
        live = [r for r in rows if r.finalized_at is None]
        # Re-leasing waiting pages keeps a long backlog from being sent twice.
        queued = set(lifecycle.mark_pages_queued(session, [r.id for r in live], self.settings.page_lease_s))
        report.pages_waiting = sum(1 for r in live if r.id in waiting)
        report.pages_resent = [(r.id, r.document_id) for r in live if r.id in queued and r.id not in waiting]


def _loop(reconciler: Reconciler, stop: threading.Event) -> None:
    failures = 0
    while True:
        try:
            reconciler.run_once()
            failures = 0
            delay = reconciler.settings.reconcile_interval_s
        except Exception:
            failures += 1
            delay = max(1.0, backoff_delay(failures, 1.0, reconciler.settings.reconcile_interval_s))
            log.exception("reconciler scan failed (%d in a row); next try in %.1f s", failures, delay)
        if stop.wait(delay):
            return


def run_in_worker(settings: Settings | None = None) -> None:
    """Start the reconciler thread when this worker is ready; stop it when it shuts down."""
    stop = threading.Event()

    def start(**_: Any) -> None:
        reconciler = Reconciler(settings or get_settings())
        threading.Thread(target=_loop, args=(reconciler, stop), name="reconciler", daemon=True).start()
        log.info("reconciler started (every %.0f s)", reconciler.settings.reconcile_interval_s)

    signals.worker_ready.connect(start, weak=False)
    signals.worker_shutting_down.connect(lambda **_: stop.set(), weak=False)
