"""Alembic, run from code: `upgrade(url)` is what `lpips-gate db upgrade` and the embedded mode call.
Kept apart from `gate.store.db` so that importing the store (and the CLI) does not load Alembic."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from gate.store.db import make_engine

# A wheel carries them as the package gate._migrations (setup.py maps the folder); a checkout (or an
# editable install) keeps them at the repository root, next to alembic.ini.
MIGRATION_DIRS = (
    Path(__file__).resolve().parents[1] / "_migrations",
    Path(__file__).resolve().parents[2] / "migrations",
)
_MIGRATION_LOCK_KEY = 0x1F1F5  # pg_advisory_xact_lock: one migrator at a time per database


def migrations_dir() -> Path:
    """The folder holding env.py and versions/, wherever this package was installed from."""
    for folder in MIGRATION_DIRS:
        if (folder / "env.py").is_file():
            return folder
    raise FileNotFoundError(
        f"Alembic migrations not found in {' or '.join(map(str, MIGRATION_DIRS))}: "
        "the lpips-gate installation is incomplete (reinstall its wheel)"
    )


def alembic_config() -> Config:
    """Alembic's configuration without alembic.ini: only the script location, found at run time."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`; a no-op when it is already there."""
    _migrate(url, command.upgrade, revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at `url` down to `revision` ("base" drops every table)."""
    _migrate(url, command.downgrade, revision)


def _migrate(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config()
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            config.attributes["connection"] = connection
            action(config, revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at (None: never migrated)."""
    engine = make_engine(url)
    try:
        return revision_on(engine)
    finally:
        engine.dispose()


def revision_on(engine: Engine) -> str | None:
    """`current_revision` through an engine the caller goes on to use: one connection, not two."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@functools.cache  # the migrations shipped with this installation: parsing them takes over 10 ms
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder holds no revision"
    return head
