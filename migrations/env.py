"""Alembic environment: migrates the connection `gate.store.db` hands over, or else the URL from
alembic.ini / LPIPS_GATE_DATABASE_URL (the plain `alembic` CLI)."""

from alembic import context
from sqlalchemy.engine import Connection

from gate.store.db import make_engine
from gate.store.models import Base


def _url() -> str:
    from gate.settings import Settings

    return context.config.get_main_option("sqlalchemy.url") or Settings().database_url


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (given := context.config.attributes.get("connection")) is not None:
    _migrate(given)
else:
    engine = make_engine(_url())
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()
