"""The alert lifecycle and its sinks: the store (open, refresh, resolve), structured logs (one line
per opened or resolved alert) and the Alertmanager v2 webhook.

An alert is identified by its rule and labels (the store's fingerprint). A condition that fires
again while its alert is open refreshes that alert instead of opening another, and is not sent
again before the cooldown; one that was checked and no longer fires resolves it. Alertmanager
treats an active alert it has not heard of for its resolve_timeout as resolved, so open alerts are
re-sent every cooldown (`send_due`, called by the daemon each tick). What is owed is collected inside
the transaction that changed the alerts and sent after it commits (`owed`, then `deliver`), so no
transaction waits on the receiver. Delivery failures are logged and the alerts stay owed, so the
next tick retries them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gate.logs import get_logger
from gate.policy import PolicySet, policy_for
from gate.rules import Condition
from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from gate.store.models import Alert, utcnow
from gate.webhook import OutgoingAlert, WebhookError, send, to_alertmanager

WEBHOOK_TIMEOUT_S = 10.0

Cooldown = Callable[[Alert], float]  # seconds before an open alert is sent again

log = get_logger("gate.alerts")


@dataclass(frozen=True)
class Changes:
    """What one run's conditions did to the store's alerts."""

    opened: tuple[Alert, ...] = ()
    repeated: tuple[Alert, ...] = ()  # fired again while open: refreshed, not reopened
    resolved: tuple[Alert, ...] = ()

    @property
    def touched(self) -> tuple[Alert, ...]:
        return (*self.opened, *self.repeated, *self.resolved)


def apply(session: Session, *, run_id: int, suite: str, conditions: Sequence[Condition]) -> Changes:
    """Open or refresh an alert per firing condition; resolve those whose condition cleared."""
    opened, repeated = [], []
    for condition in (c for c in conditions if c.firing):
        alert, is_new = repo.upsert_open_alert(
            session,
            rule=condition.rule,
            suite_name=suite,
            labels=condition.labels,
            value=condition.value,
            threshold=condition.threshold,
            run_id=run_id,
            annotations=condition.annotations,
        )
        (opened if is_new else repeated).append(alert)
    cleared = [
        repo.alert_fingerprint(rule=c.rule, suite_name=suite, labels=c.labels) for c in conditions if not c.firing
    ]
    resolved = repo.resolve_fingerprints(session, fingerprints=cleared, up_to_run_id=run_id) if cleared else []
    changes = Changes(tuple(opened), tuple(repeated), tuple(resolved))
    _log_changes(changes)
    return changes


def _log_changes(changes: Changes) -> None:
    for event, alerts in (("alert opened", changes.opened), ("alert resolved", changes.resolved)):
        for alert in alerts:
            log.warning(
                event,
                rule=alert.rule,
                suite=alert.suite.name,
                labels=alert.labels,
                value=alert.value,
                threshold=alert.threshold,
                run=alert.run_id,
                fingerprint=alert.fingerprint,
            )


def cooldown_from(policies: PolicySet) -> Cooldown:
    """Each alert waits the cooldown of the policy that judged it (its suite, net and weights)."""

    def cooldown(alert: Alert) -> float:
        labels, suite = alert.labels, alert.suite.name
        if "net" not in labels:  # not raised by a rule: the suite's own policy
            suite_policies = policies.suites.get(suite)
            return (suite_policies.base if suite_policies else policies.defaults).alert_cooldown_s
        policy = policy_for(policies, suite=suite, net=labels["net"], weights_version=labels["weights_version"])
        return policy.alert_cooldown_s

    return cooldown


def is_due(alert: Alert, *, cooldown_s: float, now: datetime) -> bool:
    """Resolved: until the resolution is delivered. Open: never sent, or sent a cooldown ago."""
    sent = alert.last_notified_at
    if alert.state == "resolved":
        return sent is None or sent < alert.resolved_at
    return sent is None or now - sent >= timedelta(seconds=cooldown_s)


@dataclass(frozen=True)
class Notice:
    """One alert owed to the webhook, as it stood when collected inside a transaction."""

    alert_id: int
    state: str
    alert: OutgoingAlert


def owed(
    session: Session, *, settings: Settings, cooldown: Cooldown, alerts: Sequence[Alert] | None = None
) -> tuple[Notice, ...]:
    """What the webhook is owed among `alerts` (default: every open alert and undelivered resolution),
    read inside the caller's transaction and sent by `deliver` after it. Without a webhook configured
    nothing is owed to anyone."""
    if not settings.webhook_url:
        return ()
    now = utcnow()
    candidates = repo.alerts_to_notify(session) if alerts is None else alerts
    due = [alert for alert in candidates if is_due(alert, cooldown_s=cooldown(alert), now=now)]
    return tuple(Notice(alert.id, alert.state, outgoing(alert)) for alert in due)


def deliver(engine: Engine, notices: Sequence[Notice], *, settings: Settings) -> int:
    """Send the notices with no transaction open (a slow receiver must not hold the store), then record
    the delivery in a short one; returns how many were delivered. A failure is logged and the alerts
    stay owed, so the next tick retries them."""
    if not notices:
        return 0
    try:
        payload = to_alertmanager(notice.alert for notice in notices)
        send(settings.webhook_url, payload, timeout=WEBHOOK_TIMEOUT_S)
    except (WebhookError, ValueError) as exc:  # unreachable, refused, or a malformed webhook url
        log.error("webhook delivery failed, retried next tick", error=str(exc), alerts=len(notices))
        return 0
    with session_scope(engine) as session:
        repo.mark_notified(session, alert_ids=_unchanged(session, notices))
    return len(notices)


def _unchanged(session: Session, notices: Sequence[Notice]) -> list[int]:
    """Alerts still in the state that was sent: one resolved meanwhile still owes its resolution."""
    return [notice.alert_id for notice in notices if session.get_one(Alert, notice.alert_id).state == notice.state]


def send_due(engine: Engine, *, settings: Settings, cooldown: Cooldown) -> int:
    """Deliver every alert owed (the daemon's tick): collected in one short transaction, sent after it."""
    with session_scope(engine) as session:
        notices = owed(session, settings=settings, cooldown=cooldown)
    return deliver(engine, notices, settings=settings)


def outgoing(alert: Alert) -> OutgoingAlert:
    """The stored alert as Alertmanager sees it: the changing details go in annotations."""
    annotations = {
        "summary": f"{alert.rule}: {_number(alert.value)} against threshold {_number(alert.threshold)}",
        **alert.annotations,
        "value": _number(alert.value),
        "threshold": _number(alert.threshold),
        "run": "" if alert.run_id is None else str(alert.run_id),
    }
    return OutgoingAlert(
        rule=alert.rule,
        labels=alert.labels,
        starts_at=alert.opened_at,
        ends_at=alert.resolved_at,
        annotations=annotations,
    )


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"
