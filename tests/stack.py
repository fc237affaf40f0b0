"""The running stack for the end-to-end and fault tests: worker processes, jobs through HTTP.

Fixtures (imported by tests/e2e/conftest.py and tests/faults/conftest.py):
`s3`: a boto3 client of the session's S3 server.
`start_worker(queues, **env)` starts `monkeyjobs worker --queues ...` with the session's service
environment (tests/conftest.py), the tiny model on the CPU, short leases and a fast reconciler,
and waits until Celery says it is ready. Every worker started is stopped (SIGTERM, then SIGKILL)
at the end of the session; `WorkerProcess.stop` stops one earlier. Each worker's log is kept
next to the test's temporary files and printed when a test fails to start one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
ENDED = {"succeeded", "partial", "failed", "cancelled"}
MONKEYJOBS = str(Path(sys.executable).with_name("monkeyjobs"))
READY_TIMEOUT_S = 60.0

# Small and fast: chunks of 2 pages, a 10 s lease (the minimum), a reconciler every second and
# short webhook retries, so that lost or failed work comes back within the tests' time bounds.
WORKER_ENV = {
    "MONKEYJOBS_DEVICE": "cpu",
    "MONKEYJOBS_GPU_CHUNK_PAGES": "2",
    "MONKEYJOBS_PAGE_LEASE_S": "10",
    "MONKEYJOBS_RECONCILE_INTERVAL_S": "1",
    "MONKEYJOBS_WEBHOOK_BACKOFF_S": "0.2",
    "MONKEYJOBS_LOG_LEVEL": "INFO",
}


@dataclass
class WorkerProcess:
    queues: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0, group: bool = True) -> int:
        """Signal the worker's process group (or only its main process) and wait; SIGKILL the
        group if it does not exit in time. Returns the exit status."""
        if self.process.poll() is None:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture(scope="session")
def worker_env(service_env: dict[str, str], tiny_model: Path) -> dict[str, str]:
    return {**os.environ, **service_env, **WORKER_ENV, "MONKEYJOBS_MODEL": str(tiny_model)}


@pytest.fixture(scope="session")
def start_worker(
    worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(queues: str, **env: str) -> WorkerProcess:
        log_path = logs / f"worker-{queues.replace(',', '-')}-{len(started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [MONKEYJOBS, "worker", "--queues", queues, "--loglevel", "INFO"],
                cwd=REPO_ROOT,
                env={**worker_env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() reaches the pool too
            )
        worker = WorkerProcess(queues, process, log_path)
        started.append(worker)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while " ready." not in worker.log():
            if process.poll() is not None or time.monotonic() > deadline:
                worker.stop(signal.SIGKILL)
                pytest.fail(f"worker --queues {queues} did not start:\n{worker.log()[-4000:]}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in started:
        worker.stop()


# --- jobs through the HTTP API, results in S3 ---------------------------------------------------


def submit(api: Any, files: list[tuple[str, bytes]], **fields: Any) -> dict[str, Any]:
    data = {
        name: json.dumps(value) if isinstance(value, dict | list) else value for name, value in fields.items()
    }
    response = httpx.post(
        f"{api.url}/v1/jobs",
        headers=api.headers,
        files=[("files", (name, body, "application/octet-stream")) for name, body in files],
        data=data,
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()


def get_job(api: Any, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=api.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(api: Any, job_id: str, statuses: set[str] = ENDED, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(api, job_id)
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']}: {job['counts']}"
        time.sleep(0.3)


@pytest.fixture(scope="session")
def s3(settings: Any) -> Any:
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)


def read_jsonl(s3: Any, bucket: str, uri: str) -> list[dict[str, Any]]:
    key = uri.removeprefix(f"s3://{bucket}/")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def manifest(s3: Any, bucket: str, job_id: str) -> tuple[bytes, dict[str, Any]]:
    body = s3.get_object(Bucket=bucket, Key=f"jobs/{job_id}/manifest.json")["Body"].read()
    return body, json.loads(body)


def wait_for_manifest(s3: Any, bucket: str, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return manifest(s3, bucket, job_id)[1]
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, "no manifest"
            time.sleep(0.3)


def run_infer(*args: str, timeout_s: float = 300) -> tuple[int, list[dict[str, Any]]]:
    """`monkeyjobs infer ARGS --json` in a child process: its exit code and its JSON lines."""
    command = [sys.executable, "-m", "cli", "--log-level", "WARNING", "infer", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]
