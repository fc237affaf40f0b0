"""Load: many small jobs submitted at once through the HTTP API, then checked for lost and
duplicated pages in Postgres and S3.

    python -m bench.load --jobs 50 --pages 2 --concurrency 8

Without `--api-url`, it starts a stack of its own on this machine and stops it at the end: a
fresh Postgres database and a free Redis database on the local servers (as the tests do), an S3
server (moto) in its own process, a tiny random model, the API (uvicorn) and `monkeyjobs worker`
processes for the ingest queue and `--gpu-workers` times the gpu queue, on the CPU. With
`--api-url/--api-key` it loads a running stack instead; it then needs that stack's
`MONKEYJOBS_DATABASE_URL` and S3 settings in its environment for the checks.

Each job is one generated TIFF of `--pages` pages, OCR with `max_new_tokens` 2 and small tile
limits. `--concurrency` clients submit (`POST /v1/jobs`) and poll (`GET /v1/jobs/{id}`) at once.
Printed: submit and status latency (p50, p99), jobs and pages completed per second, and the
lost and duplicated answers: (page, question) pairs with no or several result rows in
Postgres, and with no or several lines in their document's JSONL in S3. Both must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from jobs.storage import Storage, get_storage
from tests.conftest import (
    REPO_ROOT,
    UVICORN_ARGS,
    claimed_redis_db,
    create_tenant_key,
    free_port,
    fresh_database,
    wait_http,
)

ENDED = frozenset({"succeeded", "partial", "failed", "cancelled"})
OPTIONS = {"max_new_tokens": 2, "detail_max_tiles": 4, "adaptive_max_tiles": 3}
AWS_ENV = {"AWS_ACCESS_KEY_ID": "load", "AWS_SECRET_ACCESS_KEY": "load", "AWS_DEFAULT_REGION": "us-east-1"}


# --- the stack ----------------------------------------------------------------------------------


@contextlib.contextmanager
def process(args: list[str], log_path: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own process group (a worker's pool processes included), output to
    `log_path`; on exit the group gets SIGTERM, then SIGKILL if it lingers."""
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield child
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@contextlib.contextmanager
def local_stack(gpu_workers: int, model: str | None, logs: Path) -> Iterator[tuple[str, str]]:
    """Start everything on this machine; yields (API URL, API key) once the API answers (the
    workers may still be loading: the warm-up job waits for them). The service settings are put
    in `os.environ` too, for the checks that read Postgres and S3."""
    from jobs.settings import get_settings

    with contextlib.ExitStack() as stack:
        s3_port = free_port()
        moto = stack.enter_context(
            process(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                logs / "s3.log",
                {**os.environ, **AWS_ENV},
            )
        )
        s3_url = f"http://127.0.0.1:{s3_port}"
        database_url = stack.enter_context(fresh_database(prefix="monkeyjobs_load"))
        broker_url = stack.enter_context(claimed_redis_db())
        if model is None:
            from pipeline.tiny import make_tiny_checkpoint

            model = str(
                make_tiny_checkpoint(Path(stack.enter_context(tempfile.TemporaryDirectory())), seed=0)
            )
        os.environ.update(
            {
                **AWS_ENV,
                "MONKEYJOBS_DATABASE_URL": database_url,
                "MONKEYJOBS_BROKER_URL": broker_url,
                "MONKEYJOBS_S3_ENDPOINT_URL": s3_url,
                "MONKEYJOBS_S3_BUCKET": "monkeyjobs-load",
                "MONKEYJOBS_MODEL": model,
                "MONKEYJOBS_DEVICE": "cpu",
            }
        )
        get_settings.cache_clear()
        get_storage.cache_clear()
        wait_http(s3_url, timeout_s=30, process=moto)
        get_storage().ensure_bucket()

        env = dict(os.environ)
        monkeyjobs = [sys.executable, "-m", "cli"]
        stack.enter_context(process([*monkeyjobs, "worker", "--queues", "ingest"], logs / "ingest.log", env))
        for n in range(gpu_workers):
            stack.enter_context(
                process([*monkeyjobs, "worker", "--queues", "gpu"], logs / f"gpu-{n}.log", env)
            )
        api_port = free_port()
        api_args = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", *UVICORN_ARGS]
        api = stack.enter_context(process([*api_args, str(api_port)], logs / "api.log", env))
        api_url = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api_url}/healthz", timeout_s=60, process=api)
        yield api_url, create_tenant_key(database_url, "load")


# --- the load -----------------------------------------------------------------------------------


def document(job: int, pages: int) -> bytes:
    """A multi-page TIFF whose pages say which job and page they are."""
    images = []
    for page in range(1, pages + 1):
        image = Image.new("RGB", (640, 480), "white")
        ImageDraw.Draw(image).text(
            (40, 40), f"load job {job} page {page}\nTOTAL DUE 12.{job % 100:02d}", fill="black"
        )
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, format="TIFF", save_all=True, append_images=images[1:])
    return out.getvalue()


@dataclass
class Figures:
    submit_s: list[float] = field(default_factory=list)
    status_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    job_ids: list[str] = field(default_factory=list)
    wall_s: float = 0.0


async def run_job(
    client: httpx.AsyncClient,
    index: int,
    pages: int,
    gate: asyncio.Semaphore,
    poll_s: float,
    figures: Figures,
) -> None:
    files = [("files", (f"load-{index}.tiff", document(index, pages), "image/tiff"))]
    data = {"task": "ocr", "options": json.dumps(OPTIONS)}
    async with gate:
        started = time.perf_counter()
        response = await client.post(
            "/v1/jobs", files=files, data=data, headers={"Idempotency-Key": f"load-{uuid.uuid4()}"}
        )
        figures.submit_s.append(time.perf_counter() - started)
    response.raise_for_status()
    job_id = response.json()["id"]
    figures.job_ids.append(job_id)
    while True:
        await asyncio.sleep(poll_s)
        async with gate:
            started = time.perf_counter()
            response = await client.get(f"/v1/jobs/{job_id}")
            figures.status_s.append(time.perf_counter() - started)
        response.raise_for_status()
        status = response.json()["status"]
        if status in ENDED:
            figures.statuses[status] += 1
            return


async def load(api_url: str, api_key: str, jobs: int, pages: int, concurrency: int, poll_s: float) -> Figures:
    figures = Figures()
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(run_job(client, n, pages, gate, poll_s, figures) for n in range(jobs)))
        figures.wall_s = time.perf_counter() - started
    return figures


# --- the checks ---------------------------------------------------------------------------------


def lost_and_duplicated(job_ids: list[str], pages: int) -> dict[str, int]:
    """Answers missing or repeated, in Postgres (result rows per page and question) and in S3
    (JSONL lines per page and question of each document, found through the job's manifest)."""
    from sqlalchemy import func, select

    from jobs.db import session_scope
    from jobs.models import Page, Result

    storage = get_storage()
    ids = [uuid.UUID(job_id) for job_id in job_ids]
    with session_scope() as session:
        page_rows = session.execute(
            select(Page.job_id, func.count()).where(Page.job_id.in_(ids)).group_by(Page.job_id)
        ).all()
        rows = session.execute(
            select(Page.id, func.count(Result.id))
            .outerjoin(Result, Result.page_id == Page.id)
            .where(Page.job_id.in_(ids))
            .group_by(Page.id)
        ).all()
    expected = len(job_ids) * pages  # one question (OCR) per page
    figures = {
        "pages_expected": expected,
        # Pages never written count as lost too: a job whose ingest was lost has no page rows.
        "db_lost": expected - sum(count for _, count in page_rows) + sum(1 for _, n in rows if n == 0),
        "db_duplicated": sum(n - 1 for _, n in rows if n > 1),
        "s3_lost": 0,
        "s3_duplicated": 0,
    }
    for job_id in job_ids:
        manifest = json.loads(storage.get(wait_for_manifest(storage, job_id)))
        for entry in manifest["documents"]:
            body = storage.get_uri(entry["result"])
            lines = Counter(
                (line["page"], line["question_index"]) for line in map(json.loads, body.splitlines())
            )
            figures["s3_lost"] += sum(1 for page in range(1, pages + 1) if lines[(page, 0)] == 0)
            figures["s3_duplicated"] += sum(n - 1 for n in lines.values() if n > 1)
    return figures


def wait_for_manifest(storage: Storage, job_id: str, timeout_s: float = 60.0) -> str:
    """The manifest's key, once written: the job's status turns final in Postgres just before
    its finisher (or the reconciler) writes the manifest."""
    key = storage.manifest_key(job_id)
    deadline = time.monotonic() + timeout_s
    while not storage.exists(key):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} has no manifest after {timeout_s:.0f} s")
        time.sleep(0.2)
    return key


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `share` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def report(figures: Figures, checks: dict[str, int], jobs: int, pages: int, concurrency: int) -> str:
    ms = 1000.0
    lines = [
        f"jobs: {jobs} x {pages} pages, concurrency {concurrency}; ended: {dict(figures.statuses)}",
        f"submit latency: p50 {percentile(figures.submit_s, 0.5) * ms:.0f} ms, "
        f"p99 {percentile(figures.submit_s, 0.99) * ms:.0f} ms ({len(figures.submit_s)} requests)",
        f"status latency: p50 {percentile(figures.status_s, 0.5) * ms:.0f} ms, "
        f"p99 {percentile(figures.status_s, 0.99) * ms:.0f} ms ({len(figures.status_s)} requests)",
        f"wall: {figures.wall_s:.1f} s; jobs completed per second: {jobs / figures.wall_s:.2f}; "
        f"pages per second: {jobs * pages / figures.wall_s:.2f}",
        f"pages: {checks['pages_expected']} expected; lost: {checks['db_lost']} in Postgres, "
        f"{checks['s3_lost']} in S3; duplicated: {checks['db_duplicated']} in Postgres, "
        f"{checks['s3_duplicated']} in S3",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--pages", type=int, default=2, help="Pages per job (one document each).")
    parser.add_argument("--concurrency", type=int, default=8, help="Requests in flight at once.")
    parser.add_argument("--poll", type=float, default=1.0, help="Seconds between status polls of a job.")
    parser.add_argument("--gpu-workers", type=int, default=1, help="gpu worker processes (own stack only).")
    parser.add_argument("--model", default=None, help="Checkpoint for the own stack (default: a tiny one).")
    parser.add_argument("--api-url", default=None, help="Load a running stack instead of starting one.")
    parser.add_argument("--api-key", default=os.environ.get("MONKEYJOBS_API_KEY"))
    parser.add_argument("--logs", type=Path, default=REPO_ROOT / "var" / "load", help="Own stack's logs.")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.api_url:
            if not args.api_key:
                parser.error("--api-url needs --api-key (or MONKEYJOBS_API_KEY)")
            api_url, api_key = args.api_url, args.api_key
        else:
            args.logs.mkdir(parents=True, exist_ok=True)
            print(f"starting a stack on this machine (logs: {args.logs}); a tiny model's answers are noise")
            api_url, api_key = stack.enter_context(local_stack(args.gpu_workers, args.model, args.logs))
        # One job first, not measured: it waits for the workers to load the model and warms
        # every connection pool, so the figures are those of a running service.
        warm_up = asyncio.run(asyncio.wait_for(load(api_url, api_key, 1, args.pages, 1, args.poll), 600))
        if warm_up.statuses["succeeded"] != 1:
            print(f"the warm-up job did not succeed: {dict(warm_up.statuses)}", file=sys.stderr)
            return 1
        figures = asyncio.run(load(api_url, api_key, args.jobs, args.pages, args.concurrency, args.poll))
        checks = lost_and_duplicated(figures.job_ids, args.pages)
    print(report(figures, checks, args.jobs, args.pages, args.concurrency))
    lost = checks["db_lost"] + checks["s3_lost"] + checks["db_duplicated"] + checks["s3_duplicated"]
    return 1 if lost or figures.statuses["succeeded"] != args.jobs else 0


if __name__ == "__main__":
    sys.exit(main())
