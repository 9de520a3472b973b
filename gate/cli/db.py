"""`lpips-gate db upgrade|downgrade`: apply the Alembic migrations to Settings.database_url."""

from __future__ import annotations

import click

from gate.settings import Settings


@click.group()
def db() -> None:
    """Create or migrate the database schema (LPIPS_GATE_DATABASE_URL)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@click.pass_obj
def upgrade_command(settings: Settings, revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    _migrate("upgrade", settings.database_url, revision)


@db.command("downgrade")
@click.argument("revision")
@click.pass_obj
def downgrade_command(settings: Settings, revision: str) -> None:
    """Migrate the database down to REVISION ("base" drops every table)."""
    _migrate("downgrade", settings.database_url, revision)


def _migrate(direction: str, url: str, revision: str) -> None:
    from gate.store.opening import migrate_store  # Alembic: only for this command

    shown, reached = migrate_store(url, direction=direction, revision=revision)
    click.echo(f"{shown}: at revision {reached}")
