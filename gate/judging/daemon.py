"""The gate daemon: every tick it judges each run whose comparisons have all finished and that has no
verdict yet, then sends the alerts owed to the webhook (new, resolved, and open ones due again). A run
that records its own policy (given at submission) is judged by it; the daemon's policies judge the rest.

One run that cannot be judged (no threshold configured) is logged once and skipped; a database or
webhook outage is logged and retried on the next tick. SIGTERM and SIGINT end the loop after the
tick in progress.

With an HTTP address the daemon answers probes and scrapes (gate.judging.http): alive while a tick
began or ended within STALE_TICKS intervals (plus STALE_GRACE_S for a long tick), ready while the
store answers; its metrics are gate.judging.metrics."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gate.alerts import lifecycle as alerts
from gate.alerts.store import open_alert_counts
from gate.judging import metrics
from gate.judging.http import serving
from gate.judging.policy import PolicySet
from gate.judging.verdict import EvaluationError, judge_run
from gate.logs import get_logger
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope, status

log = get_logger("gate.judging.daemon")

STALE_TICKS = 3  # /healthz fails once this many intervals (plus the grace) pass without a tick
STALE_GRACE_S = 30.0


@dataclass
class Daemon:
    engine: Engine
    policies: PolicySet
    settings: Settings
    unjudgeable: set[int] = field(default_factory=set)  # runs already reported as such
    clock: Callable[[], float] = time.monotonic
    stale_after_s: float = STALE_TICKS * 10.0 + STALE_GRACE_S  # set from the interval by `serve`
    last_beat: float = field(default_factory=time.monotonic)  # a tick began or ended

    def tick(self) -> dict[str, int]:
        """One pass; returns {"evaluated": runs judged, "sent": alerts delivered}."""
        self.last_beat = self.clock()
        try:
            evaluated = sum(self._evaluate(run_id) for run_id in self._pending())
            sent = alerts.send_due(self.engine, settings=self.settings, cooldown=alerts.cooldown_from(self.policies))
            with session_scope(self.engine) as session:
                metrics.store_state(by_rule=open_alert_counts(session), queued=status.queued_comparisons(session),
                                    last_heartbeat=status.last_worker_heartbeat(session))
        except DBAPIError as exc:
            metrics.TICK_FAILURES.inc()
            log.error("database unavailable, retried next tick", error=str(exc.orig))
            return {"evaluated": 0, "sent": 0}
        finally:
            self.last_beat = self.clock()  # alive (/healthz) whether or not the store answered
        metrics.ticked()  # the metric counts completed passes only: an outage shows as a gate not ticking
        return {"evaluated": evaluated, "sent": sent}

    def alive(self) -> bool:
        """The loop ticked within `stale_after_s` (/healthz)."""
        return self.clock() - self.last_beat <= self.stale_after_s

    def ready(self) -> bool:
        """The store answers a query (/readyz)."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return False
        return True

    def _pending(self) -> list[int]:
        with session_scope(self.engine) as session:
            return [run_id for run_id in repo.runs_to_evaluate(session) if run_id not in self.unjudgeable]

    def _evaluate(self, run_id: int) -> bool:
        started = time.perf_counter()
        try:
            result = judge_run(self.engine, run_id=run_id, policies=self.policies, settings=self.settings)
        except EvaluationError as exc:
            self.unjudgeable.add(run_id)
            log.error("run not judged", run=run_id, error=str(exc))
            return False
        metrics.judged(result["verdict"], time.perf_counter() - started)
        log.info("run judged", run=run_id, suite=result["suite"], verdict=result["verdict"])
        return True

    def serve(self, *, interval: float, once: bool = False, http: tuple[str, int] | None = None) -> None:
        """Tick every `interval` seconds until SIGTERM or SIGINT (or after one tick with `once`),
        answering probes and scrapes on `http` (host, port) meanwhile."""
        stop = threading.Event()
        self.stale_after_s = STALE_TICKS * interval + STALE_GRACE_S
        self.last_beat = self.clock()
        with _stop_on_signals(stop), serving(self, http):
            log.info("gate started", interval=interval)
            while True:
                self.tick()
                if once or stop.wait(interval):
                    break
            log.info("gate stopped")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Signals only set `stop`, so a tick in progress finishes its transaction."""
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: stop.set()) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
