"""The alert lifecycle and its sinks: the store (open, refresh, resolve), structured logs (one line
per opened or resolved alert) and the Alertmanager v2 webhook.

An alert is identified by its rule and labels (the store's fingerprint). A condition that fires
again while its alert is open refreshes that alert instead of opening another; one that was checked
and no longer fires resolves it. Alertmanager resolves an active alert by itself once its endsAt
passes, so open alerts are re-sent every `alert_resend_s` (`send_due`, called by the daemon each
tick) with endsAt that many seconds times RESEND_VALIDITY ahead, as Prometheus does: a gate that
stops re-sending lets its alerts lapse. The policy's cooldown limits how often one alert may open
at the receiver: an alert that opens again within the cooldown of its last delivered opening is
held back until that cooldown has passed (a flapping suite pages once per cooldown, not per run).

What is owed is collected inside the transaction that changed the alerts and sent after it commits
(`owed`, then `deliver`), so no transaction waits on the receiver. Delivery failures are logged and
the alerts stay owed, so the next tick retries them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gate.alerts import store as alert_store
from gate.alerts.alertmanager import OutgoingAlert, WebhookError, send, to_alertmanager
from gate.judging.policy import PolicySet, effective_policy, suite_policy
from gate.judging.rules import Condition
from gate.logs import get_logger
from gate.settings import Settings
from gate.store import session_scope
from gate.store.models import Alert, utcnow

RESEND_VALIDITY = 4  # a firing alert lapses after this many missed re-sends (Prometheus' factor)

Cooldown = Callable[[Alert], float]  # seconds before an alert may open again at the receiver

log = get_logger("gate.alerts.lifecycle")


@dataclass(frozen=True)
class Changes:
    """What one run's conditions did to the store's alerts."""

    opened: tuple[Alert, ...] = ()
    repeated: tuple[Alert, ...] = ()  # fired again while open: refreshed, not reopened
    resolved: tuple[Alert, ...] = ()

    @property
    def touched(self) -> tuple[Alert, ...]:
        return (*self.opened, *self.repeated, *self.resolved)


def apply(session: Session, *, run_id: int, suite: str, conditions: Sequence[Condition],
          meta: Mapping[str, str] | None = None) -> Changes:
    """Open or refresh an alert per firing condition; resolve those whose condition cleared. The
    run's metadata (commit, pipeline...) joins each alert's annotations as `meta_KEY`."""
    extra = {f"meta_{key}": str(value) for key, value in (meta or {}).items()}
    opened: list[Alert] = []
    repeated: list[Alert] = []
    for condition in (c for c in conditions if c.firing):
        alert, is_new = alert_store.upsert_open_alert(
            session,
            rule=condition.rule,
            suite_name=suite,
            labels=condition.labels,
            value=condition.value,
            threshold=condition.threshold,
            run_id=run_id,
            annotations={**condition.annotations, **extra},
        )
        (opened if is_new else repeated).append(alert)
    cleared = [
        alert_store.alert_fingerprint(rule=c.rule, suite_name=suite, labels=c.labels)
        for c in conditions
        if not c.firing
    ]
    resolved = alert_store.resolve_fingerprints(session, fingerprints=cleared, up_to_run_id=run_id) if cleared else []
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


def cooldown_from(fallback: PolicySet) -> Cooldown:
    """Each alert waits the cooldown of the policy that judged its run, for its net and weights (the
    suite's own for an alert no rule raised); `fallback` (the daemon's policies) stands in for runs
    judged before runs recorded their policy."""

    def cooldown(alert: Alert) -> float:
        recorded = None if alert.run is None else effective_policy(alert.run, fallback)
        policy = recorded or suite_policy(fallback, suite=alert.suite.name)
        labels = alert.labels
        if "net" not in labels:
            return policy.base.alert_cooldown_s
        return policy.policy_for(labels["net"], labels["weights_version"]).alert_cooldown_s

    return cooldown


def is_due(alert: Alert, *, now: datetime, resend_s: float, held_until: datetime | None = None) -> bool:
    """Resolved: until the resolution of a delivered alert is delivered (the receiver never heard of one
    that was not). Open: never sent (unless held back as a repeat opening until `held_until`), or last
    sent `resend_s` ago."""
    sent = alert.last_notified_at
    if alert.state == "resolved":
        return sent is not None and alert.resolved_at is not None and sent < alert.resolved_at
    if sent is None:
        return held_until is None or now >= held_until
    return now - sent >= timedelta(seconds=resend_s)


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
    candidates = alert_store.alerts_to_notify(session) if alerts is None else alerts
    unsent = [a.fingerprint for a in candidates if a.last_notified_at is None]
    opened = alert_store.last_delivered_openings(session, fingerprints=unsent)
    due = [
        alert
        for alert in candidates
        if is_due(alert, now=now, resend_s=settings.alert_resend_s, held_until=_held_until(alert, opened, cooldown))
    ]
    return tuple(Notice(alert.id, alert.state, outgoing(alert)) for alert in due)


def _held_until(alert: Alert, last_openings: dict[str, datetime], cooldown: Cooldown) -> datetime | None:
    previous = last_openings.get(alert.fingerprint)
    return None if previous is None else previous + timedelta(seconds=cooldown(alert))


def deliver(engine: Engine, notices: Sequence[Notice], *, settings: Settings) -> int:
    """Send the notices with no transaction open (a slow receiver must not hold the store), then record
    the delivery in a short one; returns how many were delivered. A failure is logged and the alerts
    stay owed, so the next tick retries them."""
    if not notices or not settings.webhook_url:  # without a webhook nothing is ever owed
        return 0
    lapses_at = utcnow() + timedelta(seconds=RESEND_VALIDITY * settings.alert_resend_s)
    try:
        payload = to_alertmanager(_stamped(notice, lapses_at) for notice in notices)
        send(settings.webhook_url, payload, timeout=settings.webhook_timeout_s)
    except (WebhookError, ValueError) as exc:  # unreachable, refused, or a malformed webhook url
        log.error("webhook delivery failed, retried next tick", error=str(exc), alerts=len(notices))
        return 0
    with session_scope(engine) as session:
        alert_store.mark_notified(session, alert_ids=_unchanged(session, notices))
    return len(notices)


def _stamped(notice: Notice, lapses_at: datetime) -> OutgoingAlert:
    """A firing alert is active at the receiver until `lapses_at`, unless it is sent again before."""
    return replace(notice.alert, ends_at=lapses_at) if notice.state == "open" else notice.alert


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
