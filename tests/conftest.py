"""Service fixtures shared by every test folder: real Postgres, Redis and an S3 server.

- `database_url`: a fresh database on the local Postgres (127.0.0.1:5432, user postgres, trust
  auth), migrated with Alembic, dropped when the session ends;
- `redis_url`: a Redis database number claimed for this session (several test sessions may run
  on one machine at once), emptied at start and end;
- `s3_endpoint` / `s3_bucket`: moto's S3 server on a free loopback port, with the bucket made;
- `service_env`: the `MONKEYJOBS_*` (and AWS) variables for all of the above, set in
  `os.environ` for the session so that subprocesses (API, workers) inherit them;
- `settings`: the `Settings` object read from that environment;
- `tiny_model`: a tiny random Mini-Monkey checkpoint directory;
- `api_server`: a real uvicorn process with a fresh tenant key; `start_api` starts more.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from jobs.settings import Settings, get_settings

PG_ADMIN_URL = os.environ.get("MONKEYJOBS_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST_URL = os.environ.get("MONKEYJOBS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REPO_ROOT = Path(__file__).resolve().parent.parent
# Marks the Redis database a test session holds; other sessions skip a database that has it.
REDIS_CLAIM_KEY = "monkeyjobs:test-session"
UVICORN_ARGS = ("--host", "127.0.0.1", "--log-level", "warning", "--port")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll `url` until it answers at all (any status), failing early if `process` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s}s")


@contextlib.contextmanager
def fresh_database(prefix: str = "monkeyjobs_test") -> Iterator[str]:
    """A new database on the local Postgres, migrated to head; dropped (connections and all) on
    exit. Yields its SQLAlchemy URL. Also used by bench/load.py for a stack of its own."""
    import psycopg
    from alembic import command

    from migrations import alembic_config

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        command.upgrade(alembic_config(url), "head")
        yield url
    finally:
        from jobs.db import get_engine

        for engine_url in (None, url):
            with contextlib.suppress(Exception):
                get_engine(engine_url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def claimed_redis_db() -> Iterator[str]:
    """A Redis database number no other session holds, emptied at start and on exit. Yields
    its URL."""
    import redis

    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS_HOST_URL}/{number}")
        if client.set(REDIS_CLAIM_KEY, os.getpid(), nx=True, ex=6 * 3600):
            break
    else:
        raise RuntimeError("no free Redis database (1..15) for this session")
    for key in client.scan_iter():
        if key != REDIS_CLAIM_KEY.encode():
            client.delete(key)
    try:
        yield f"{REDIS_HOST_URL}/{number}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with claimed_redis_db() as url:
        yield url


@pytest.fixture(scope="session")
def aws_credentials() -> dict[str, str]:
    """Fake credentials for moto, found by boto3's standard chain through the environment."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str, aws_credentials: dict[str, str]) -> str:
    import boto3

    name = "monkeyjobs-test"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=aws_credentials["AWS_DEFAULT_REGION"],
        aws_access_key_id=aws_credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws_credentials["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    return name


def _clear_cached_settings() -> None:
    from jobs.storage import get_storage

    get_settings.cache_clear()
    get_storage.cache_clear()


@pytest.fixture(scope="session")
def service_env(
    database_url: str, redis_url: str, s3_endpoint: str, s3_bucket: str, aws_credentials: dict[str, str]
) -> Iterator[dict[str, str]]:
    env = {
        "MONKEYJOBS_DATABASE_URL": database_url,
        "MONKEYJOBS_BROKER_URL": redis_url,
        "MONKEYJOBS_S3_ENDPOINT_URL": s3_endpoint,
        "MONKEYJOBS_S3_BUCKET": s3_bucket,
        "MONKEYJOBS_S3_REGION": aws_credentials["AWS_DEFAULT_REGION"],
        **aws_credentials,
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    _clear_cached_settings()
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _clear_cached_settings()


@pytest.fixture(scope="session")
def settings(service_env: dict[str, str]) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@dataclass
class ApiServer:
    url: str
    key: str
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_tenant_key(database_url: str, tenant: str) -> str:
    """A new API key for `tenant` (created if needed), written straight to the database."""
    from jobs.auth import create_key
    from jobs.db import session_scope

    with session_scope(database_url) as session:
        return create_key(session, tenant)


@pytest.fixture(scope="session")
def start_api(
    service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ApiServer]]:
    """Start an API process (`monkeyjobs api` equivalent) with extra environment variables;
    every process started is stopped at the end of the session."""
    processes: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("api-logs")

    def start(tenant: str = "tenant-a", **env_overrides: str) -> ApiServer:
        port = free_port()
        log = (logs / f"api-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", *UVICORN_ARGS, str(port)],
            cwd=REPO_ROOT,
            env={**os.environ, **env_overrides},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", timeout_s=30, process=process)
        return ApiServer(url, create_tenant_key(service_env["MONKEYJOBS_DATABASE_URL"], tenant), process)

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def api_server(start_api: Callable[..., ApiServer]) -> ApiServer:
    return start_api()
