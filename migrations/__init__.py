"""Alembic migrations: the only way the schema changes.

`alembic_config()` builds the configuration in code so that migrations run from an installed
package (`monkeyjobs db upgrade`) as well as from a checkout (`alembic -c migrations/alembic.ini`).
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic config for this package; `database_url` overrides `MONKEYJOBS_DATABASE_URL`."""
    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if database_url:
        # '%' is ConfigParser interpolation syntax; URLs may hold percent-encoded passwords.
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config
