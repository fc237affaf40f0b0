"""Webhook signatures: HMAC-SHA256 of the exact request body under the tenant's secret.

The job's final JSON is POSTed with header `X-Monkeyjobs-Signature: sha256=<hex>`; a receiver
recomputes it over the raw body with its secret and compares with `verify_signature`.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Monkeyjobs-Signature"
EVENT_HEADER = "X-Monkeyjobs-Event"
JOB_FINISHED_EVENT = "job.finished"


def sign_body(secret: str, body: bytes) -> str:
    """The value of `SIGNATURE_HEADER` for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header_value: str) -> bool:
    """True when `header_value` is the signature of `body` under `secret` (constant time)."""
    return hmac.compare_digest(sign_body(secret, body), header_value)
