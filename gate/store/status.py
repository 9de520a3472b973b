"""What the store says about the service as a whole, for the gate daemon's metrics: the backlog and
the workers' last sign of life. Counted in the store, so they hold whatever the broker or the workers'
own metrics endpoints do."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gate.store.models import Comparison, Worker


def queued_comparisons(session: Session) -> int:
    """Comparisons waiting for a worker (queued, not yet claimed)."""
    return session.scalar(select(func.count()).select_from(Comparison).where(Comparison.status == "queued")) or 0


def last_worker_heartbeat(session: Session) -> datetime | None:
    """The newest heartbeat of any worker (None: no worker ever started on this store)."""
    return session.scalar(select(func.max(Worker.last_seen)))
