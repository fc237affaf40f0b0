"""Service commands: `monkeyjobs db ...`, `monkeyjobs admin ...`, `monkeyjobs api`.

Heavy imports (alembic, sqlalchemy, uvicorn, the app) happen inside the commands.
"""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Migrate the database (MONKEYJOBS_DATABASE_URL) up to REVISION (default: head)."""
    from alembic import command

    from migrations import alembic_config

    command.upgrade(alembic_config(), revision)


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (`base` empties it)."""
    from alembic import command

    from migrations import alembic_config

    command.downgrade(alembic_config(), revision)


@click.group()
def admin() -> None:
    """Tenants and API keys."""


@admin.command("create-key")
@click.option("--tenant", required=True, help="Tenant name; created when it does not exist.")
def create_key(tenant: str) -> None:
    """Create an API key for TENANT. The key is printed as the last line and never shown again."""
    from jobs import auth
    from jobs.db import session_scope

    with session_scope() as session:
        key = auth.create_key(session, tenant)
    click.echo(f"Created an API key for tenant {tenant!r}; store it now, it is not kept:", err=True)
    click.echo(key)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Server processes.")
def api(host: str, port: int, workers: int) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, proxy_headers=True)


COMMANDS: list[click.Command] = [db, admin, api]
