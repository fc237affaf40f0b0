"""`monkeyjobs worker`: a Celery worker for the ingest and/or gpu queues, started in-process."""

from __future__ import annotations

import os

import click

from jobs.queue import GPU_QUEUE, INGEST_QUEUE, QUEUES

# The pool process loads the engine before it reports itself alive; a real checkpoint takes
# longer than Celery's default 4 s to load, after which the parent would kill the child.
ENGINE_LOAD_TIMEOUT_S = 1800.0


def _parse_queues(value: str) -> list[str]:
    queues = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(queues) - set(QUEUES))
    if not queues or unknown:
        raise click.BadParameter(f"choose from {', '.join(QUEUES)}; got {value!r}")
    return list(dict.fromkeys(queues))


@click.command()
@click.option("--queues", "-Q", default=",".join(QUEUES), show_default=True, help="Comma-separated queues.")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="Pool processes. A worker on the gpu queue always runs 1 (one engine per process per GPU); "
    "ingest defaults to the number of CPUs.",
)
@click.option("--loglevel", "-l", default=None, help="Celery log level (default: MONKEYJOBS_LOG_LEVEL).")
@click.option("--hostname", "-n", default=None, help="Node name (default: monkeyjobs-<queues>-<pid>@%h).")
@click.option(
    "--reconcile/--no-reconcile",
    default=True,
    show_default=True,
    help="Run the reconciler loop in this worker (only where it consumes the ingest queue).",
)
def worker(
    queues: str, concurrency: int | None, loglevel: str | None, hostname: str | None, reconcile: bool
) -> None:
    """Run a worker: `--queues ingest` on CPU machines, `--queues gpu` once per GPU."""
    from jobs.settings import get_settings
    from workers import gpu, reconciler
    from workers.celery_app import app

    selected = _parse_queues(queues)
    settings = get_settings()
    nodename = hostname or f"monkeyjobs-{'-'.join(selected)}-{os.getpid()}@%h"
    argv = [
        "worker",
        f"--queues={','.join(selected)}",
        f"--loglevel={(loglevel or settings.log_level).upper()}",
        f"--hostname={nodename}",
        "--pool=prefork",
        # No gossip/mingle/heartbeat events: workers coordinate through Postgres, not each other.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if GPU_QUEUE in selected:
        if concurrency not in (None, 1):
            raise click.BadParameter(
                "a gpu worker runs one process: start one worker per GPU", param_hint="-c"
            )
        argv.append("--concurrency=1")
        app.conf.worker_proc_alive_timeout = ENGINE_LOAD_TIMEOUT_S
        gpu.load_engine_in_pool_process()
    elif concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if INGEST_QUEUE in selected and reconcile:
        reconciler.run_in_worker(settings)
    app.worker_main(argv)


COMMANDS = [worker]
