"""Shared database fixtures: real PostgreSQL (loopback) and SQLite, schema built by the migrations.

- `pg_url` / `sqlite_url`: a fresh database at the migration head, dropped afterwards.
- `pg_empty_url` / `sqlite_empty_url`: the same, never migrated.
- `db_url`: parametrised over both dialects; `engine` and `session_factory` are built on it.

PostgreSQL databases are uniquely named clones of one template migrated per test session (fast),
each given its own store key (so its own broker queue), as a migrated database would have;
LPIPS_GATE_TEST_POSTGRES_URL points the fixtures at another server (default: local, user postgres)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from gate.store.db import make_engine
from gate.store.migrate import upgrade

pytest_plugins = ["tests.cluster"]  # the `servers` and `workers` fixtures of the worker tests

POSTGRES_URL = os.environ.get(
    "LPIPS_GATE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_database_url(name: str) -> str:
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _pg_admin() -> Iterator[Engine]:
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


def _create_pg_database(admin: Engine, template: str | None = None) -> str:
    name = f"lpips_gate_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.exec_driver_sql(
            f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        )
    return name


def _drop_pg_database(admin: Engine, name: str) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _pg_template(_pg_admin: Engine) -> Iterator[str]:
    name = _create_pg_database(_pg_admin)
    upgrade(_pg_database_url(name))
    yield name
    _drop_pg_database(_pg_admin, name)


@pytest.fixture
def pg_empty_url(_pg_admin: Engine) -> Iterator[str]:
    name = _create_pg_database(_pg_admin)
    yield _pg_database_url(name)
    _drop_pg_database(_pg_admin, name)


@pytest.fixture
def pg_url(_pg_admin: Engine, _pg_template: str) -> Iterator[str]:
    name = _create_pg_database(_pg_admin, template=_pg_template)
    yield _new_store_key(_pg_database_url(name))
    _drop_pg_database(_pg_admin, name)


def _new_store_key(url: str) -> str:
    """A clone of the template would share its key, and its queue, with every other clone."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE store_identity SET key = '{uuid.uuid4().hex}'")
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "gate.db"
    upgrade(f"sqlite:///{path}")  # the engine is disposed, so the WAL is checkpointed into the file
    return path


@pytest.fixture
def sqlite_empty_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gate.db'}"


@pytest.fixture
def sqlite_url(tmp_path: Path, _sqlite_template: Path) -> str:
    path = tmp_path / "gate.db"
    shutil.copyfile(_sqlite_template, path)
    return _new_store_key(f"sqlite:///{path}")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    """`with session_factory.begin() as session:` is one committed transaction."""
    return sessionmaker(engine, expire_on_commit=False)
