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
    # Imported here: Alembic and SQLAlchemy would slow every other command, and gate.cli imports us.
    from alembic.util import CommandError
    from sqlalchemy import make_url
    from sqlalchemy.exc import OperationalError

    from gate.cli import UsageFailure
    from gate.store import migrate

    shown = make_url(url).render_as_string(hide_password=True)
    try:
        getattr(migrate, direction)(url, revision)
        reached = migrate.current_revision(url) or "base"
    except CommandError as exc:
        raise UsageFailure(f"revision {revision!r}: {exc}") from exc
    except OperationalError as exc:
        raise UsageFailure(f"database {shown}: {exc.orig}") from exc
    click.echo(f"{shown}: at revision {reached}")
