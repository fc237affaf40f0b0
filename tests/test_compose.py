"""docker-compose.yml cannot run here: check that it makes sense without Docker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli.main import main
from jobs.settings import ENV_PREFIX, Settings

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
SHARED = (
    "MONKEYJOBS_DATABASE_URL",
    "MONKEYJOBS_BROKER_URL",
    "MONKEYJOBS_S3_ENDPOINT_URL",
    "MONKEYJOBS_S3_BUCKET",
)


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def monkeyjobs_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image", "").startswith("monkeyjobs")}


def resolve(args: list[str]) -> click.Command:
    """The click command `monkeyjobs ARGS` runs; its options are parsed (raises if invalid)."""
    command: click.Command = main
    name = "monkeyjobs"
    while isinstance(command, click.Group):
        assert args, f"{name} is a group: a subcommand is missing"
        name, *args = args
        assert name in command.commands, f"no command {name!r}"
        command = command.commands[name]
    command.make_context(name, list(args))
    return command


def test_every_service_runs_a_real_monkeyjobs_command(services: dict[str, dict[str, Any]]) -> None:
    ours = monkeyjobs_services(services)
    assert {"migrate", "api", "ingest-worker", "gpu-worker"} <= set(ours)
    for name, service in ours.items():
        command = service["command"]
        assert command[0] == "monkeyjobs", name
        resolve(command[1:])
    with pytest.raises(click.UsageError):
        resolve(["worker", "--no-such-option"])


def test_settings_exist_and_agree(services: dict[str, dict[str, Any]]) -> None:
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    ours = monkeyjobs_services(services)
    for name, service in ours.items():
        env = service["environment"]
        unknown = {key for key in env if key.startswith(ENV_PREFIX)} - fields
        assert not unknown, f"{name} sets unknown settings {unknown}"
        for key in SHARED:
            assert env[key] == ours["api"]["environment"][key], f"{name}: {key} differs from the api's"


def test_gpu_workers_scale(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["gpu-worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == 1 and "gpu" in device["capabilities"]
    assert "MONKEYJOBS_MODEL" in gpu["environment"] and gpu["volumes"]
    for name in ("gpu-worker", "ingest-worker"):
        assert "container_name" not in services[name] and "ports" not in services[name]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "ingest-worker", "gpu-worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
