"""The database: models, keyword-only repository functions, engines/sessions and migrations.
`from gate.store import repository as repo` and call `repo.create_run(session, ...)`."""

from gate.store.db import current_revision, downgrade, head_revision, make_engine, session_scope, upgrade
from gate.store.models import Alert, Base, Comparison, LayerMetric, Run, Suite, Worker

__all__ = [
    "Alert", "Base", "Comparison", "LayerMetric", "Run", "Suite", "Worker",
    "current_revision", "downgrade", "head_revision", "make_engine", "session_scope", "upgrade",
]
