"""The alerts' store operations: open (idempotently, by fingerprint), resolve, and what is owed to
the receiver. Same rules as gate.store.repository: a Session first, callers own the transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gate.store.models import OPEN_ALERT, Alert, Suite, utcnow
from gate.store.repository import finite_or_none, get_or_create_suite, insert_for
from gate.vocabulary import ALERT_RULES


def alert_fingerprint(*, rule: str, suite_name: str, labels: Mapping[str, Any]) -> str:
    """Stable across processes and label order: the identity of one alert over its lifetime."""
    key = json.dumps([rule, suite_name, labels], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


def upsert_open_alert(
    session: Session,
    *,
    rule: str,
    suite_name: str,
    labels: Mapping[str, Any],
    value: float | None,
    threshold: float | None,
    run_id: int | None,
    annotations: Mapping[str, str] | None = None,
) -> tuple[Alert, bool]:
    """Open an alert, or refresh the open one with the same fingerprint; True when newly opened."""
    if rule not in ALERT_RULES:
        raise ValueError(f"rule: must be one of {ALERT_RULES}, got {rule!r}")
    fingerprint = alert_fingerprint(rule=rule, suite_name=suite_name, labels=labels)
    suite = get_or_create_suite(session, name=suite_name)
    now = utcnow()
    seen = {
        "value": finite_or_none(value),
        "threshold": finite_or_none(threshold),
        "run_id": run_id,
        "last_seen_at": now,
        "annotations": dict(annotations or {}),
    }
    opened = session.scalar(
        insert_for(session, Alert)
        .values(
            rule=rule,
            suite_id=suite.id,
            fingerprint=fingerprint,
            labels=dict(labels),
            state="open",
            opened_at=now,
            **seen,
        )
        .on_conflict_do_nothing(index_elements=["fingerprint"], index_where=OPEN_ALERT)
        .returning(Alert.id)
    )
    refresh = update(Alert).where(Alert.fingerprint == fingerprint, Alert.state == "open").values(seen)
    alert_id = opened if opened is not None else session.scalars(refresh.returning(Alert.id)).one()
    return session.get_one(Alert, alert_id, populate_existing=True), opened is not None


def resolve_alerts(
    session: Session, *, suite_name: str, rule: str, keep_fingerprints: Sequence[str]
) -> list[Alert]:
    """Resolve the suite's open alerts of `rule` that did not fire again (not in keep)."""
    suite_id = select(Suite.id).where(Suite.name == suite_name).scalar_subquery()
    stmt = (
        update(Alert)
        .where(
            Alert.suite_id == suite_id,
            Alert.rule == rule,
            Alert.state == "open",
            Alert.fingerprint.not_in(keep_fingerprints),
        )
        .values(state="resolved", resolved_at=utcnow())
        .returning(Alert.id)
    )
    resolved = select(Alert).where(Alert.id.in_(session.scalars(stmt).all())).order_by(Alert.id)
    return list(session.scalars(resolved, execution_options={"populate_existing": True}))


def resolve_fingerprints(
    session: Session, *, fingerprints: Sequence[str], up_to_run_id: int | None = None
) -> list[Alert]:
    """Resolve the open alerts with these fingerprints; with `up_to_run_id`, one last seen on a later
    run stays open (a late run's evidence does not overrule a newer one's)."""
    stmt = update(Alert).where(Alert.state == "open", Alert.fingerprint.in_(fingerprints))
    if up_to_run_id is not None:
        stmt = stmt.where((Alert.run_id <= up_to_run_id) | Alert.run_id.is_(None))
    ids = session.scalars(stmt.values(state="resolved", resolved_at=utcnow()).returning(Alert.id)).all()
    resolved = select(Alert).where(Alert.id.in_(ids)).order_by(Alert.id)
    return list(session.scalars(resolved, execution_options={"populate_existing": True}))


def last_delivered_openings(session: Session, *, fingerprints: Sequence[str]) -> dict[str, datetime]:
    """When each fingerprint last opened at the receiver: its latest alert that was ever delivered
    (only a delivered alert's resolution is sent, so a notified one was delivered firing)."""
    if not fingerprints:
        return {}
    stmt = (
        select(Alert.fingerprint, func.max(Alert.opened_at))
        .where(Alert.fingerprint.in_(set(fingerprints)), Alert.last_notified_at.is_not(None))
        .group_by(Alert.fingerprint)
    )
    return {fingerprint: opened_at for fingerprint, opened_at in session.execute(stmt)}


def alerts_to_notify(session: Session) -> list[Alert]:
    """Open alerts, and resolved ones delivered firing whose resolution was not: what a sender may owe.
    A resolved alert the receiver never saw firing is owed nothing."""
    undelivered = Alert.last_notified_at.is_not(None) & (Alert.last_notified_at < Alert.resolved_at)
    stmt = select(Alert).where((Alert.state == "open") | ((Alert.state == "resolved") & undelivered))
    return list(session.scalars(stmt.order_by(Alert.id)))


def open_alert_counts(session: Session) -> dict[str, int]:
    """Open alerts per rule (rules with none are absent)."""
    stmt = select(Alert.rule, func.count()).where(Alert.state == "open").group_by(Alert.rule)
    return {rule: count for rule, count in session.execute(stmt)}


def list_alerts(session: Session, *, suite_name: str | None = None, open_only: bool = False) -> list[Alert]:
    stmt = select(Alert).order_by(Alert.id)
    if suite_name is not None:
        stmt = stmt.join(Suite, Alert.suite_id == Suite.id).where(Suite.name == suite_name)
    if open_only:
        stmt = stmt.where(Alert.state == "open")
    return list(session.scalars(stmt))


def mark_notified(session: Session, *, alert_ids: Sequence[int]) -> None:
    session.execute(update(Alert).where(Alert.id.in_(alert_ids)).values(last_notified_at=utcnow()))


def alert_rows(session: Session, *, suite_name: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
    """The alerts as `lpips-gate alerts` prints them, oldest first."""
    return [_alert_row(alert) for alert in list_alerts(session, suite_name=suite_name, open_only=open_only)]


def alert_views(session: Session, *, suite_name: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
    """The alerts as the HTTP API and its pages show them, newest first: `alert_rows` with each one's
    id, annotations and the run that last raised it (its page is where the alert points)."""
    shown = [alert for alert in list_alerts(session, suite_name=suite_name) if state is None or alert.state == state]
    return [{**_alert_row(alert), "id": alert.id, "run": alert.run_id, "annotations": alert.annotations}
            for alert in reversed(shown)]


def _alert_row(alert: Alert) -> dict[str, Any]:
    return {
        "rule": alert.rule,
        "suite": alert.suite.name,
        "state": alert.state,
        "labels": alert.labels,
        "value": alert.value,
        "threshold": alert.threshold,
        "opened_at": _iso(alert.opened_at),
        "resolved_at": _iso(alert.resolved_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
