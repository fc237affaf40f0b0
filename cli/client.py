"""Client commands against a running API: `monkeyjobs submit`, `status`, `results`.

They read `MONKEYJOBS_API_URL` and `MONKEYJOBS_API_KEY` and import nothing heavy (no torch, no
SQL): only click and httpx.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import httpx

from jobs.formats import path_safe_filename

TERMINAL = {"succeeded", "partial", "failed", "cancelled"}
DEFAULT_API_URL = "http://127.0.0.1:8000"


class Api:
    """A small httpx wrapper that turns problem+json answers into click errors."""

    def __init__(self) -> None:
        self.url = os.environ.get("MONKEYJOBS_API_URL", DEFAULT_API_URL).rstrip("/")
        key = os.environ.get("MONKEYJOBS_API_KEY", "")
        if not key:
            raise click.UsageError("set MONKEYJOBS_API_KEY (see `monkeyjobs admin create-key`)")
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            try:
                problem = response.json()
                message = f"{problem.get('title')}: {problem.get('detail')}"
                if problem.get("errors"):
                    message += "\n" + json.dumps(problem["errors"], indent=2)
            except ValueError:
                message = response.text
            raise click.ClickException(f"HTTP {response.status_code}: {message}")
        return response

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/jobs/{job_id}").json()


def _option(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"expected k=v, got {value!r}")
    try:
        return name, json.loads(raw)  # numbers and true/false as JSON; anything else as text
    except json.JSONDecodeError:
        return name, raw


def wait_for(api: Api, job_id: str, poll_s: float) -> dict[str, Any]:
    """Poll until the job ends, with a progress bar over its pages."""
    job = api.job(job_id)
    shown = 0
    with click.progressbar(
        length=max(job["counts"]["pages"], 1), label=f"job {job_id}", show_pos=True
    ) as bar:
        while True:
            counts = job["counts"]
            bar.length = max(counts["pages"], 1)
            ended = counts["pages_done"] + counts["pages_failed"]
            bar.update(ended - shown)
            shown = ended
            if job["status"] in TERMINAL:
                return job
            time.sleep(poll_s)
            job = api.job(job_id)


def summary(job: dict[str, Any]) -> str:
    counts = job["counts"]
    lines = [
        f"job {job['id']}: {job['status']} ({job['task']})",
        f"  documents {counts['documents']} (failed {counts['documents_failed']}), pages {counts['pages']} "
        f"(done {counts['pages_done']}, failed {counts['pages_failed']})",
    ]
    for document in job["documents"]:
        line = f"  - {document['filename']} [{document['status']}]"
        if document["error"]:
            line += f" {document['error']['code']}: {document['error']['message']}"
        if document["result"]:
            line += f" -> {document['result']}"
        lines.append(line)
        lines += [f"      page {e['page']}: {e['code']}: {e['message']}" for e in document["page_errors"]]
    if job.get("manifest"):
        lines.append(f"  manifest: {job['manifest']}")
    return "\n".join(lines)


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--task", type=click.Choice(["ocr", "qa"]), default="ocr", show_default=True)
@click.option("--question", "questions", multiple=True, help="A question (task qa); repeat for more.")
@click.option("--option", "options", multiple=True, help="Inference option k=v (e.g. scm=true); repeatable.")
@click.option("--pages", help='Pages of every document, e.g. "1-3,7".')
@click.option("--metadata", help="JSON object kept with the job.")
@click.option("--webhook-url", help="URL called when the job ends.")
@click.option("--idempotency-key", help="Submitting again with the same key returns the same job.")
@click.option("--wait", is_flag=True, help="Wait for the job to end, with a progress bar.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between status polls with --wait.")
def submit(
    files: tuple[Path, ...],
    task: str,
    questions: tuple[str, ...],
    options: tuple[str, ...],
    pages: str | None,
    metadata: str | None,
    webhook_url: str | None,
    idempotency_key: str | None,
    wait: bool,
    poll: float,
) -> None:
    """Submit FILES as one job; prints the job id (last line) or, with --wait, its outcome."""
    api = Api()
    data: dict[str, str] = {"task": task, "options": json.dumps(dict(_option(o) for o in options))}
    if questions:
        data["questions"] = json.dumps(list(questions))
    for name, value in (("pages", pages), ("metadata", metadata), ("webhook_url", webhook_url)):
        if value:
            data[name] = value
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    handles = [path.open("rb") for path in files]
    try:
        parts = [("files", (path.name, handle)) for path, handle in zip(files, handles, strict=True)]
        job = api.request("POST", "/v1/jobs", data=data, files=parts, headers=headers).json()
    finally:
        for handle in handles:
            handle.close()
    if wait:
        job = wait_for(api, job["id"], poll)
        click.echo(summary(job))
    click.echo(job["id"])


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the job object as JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's status, counts and per-document errors."""
    job = Api().job(job_id)
    click.echo(json.dumps(job, indent=2) if as_json else summary(job))


@click.command()
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write each document's JSONL here.",
)
def results(job_id: str, output: Path | None) -> None:
    """Print a job's answers, or with -o write each document's JSONL into a directory."""
    api = Api()
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        for document in api.job(job_id)["documents"]:
            if not document.get("result_url"):
                continue
            # The API redirects to a presigned S3 URL, fetched without our API key.
            location = api.request("GET", document["result_url"], follow_redirects=False).headers["location"]
            body = httpx.get(location, timeout=120)
            body.raise_for_status()
            name = f"{document['id']}-{path_safe_filename(document['filename'] or '')}.jsonl"
            (output / name).write_bytes(body.content)
            click.echo(output / name)
        return
    cursor: str | None = None
    while True:
        params = {"cursor": cursor} if cursor else {}
        page = api.request("GET", f"/v1/jobs/{job_id}/results", params=params).json()
        for item in page["items"]:
            click.echo(f"== {item['filename']} page {item['page']}: {item['question']}")
            click.echo(item["answer"])
        cursor = page["next_cursor"]
        if cursor is None:
            return


COMMANDS: list[click.Command] = [submit, status, results]
