"""Entry point of the `monkeyjobs` console script.

Each submodule owns one family of commands; heavy imports (torch, celery, sqlalchemy) happen
inside the commands so that `monkeyjobs --help` and the client commands stay light.
"""

from __future__ import annotations

import logging
import os

import click

from cli import client, model, service, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level", default=lambda: os.environ.get("MONKEYJOBS_LOG_LEVEL", "INFO"), show_default="INFO"
)
def main(log_level: str) -> None:
    """monkeyjobs: batch OCR and document QA with Mini-Monkey."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for module in (model, service, worker, client):
    for command in module.COMMANDS:
        main.add_command(command)
