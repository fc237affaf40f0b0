"""Task `monkeyjobs.send_webhook(job_id)`: POST the final job object to the job's webhook URL.

The body is the job's manifest (the same bytes as `manifest.json`), signed with HMAC-SHA256
under the tenant's secret (`jobs.webhooks`). Any failure (connection error, timeout, non-2xx)
is retried with exponential backoff and full jitter up to `webhook_max_attempts` deliveries;
the attempts and the last error are kept on the job row for operators.
"""

from __future__ import annotations

import logging
import uuid

import httpx
from celery import Task
from sqlalchemy import func, update

from jobs.db import session_scope
from jobs.models import Job, Tenant
from jobs.queue import WEBHOOK_TASK
from jobs.settings import get_settings
from jobs.webhooks import EVENT_HEADER, JOB_FINISHED_EVENT, SIGNATURE_HEADER, sign_body
from workers.celery_app import app, retry_with_backoff
from workers.publish import manifest_bytes

log = logging.getLogger(__name__)


@app.task(name=WEBHOOK_TASK, bind=True, max_retries=None)
def send_webhook(self: Task, job_id: str) -> None:
    settings = get_settings()
    key = uuid.UUID(job_id)
    with session_scope() as session:
        job = session.get(Job, key)
        if job is None or not job.webhook_url or job.webhook_delivered_at is not None:
            return
        if job.webhook_attempts >= settings.webhook_max_attempts:
            log.error("webhook of job %s given up after %d attempts", job_id, job.webhook_attempts)
            return
        secret = session.get_one(Tenant, job.tenant_id).webhook_secret
        url = job.webhook_url
        body = manifest_bytes(session, key)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign_body(secret, body),
        EVENT_HEADER: JOB_FINISHED_EVENT,
        "User-Agent": "monkeyjobs-webhook",
    }
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=settings.webhook_timeout_s)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        with session_scope() as session:
            attempts = session.execute(
                update(Job)
                .where(Job.id == key)
                .values(webhook_attempts=Job.webhook_attempts + 1, webhook_last_error=str(exc)[:1000])
                .returning(Job.webhook_attempts)
            ).scalar_one()
        log.warning("webhook of job %s failed (attempt %d): %s", job_id, attempts, exc)
        if attempts >= settings.webhook_max_attempts:
            return
        retry_with_backoff(
            self,
            exc,
            base_s=settings.webhook_backoff_s,
            cap_s=settings.webhook_backoff_max_s,
            max_retries=None,
        )
    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == key)
            .values(
                webhook_delivered_at=func.now(),
                webhook_attempts=Job.webhook_attempts + 1,
                webhook_last_error=None,
            )
        )
    log.info("webhook of job %s delivered to %s", job_id, url)
