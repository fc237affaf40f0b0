"""Operations routes without auth: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import redis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select, text

from api.schemas import Readiness
from jobs.db import get_engine
from jobs.models import Job, Page
from jobs.queue import queue_depths
from jobs.settings import Settings
from jobs.states import JobStatus, PageStatus
from jobs.storage import Storage

router = APIRouter(tags=["operations"])

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CHECK_TIMEOUT_S = 2.0


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.broker_url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S
    )


def dependency_checks(settings: Settings, storage: Storage) -> dict[str, Callable[[], object]]:
    def postgres() -> object:
        with get_engine(settings.database_url).connect() as conn:
            return conn.execute(text("SELECT 1")).scalar()

    def broker() -> object:
        with redis_client(settings) as client:
            return client.ping()

    return {"postgres": postgres, "redis": broker, "s3": lambda: storage.check(CHECK_TIMEOUT_S)}


@router.get("/healthz", summary="Liveness", responses={200: {"description": "The process is up."}})
def healthz() -> dict[str, str]:
    """The process is up (checks nothing else)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "A dependency is down; `checks` names it."}},
)
def readyz(request: Request) -> JSONResponse:
    """Postgres, Redis and S3 reachable: 200; otherwise 503 naming what is not."""
    checks: dict[str, str] = {}
    for name, check in dependency_checks(request.app.state.settings, request.app.state.storage).items():
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:  # any failure means "not ready"; the message says which
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]
    ready = all(value == "ok" for value in checks.values())
    down = ", ".join(name for name, value in checks.items() if value != "ok")
    body = Readiness(ready=ready, checks=checks).model_dump()
    if not ready:
        body["detail"] = f"not ready: {down} unreachable"
    return JSONResponse(body, status_code=200 if ready else 503)


class StoreCollector(Collector):
    """Metrics read from Postgres and Redis at scrape time, so every API replica reports the
    same figures and nothing is lost when a process restarts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        with get_engine(self.settings.database_url).connect() as conn:
            by_status = dict(conn.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            pages = conn.execute(
                select(
                    func.coalesce(func.sum(Job.pages_done), 0), func.coalesce(func.sum(Job.pages_failed), 0)
                )
            ).one()
            done = Page.status == PageStatus.DONE.value
            latency = conn.execute(
                select(
                    *(func.count(case((Page.seconds <= bound, 1))) for bound in LATENCY_BUCKETS),
                    func.count(),
                    func.coalesce(func.sum(Page.seconds), 0.0),
                ).where(done, Page.seconds.is_not(None))
            ).one()
        jobs = GaugeMetricFamily("monkeyjobs_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        yield jobs
        page_counter = CounterMetricFamily("monkeyjobs_pages", "Pages ended, by outcome.", labels=["outcome"])
        page_counter.add_metric(["done"], pages[0])
        page_counter.add_metric(["failed"], pages[1])
        yield page_counter
        *cumulative, count, total = latency
        buckets = [(str(bound), value) for bound, value in zip(LATENCY_BUCKETS, cumulative, strict=True)]
        yield HistogramMetricFamily(
            "monkeyjobs_page_seconds",
            "Engine seconds per answered page.",
            buckets=[*buckets, ("+Inf", count)],
            sum_value=total,
        )
        depth = GaugeMetricFamily("monkeyjobs_queue_depth", "Tasks waiting in each queue.", labels=["queue"])
        try:
            with redis_client(self.settings) as client:
                for queue, length in queue_depths(client).items():
                    depth.add_metric([queue], length)
        except redis.RedisError:
            pass  # the broker being down is reported by /readyz; the other metrics still matter
        yield depth


def metrics_registry(settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings))
    return registry


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Jobs by status, pages done/failed, queue depth and page latency, in Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
