"""Fault tests start and kill their own workers (tests/stack.py)."""

from __future__ import annotations

from tests.stack import s3, start_worker, worker_env

__all__ = ["s3", "start_worker", "worker_env"]  # fixtures, found by pytest through this module
