"""Alerts out to Alertmanager (or anything that speaks its v2 API): POST /api/v2/alerts with a
JSON list. urllib only, so the light gate gains no HTTP dependency."""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # Prometheus' rule, which Alertmanager enforces


class WebhookError(RuntimeError):
    """The receiver could not be reached or refused the alerts."""


@dataclass(frozen=True)
class OutgoingAlert:
    """An alert as the receiver sees it. `ends_at`: when it resolved, or for a firing alert when it
    lapses unless sent again (None: the receiver's resolve_timeout decides)."""

    rule: str
    labels: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    generator_url: str | None = None


def alertname(rule: str) -> str:
    """'distance' -> 'LpipsGateDistance': Alertmanager routes on alertname, so keep it distinct."""
    return "LpipsGate" + "".join(part.capitalize() for part in rule.split("_"))


def rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: pass an aware one (UTC)")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_alertmanager(alerts: Iterable[OutgoingAlert]) -> list[dict[str, Any]]:
    """The POST /api/v2/alerts body; endsAt in the future keeps an alert firing until then, in the
    past marks it resolved, and without one Alertmanager keeps it for its resolve_timeout."""
    return [_postable(alert) for alert in alerts]


def _postable(alert: OutgoingAlert) -> dict[str, Any]:
    labels = {"alertname": alertname(alert.rule), **_texts(alert.labels, "labels")}
    if "alertname" in alert.labels:
        raise ValueError("labels: 'alertname' is set from the rule; do not pass it")
    bad = [name for name in labels if not LABEL_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"labels: {bad[0]!r} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    body = {
        "labels": labels,
        "annotations": _texts(alert.annotations, "annotations"),
        "startsAt": rfc3339(alert.starts_at),
    }
    if alert.ends_at is not None:
        if alert.ends_at < alert.starts_at:
            raise ValueError(f"{labels['alertname']}: ends_at {rfc3339(alert.ends_at)} is before starts_at")
        body["endsAt"] = rfc3339(alert.ends_at)
    if alert.generator_url is not None:
        body["generatorURL"] = alert.generator_url
    return body


def _texts(values: Mapping[str, str], name: str) -> dict[str, str]:
    not_text = [key for key, value in values.items() if not isinstance(value, str)]
    if not_text:
        raise ValueError(f"{name}: values must be strings, {not_text[0]!r} is not")
    return dict(values)


def shown(url: str) -> str:
    """The URL as errors and logs show it: a password in it (basic auth) replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def send(url: str, payload: list[dict[str, Any]], *, timeout: float) -> int:
    """POST the payload as JSON; returns the HTTP status, raises WebhookError unless it is 2xx. A user
    and password in the URL (an Alertmanager behind basic auth) go in an Authorization header."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"webhook url: expected http:// or https://, got {shown(url)!r}")
    if timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout}")
    headers = {"Content-Type": "application/json"}
    if parts.username is not None:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(
        urllib.parse.urlunsplit(parts), data=json.dumps(payload).encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace").strip()
        raise WebhookError(f"webhook {shown(url)}: HTTP {exc.code} {exc.reason}: {detail}") from None
    except TimeoutError:
        raise WebhookError(f"webhook {shown(url)}: no answer within {timeout:g}s") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise WebhookError(f"webhook {shown(url)}: no answer within {timeout:g}s") from None
        raise WebhookError(f"webhook {shown(url)}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # a receiver that hangs up or answers garbage
        raise WebhookError(f"webhook {shown(url)}: {type(exc).__name__}: {str(exc).strip()}") from None
    if not 200 <= status < 300:
        raise WebhookError(f"webhook {shown(url)}: HTTP {status}")
    return status
