"""Alembic: upgrade from empty, downgrade to base, and the models agree with the revisions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from jobs.models import Base
from migrations import alembic_config
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"monkeyjobs_migrate_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_downgrade_and_models_agree(empty_database: str) -> None:
    config = alembic_config(empty_database)
    engine = create_engine(empty_database)
    try:
        command.upgrade(config, "head")
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, Base.metadata) == []
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        command.upgrade(config, "head")  # and up again from base
    finally:
        engine.dispose()


def test_cli_upgrade(empty_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cli.service import db
    from jobs.settings import get_settings

    monkeypatch.setenv("MONKEYJOBS_DATABASE_URL", empty_database)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(db, ["upgrade"])
        assert result.exit_code == 0, result.output
    finally:
        get_settings.cache_clear()
    engine = create_engine(empty_database)
    try:
        assert "results" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
