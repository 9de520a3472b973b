"""The database: models, keyword-only repository functions, engines and sessions. Migrations live in
`gate.store.migrate` (imported on demand: it loads Alembic). Use `from gate.store import repository as
repo` and call `repo.create_run(session, ...)` inside `with session_scope(engine) as session:`."""

from gate.store.db import make_engine, session_scope
from gate.store.models import Alert, Base, Comparison, LayerMetric, Run, Suite, Worker

__all__ = [
    "Alert",
    "Base",
    "Comparison",
    "LayerMetric",
    "Run",
    "Suite",
    "Worker",
    "make_engine",
    "session_scope",
]
