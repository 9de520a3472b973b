"""Opening the store for a command. Its schema must be at this version's head: only the embedded
default (SQLite under the user's data folder) is created and migrated on first use. Any other database
is migrated by `lpips-gate db upgrade` alone, never as a side effect of a producer's command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from gate.errors import StoreNotReady
from gate.settings import Settings
from gate.store import migrate
from gate.store.db import make_engine


def shown_url(url: str) -> str:
    """The URL as messages show it: password hidden; a malformed one is StoreNotReady."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        raise StoreNotReady(f"LPIPS_GATE_DATABASE_URL: {exc}") from exc


@contextmanager
def open_store(settings: Settings) -> Iterator[Engine]:
    """An engine on a database at the schema head; StoreNotReady names the database (password
    hidden) when it is unreachable or not migrated, and says how to migrate it."""
    shown = shown_url(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with _not_ready(shown):
            _require_head(settings, shown, engine)
            yield engine
    finally:
        engine.dispose()


def connect_store(settings: Settings) -> Engine:
    """`open_store` for a long-lived process (the HTTP API): the engine, which the caller disposes."""
    shown = shown_url(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with _not_ready(shown):
            _require_head(settings, shown, engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def _not_ready(shown: str) -> Iterator[None]:
    """An unreachable database or a failed migration as StoreNotReady, naming the database."""
    try:
        yield
    except OperationalError as exc:
        raise StoreNotReady(f"database {shown}: {exc.orig}") from exc
    except CommandError as exc:
        raise StoreNotReady(f"database {shown}: cannot migrate to head: {exc}") from exc


def _require_head(settings: Settings, shown: str, engine: Engine) -> None:
    """Checked through the engine the command then uses: a connection (and SQLAlchemy's first-connect
    queries) each time cost a submission tens of milliseconds."""
    url, head = settings.database_url, migrate.head_revision()
    if settings.embedded_store:
        if migrate.revision_on(engine) != head:
            migrate.upgrade(url)
        return
    if missing_sqlite_file(url):  # connecting would create it
        raise StoreNotReady(f"database {shown}: no such file; create it with `lpips-gate db upgrade`")
    current = migrate.revision_on(engine)
    if current != head:
        raise StoreNotReady(
            f"database {shown}: schema at revision {current or 'none'}, this version needs {head}; "
            "migrate it with `lpips-gate db upgrade`"
        )


def missing_sqlite_file(url: str) -> bool:
    """A SQLite file that is not there (yet): connecting would create it."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:") and not Path(
        parsed.database
    ).exists()


def migrate_store(url: str, *, direction: str, revision: str) -> tuple[str, str]:
    """`db upgrade` / `db downgrade`: migrate to `revision`; (the URL as shown, the revision reached)."""
    shown = shown_url(url)
    try:
        getattr(migrate, direction)(url, revision)
        return shown, migrate.current_revision(url) or "base"
    except CommandError as exc:
        raise StoreNotReady(f"revision {revision!r}: {exc}") from exc
    except OperationalError as exc:
        raise StoreNotReady(f"database {shown}: {exc.orig}") from exc
