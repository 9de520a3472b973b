"""The gate daemon: every tick it judges each run whose comparisons have all finished and that has no
verdict yet, then sends the alerts owed to the webhook (new, resolved, and open ones due again). A run
that records its own policy (given at submission) is judged by it; the daemon's policies judge the rest.

One run that cannot be judged (no threshold configured) is logged once and skipped; a database or
webhook outage is logged and retried on the next tick. SIGTERM and SIGINT end the loop after the
tick in progress."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from gate.alerts import lifecycle as alerts
from gate.judging.policy import PolicySet
from gate.judging.verdict import EvaluationError, judge_run
from gate.logs import get_logger
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope

log = get_logger("gate.judging.daemon")


@dataclass
class Daemon:
    engine: Engine
    policies: PolicySet
    settings: Settings
    unjudgeable: set[int] = field(default_factory=set)  # runs already reported as such

    def tick(self) -> dict[str, int]:
        """One pass; returns {"evaluated": runs judged, "sent": alerts delivered}."""
        try:
            evaluated = sum(self._evaluate(run_id) for run_id in self._pending())
            sent = alerts.send_due(self.engine, settings=self.settings, cooldown=alerts.cooldown_from(self.policies))
        except DBAPIError as exc:
            log.error("database unavailable, retried next tick", error=str(exc.orig))
            return {"evaluated": 0, "sent": 0}
        return {"evaluated": evaluated, "sent": sent}

    def _pending(self) -> list[int]:
        with session_scope(self.engine) as session:
            return [run_id for run_id in repo.runs_to_evaluate(session) if run_id not in self.unjudgeable]

    def _evaluate(self, run_id: int) -> bool:
        try:
            result = judge_run(self.engine, run_id=run_id, policies=self.policies, settings=self.settings)
        except EvaluationError as exc:
            self.unjudgeable.add(run_id)
            log.error("run not judged", run=run_id, error=str(exc))
            return False
        log.info("run judged", run=run_id, suite=result["suite"], verdict=result["verdict"])
        return True

    def serve(self, *, interval: float, once: bool = False) -> None:
        """Tick every `interval` seconds until SIGTERM or SIGINT (or after one tick with `once`)."""
        stop = threading.Event()
        with _stop_on_signals(stop):
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
