"""The S3 object layout and a small boto3 wrapper.

Layout (every key under the optional `MONKEYJOBS_S3_PREFIX`):
- `inputs/{job_id}/{document_id}`: an uploaded document, as received;
- `jobs/{job_id}/documents/{document_id}.jsonl`: one JSON line per answer of that document;
- `jobs/{job_id}/manifest.json`: the job summary written when it ends.
Keys depend only on ids, so writing an object again (a redelivered task) replaces it, never
duplicates it. Credentials come from boto3's standard chain; only the endpoint is ours.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, BinaryIO

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from jobs.settings import Settings, get_settings

S3_SCHEME = "s3://"
JSONL_CONTENT_TYPE = "application/x-ndjson"


def _join(prefix: str, key: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def input_key(job_id: uuid.UUID | str, document_id: uuid.UUID | str, prefix: str = "") -> str:
    return _join(prefix, f"inputs/{job_id}/{document_id}")


def document_result_key(job_id: uuid.UUID | str, document_id: uuid.UUID | str, prefix: str = "") -> str:
    return _join(prefix, f"jobs/{job_id}/documents/{document_id}.jsonl")


def manifest_key(job_id: uuid.UUID | str, prefix: str = "") -> str:
    return _join(prefix, f"jobs/{job_id}/manifest.json")


def job_results_prefix(job_id: uuid.UUID | str, prefix: str = "") -> str:
    return _join(prefix, f"jobs/{job_id}/")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Location:
    """`s3://bucket/key` -> S3Location; ValueError for anything else (no key, other scheme)."""
    if not uri.startswith(S3_SCHEME):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket or not key:
        raise ValueError(f"an s3:// URI needs a bucket and a key: {uri!r}")
    return S3Location(bucket, key)


def is_not_found(error: ClientError) -> bool:
    """True when boto3's error means the bucket or object does not exist."""
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}


@lru_cache(maxsize=8)
def _client(endpoint_url: str, region: str, timeout_s: float | None = None) -> BaseClient:
    if timeout_s is None:
        # Standard retry mode retries throttling and 5xx with backoff: S3's bad minutes.
        config = Config(retries={"mode": "standard", "max_attempts": 5}, s3={"addressing_style": "path"})
    else:
        # A probe (readiness) answers fast or not at all.
        config = Config(
            retries={"mode": "standard", "max_attempts": 1},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            s3={"addressing_style": "path"},
        )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint_url or None, region_name=region or None, config=config
    )


class Storage:
    """The service's bucket and prefix, with the few operations the service needs."""

    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.presign_seconds = settings.s3_presign_seconds
        self.region = settings.s3_region
        self.endpoint_url = settings.s3_endpoint_url
        self.client = _client(settings.s3_endpoint_url, settings.s3_region)

    # --- keys of this deployment --------------------------------------------------------------
    def input_key(self, job_id: uuid.UUID | str, document_id: uuid.UUID | str) -> str:
        return input_key(job_id, document_id, self.prefix)

    def document_result_key(self, job_id: uuid.UUID | str, document_id: uuid.UUID | str) -> str:
        return document_result_key(job_id, document_id, self.prefix)

    def manifest_key(self, job_id: uuid.UUID | str) -> str:
        return manifest_key(job_id, self.prefix)

    def uri(self, key: str) -> str:
        return S3Location(self.bucket, key).uri

    # --- operations (bucket defaults to ours; pass another for s3:// inputs) -------------------
    def put(
        self,
        key: str,
        body: bytes | BinaryIO,
        content_type: str = "application/octet-stream",
        bucket: str | None = None,
    ) -> None:
        self.client.put_object(Bucket=bucket or self.bucket, Key=key, Body=body, ContentType=content_type)

    def get(self, key: str, bucket: str | None = None, max_bytes: int | None = None) -> bytes:
        """The object's bytes. With `max_bytes`, reads at most that many plus one, so that a caller
        can tell an over-limit object without downloading all of it."""
        kwargs: dict[str, Any] = {"Bucket": bucket or self.bucket, "Key": key}
        if max_bytes is not None:
            kwargs["Range"] = f"bytes=0-{max_bytes}"
        return self.client.get_object(**kwargs)["Body"].read()

    def get_uri(self, uri: str, max_bytes: int | None = None) -> bytes:
        location = parse_s3_uri(uri)
        return self.get(location.key, bucket=location.bucket, max_bytes=max_bytes)

    def head(self, key: str, bucket: str | None = None) -> dict[str, Any] | None:
        """The object's metadata (`ContentLength`, ...), or None when it does not exist."""
        try:
            return self.client.head_object(Bucket=bucket or self.bucket, Key=key)
        except ClientError as error:
            if is_not_found(error):
                return None
            raise

    def exists(self, key: str, bucket: str | None = None) -> bool:
        return self.head(key, bucket) is not None

    def presign_get(self, key: str, bucket: str | None = None, expires_s: int | None = None) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket or self.bucket, "Key": key},
            ExpiresIn=expires_s or self.presign_seconds,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (development and tests; production pre-creates it)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if not is_not_found(error):
                raise
            if self.region and self.region != "us-east-1":
                # AWS wants the region named for every region but its default one.
                self.client.create_bucket(
                    Bucket=self.bucket, CreateBucketConfiguration={"LocationConstraint": self.region}
                )
            else:
                self.client.create_bucket(Bucket=self.bucket)

    def check(self, timeout_s: float) -> None:
        """Raise unless the bucket answers within about `timeout_s` (readiness)."""
        _client(self.endpoint_url, self.region, timeout_s).head_bucket(Bucket=self.bucket)


@lru_cache(maxsize=1)
def get_storage() -> Storage:
    """The process-wide storage for the settings of the environment."""
    return Storage(get_settings())
