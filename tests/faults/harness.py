"""What the fault tests share: a small job, waiting on a condition, reading page states from
Postgres, the exactly-once check, and `TcpGate`, a port that can be taken down and brought back.

Imported by the test modules of this folder; the fixtures that start processes live in
tests/stack.py and tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from tests.stack import EXAMPLES, read_jsonl, submit, wait_for_manifest

# 2 + 3 + 3 = 8 pages in chunks of 2; enough new tokens that a chunk takes a few seconds, so
# that a fault injected "while a chunk runs" lands inside one.
FILES = [("invoice.pdf", "invoice.pdf"), ("fax-a.tiff", "fax.tiff"), ("fax-b.tiff", "fax.tiff")]
PAGES = 8
OPTIONS = {"max_new_tokens": 24, "detail_max_tiles": 4, "adaptive_max_tiles": 3}


def submit_job(api: Any) -> str:
    files = [(name, (EXAMPLES / sample).read_bytes()) for name, sample in FILES]
    return str(submit(api, files, task="ocr", options=OPTIONS)["id"])


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def page_counts(job_id: str) -> dict[str, int]:
    """Pages of the job by status, as Postgres has them."""
    from jobs.db import session_scope
    from jobs.models import Page

    with session_scope() as session:
        rows = session.execute(
            select(Page.status, func.count()).where(Page.job_id == uuid.UUID(job_id)).group_by(Page.status)
        ).all()
    return {status: count for status, count in rows}


def results_per_page(job_id: str) -> dict[tuple[str, int], int]:
    """(document id, page number) -> result rows, for every page of the job (0 for none)."""
    from jobs.db import session_scope
    from jobs.models import Page, Result

    with session_scope() as session:
        rows = session.execute(
            select(Page.document_id, Page.page_number, func.count(Result.id))
            .outerjoin(Result, Result.page_id == Page.id)
            .where(Page.job_id == uuid.UUID(job_id))
            .group_by(Page.id)
        ).all()
    return {(str(document_id), number): count for document_id, number, count in rows}


def assert_exactly_once(job: dict[str, Any], settings: Any, s3: Any, pages: int = PAGES) -> None:
    """Succeeded, one result row per page, each page once in its document's JSONL (read from
    the locations the manifest gives, so that a JSONL written late by the reconciler counts)."""
    assert job["status"] == "succeeded", job
    assert job["counts"]["pages"] == job["counts"]["pages_done"] == pages, job["counts"]
    per_page = results_per_page(job["id"])
    assert len(per_page) == pages and set(per_page.values()) == {1}, per_page
    for document in wait_for_manifest(s3, settings.s3_bucket, job["id"])["documents"]:
        lines = read_jsonl(s3, settings.s3_bucket, document["result"])
        assert [line["page"] for line in lines] == list(range(1, document["pages"] + 1)), document


class TcpGate:
    """A TCP forwarder on a loopback port in front of a real server, that can be taken down.

    While down, every connection is reset as soon as it is made (and open ones are reset when it
    goes down), which is what clients of a dead S3 node behind a load balancer see; `resets`
    counts the connections refused while down, so a test can show that the outage was met. The
    server behind the gate keeps its state: moto keeps objects only in memory, and restarting
    it would lose the bucket, which is data loss, not the outage under test."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.resets = 0
        self._up = True
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()  # `_up` and `_live` change together
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self._up = False
            live, self._live = self._live, set()
        for sock in live:
            _reset(sock)

    def up(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self.down()
        _reset(self._listener)  # shutdown() wakes the thread blocked in accept()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream: socket.socket | None = socket.create_connection(self.target, timeout=5)
            except OSError:
                upstream = None
            with self._lock:
                # Decided under the lock: a connection made just as the gate goes down is
                # reset like the others, never left to carry traffic through the outage.
                admitted = self._up and upstream is not None
                if admitted:
                    self._live.update((client, upstream))
                elif not self._up:
                    self.resets += 1
            if not admitted:
                for sock in (client, upstream):
                    if sock is not None:
                        _reset(sock)
                continue
            assert upstream is not None
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        # One side ended (or the gate went down): end the other so that neither hangs half-open.
        with self._lock:
            self._live.difference_update((source, sink))
        for sock in (source, sink):
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Abort a connection: shutdown() first, since close() alone neither wakes another thread
    blocked in recv() on it nor sends anything while that thread holds it; then close with
    linger 0, which sends RST as the kernel of a dead server answers its peers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
