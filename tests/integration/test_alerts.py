"""Alert sinks: the Alertmanager v2 webhook (a real HTTP server on loopback records each POST), the
log lines, and `lpips-gate alerts`, on PostgreSQL and SQLite."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import update

from gate.alerts import store as alert_store
from gate.alerts.alertmanager import rfc3339
from gate.alerts.lifecycle import RESEND_VALIDITY
from gate.cli import main
from gate.judging.daemon import Daemon
from gate.logs import configure
from gate.store.models import Alert, utcnow
from tests.integration.test_gate import DISTANCE_LABELS, SUITE, finished_run, judge, policies, settings_for


class Receiver:
    """Records every POST body (parsed JSON) and answers with `status`, which a test may change; a test
    may also clear `answer` to hold the answers back (`arrived` is set when a POST is in)."""

    def __init__(self) -> None:
        self.bodies: list = []
        self.status = 200
        self.answer, self.arrived = threading.Event(), threading.Event()
        self.answer.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append((self.path, self.headers["Content-Type"], json.loads(body)))
                receiver.arrived.set()
                receiver.answer.wait(30)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/v2/alerts"

    def take(self) -> list:
        """The bodies received since the last call."""
        taken, self.bodies[:] = list(self.bodies), []
        return taken


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.answer.set()
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


def _distance_alert(session_factory):
    with session_factory() as session:
        [alert] = alert_store.list_alerts(session)
        return alert


def _firing_body(alert, run_id: int, value: str, failed: str, worst: str) -> dict:
    return {
        "labels": {"alertname": "LpipsGateDistance", **DISTANCE_LABELS, "severity": "critical"},
        "annotations": {
            "summary": f"distance: {value} against threshold 0.1",
            "runbook_url": "docs/runbook.md#distance",
            "worst_pair": worst,
            "failed": failed,
            "value": value,
            "threshold": "0.1",
            "run": str(run_id),
        },
        "startsAt": rfc3339(alert.opened_at),
        "generatorURL": f"http://127.0.0.1:8080/runs/{run_id}",
    }


HELD_S = 3.0  # how long a held receiver answers late: a judge waiting on it would take this long


def _held(receiver: Receiver) -> threading.Timer:
    """Hold the receiver's answers for HELD_S seconds at most."""
    receiver.answer.clear()
    release = threading.Timer(HELD_S, receiver.answer.set)
    release.start()
    return release


def _lapsing(taken: list, since: datetime, resend_s: float = 60.0) -> list:
    """The bodies received, each firing alert's endsAt checked to lie RESEND_VALIDITY re-sends after
    it was sent (between `since` and now) and then dropped, so the rest compares exactly."""
    validity = timedelta(seconds=RESEND_VALIDITY * resend_s)
    low, high = since + validity - timedelta(milliseconds=1), utcnow() + validity
    for _path, _type, body in taken:
        for alert in body:
            if datetime.fromisoformat(alert["endsAt"]) >= low:  # firing (a resolved one ended before)
                assert datetime.fromisoformat(alert.pop("endsAt")) <= high
    return taken


def _age(session_factory, alert_id: int, **seconds: float) -> None:
    """Move an alert's timestamps back, as if that many seconds had passed since."""
    with session_factory.begin() as session:
        alert = session.get(Alert, alert_id)
        moved = {column: getattr(alert, column) - timedelta(seconds=back) for column, back in seconds.items()}
        session.execute(update(Alert).where(Alert.id == alert_id).values(moved))


def test_opened_repeated_and_resolved_alerts_reach_the_webhook(session_factory, engine, db_url, receiver) -> None:
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        failing, again = finished_run(session, [0.3]), finished_run(session, [0.05, 0.4])

    sent_from = utcnow()
    judge(session_factory, failing, policies(), settings)
    alert = _distance_alert(session_factory)
    firing = _firing_body(alert, failing, "0.3", "1 of 1", "p0.png -> c0.png")
    assert _lapsing(receiver.take(), sent_from) == [("/api/v2/alerts", "application/json", [firing])]
    assert alert.last_notified_at is not None

    judge(session_factory, again, policies(), settings)  # still firing, sent a moment ago: not sent again
    assert Daemon(engine, policies(), settings).tick() == {"evaluated": 0, "sent": 0}
    assert receiver.take() == []

    with session_factory.begin() as session:
        passing = finished_run(session, [0.05])
    judge(session_factory, passing, policies(), settings)
    resolved = _distance_alert(session_factory)
    body = _firing_body(resolved, again, "0.4", "1 of 2", "p1.png -> c1.png")
    assert receiver.take() == [
        ("/api/v2/alerts", "application/json", [{**body, "endsAt": rfc3339(resolved.resolved_at)}])
    ]
    assert Daemon(engine, policies(), settings).tick() == {"evaluated": 0, "sent": 0}  # nothing owed
    assert receiver.take() == []


def test_the_daemon_resends_open_alerts_before_they_lapse(session_factory, engine, db_url, receiver) -> None:
    """Every alert_resend_s, whatever the cooldown (an hour here): Alertmanager resolves an alert by
    itself once its endsAt passes."""
    settings = settings_for(db_url, webhook_url=receiver.url, alert_resend_s=30)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    daemon = Daemon(engine, policies(), settings)
    sent_from = utcnow()
    assert daemon.tick() == {"evaluated": 1, "sent": 0}  # sent when judged, not due again yet
    alert = _distance_alert(session_factory)
    _age(session_factory, alert.id, last_notified_at=29)
    assert daemon.tick() == {"evaluated": 0, "sent": 0}
    _age(session_factory, alert.id, last_notified_at=1)  # sent 30 s ago
    assert daemon.tick() == {"evaluated": 0, "sent": 1}
    expected = _firing_body(alert, failing, "0.3", "1 of 1", "p0.png -> c0.png")
    assert _lapsing(receiver.take(), sent_from, resend_s=30) == [("/api/v2/alerts", "application/json", [expected])] * 2
    assert daemon.tick() == {"evaluated": 0, "sent": 0}


def test_a_repeat_opening_within_the_cooldown_is_held_back(session_factory, engine, db_url, receiver) -> None:
    """A flapping suite: fail, pass, fail. The second opening reaches the receiver once the cooldown
    (an hour) since the first one has passed, not at once."""
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        runs = [finished_run(session, distances) for distances in ([0.3], [0.05], [0.4])]
    for run_id in runs:
        judge(session_factory, run_id, policies(), settings)
    with session_factory() as session:
        first, second = alert_store.list_alerts(session)
    assert (first.state, second.state, second.last_notified_at) == ("resolved", "open", None)
    sent = [(alert["annotations"]["run"], "endsAt" in alert) for _, _, body in receiver.take() for alert in body]
    assert sent == [(str(runs[0]), True), (str(runs[0]), True)]  # opened (lapsing), then resolved
    daemon = Daemon(engine, policies(), settings)
    assert daemon.tick() == {"evaluated": 0, "sent": 0}
    _age(session_factory, first.id, opened_at=3600)
    sent_from = utcnow()
    assert daemon.tick() == {"evaluated": 0, "sent": 1}
    expected = _firing_body(second, runs[2], "0.4", "1 of 1", "p0.png -> c0.png")
    assert _lapsing(receiver.take(), sent_from) == [("/api/v2/alerts", "application/json", [expected])]
    assert Daemon(engine, policies(alert_cooldown_s=0), settings).tick() == {"evaluated": 0, "sent": 0}


def test_without_a_cooldown_a_repeat_opening_is_sent_at_once(session_factory, db_url, receiver) -> None:
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        runs = [finished_run(session, distances) for distances in ([0.3], [0.05], [0.4])]
    for run_id in runs:
        judge(session_factory, run_id, policies(alert_cooldown_s=0), settings)
    sent = [alert["annotations"]["run"] for _, _, body in receiver.take() for alert in body]
    assert sent == [str(runs[0]), str(runs[0]), str(runs[2])]


def test_a_resolution_is_sent_only_for_an_alert_the_receiver_has_seen(
    session_factory, engine, db_url, receiver
) -> None:
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        failing, passing = finished_run(session, [0.3]), finished_run(session, [0.05])
    receiver.status = 503
    judge(session_factory, failing, policies(), settings)  # opened, not delivered
    receiver.status = 200
    judge(session_factory, passing, policies(), settings)  # resolved before the receiver heard of it
    assert Daemon(engine, policies(), settings).tick() == {"evaluated": 0, "sent": 0}
    assert len(receiver.take()) == 1  # the refused opening only


def test_alerts_go_to_every_receiver_and_one_that_takes_them_is_enough(
    session_factory, engine, db_url, receiver
) -> None:
    with receiving() as refusing:
        refusing.status = 500
        settings = settings_for(db_url, webhook_url=f"{refusing.url}, {receiver.url}",
                                public_url="https://gate.example/", runbook_url="https://docs.example/runbook.md")
        with session_factory.begin() as session:
            failing = finished_run(session, [0.3])
        failures = REGISTRY.get_sample_value("lpips_gate_webhook_failures_total")
        judge(session_factory, failing, policies(), settings)
        [(_, _, [refused])], [(_, _, [taken])] = refusing.take(), receiver.take()
    assert refused == taken
    assert taken["labels"]["severity"] == "critical"
    assert taken["annotations"]["runbook_url"] == "https://docs.example/runbook.md#distance"
    assert taken["generatorURL"] == f"https://gate.example/runs/{failing}"
    assert REGISTRY.get_sample_value("lpips_gate_webhook_failures_total") == failures + 1
    assert _distance_alert(session_factory).last_notified_at is not None  # delivered: not owed again


def test_the_webhook_timeout_is_a_setting(session_factory, db_url, receiver, capsys) -> None:
    settings = settings_for(db_url, webhook_url=receiver.url, webhook_timeout_s=0.3, log_json=True)
    configure(settings)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    release = _held(receiver)
    started = time.monotonic()
    judge(session_factory, failing, policies(), settings)
    waited = time.monotonic() - started
    release.cancel()
    errors = [json.loads(line).get("error") for line in capsys.readouterr().err.splitlines()]
    assert errors[-1] == f"webhook {receiver.url}: no answer within 0.3s"
    assert waited < HELD_S / 2


def test_a_failing_webhook_is_logged_and_retried_on_the_next_tick(
    session_factory, engine, db_url, receiver, capsys
) -> None:
    settings = settings_for(db_url, webhook_url=receiver.url, log_json=True)
    configure(settings)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    receiver.status = 503
    assert judge(session_factory, failing, policies(), settings)["verdict"] == "fail"  # the gate carries on
    assert len(receiver.take()) == 1
    assert _distance_alert(session_factory).last_notified_at is None
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("alert opened", "warning"),
        ("webhook delivery failed, retried next tick", "error"),
    ]
    assert lines[1]["error"] == f"webhook {receiver.url}: HTTP 503 Service Unavailable: "
    assert lines[1]["alerts"] == 1

    receiver.status = 200
    sent_from = utcnow()
    assert Daemon(engine, policies(), settings).tick() == {"evaluated": 0, "sent": 1}
    [(_, _, body)] = _lapsing(receiver.take(), sent_from)
    assert body == [_firing_body(_distance_alert(session_factory), failing, "0.3", "1 of 1", "p0.png -> c0.png")]
    assert _distance_alert(session_factory).last_notified_at is not None


def test_an_unreachable_webhook_does_not_stop_the_daemon(session_factory, engine, db_url, capsys) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api/v2/alerts"
    settings = settings_for(db_url, webhook_url=url, log_json=True)
    configure(settings)
    with session_factory.begin() as session:
        finished_run(session, [0.3])
    daemon = Daemon(engine, policies(), settings)
    assert daemon.tick() == {"evaluated": 1, "sent": 0}
    assert daemon.tick() == {"evaluated": 0, "sent": 0}
    failures = [
        json.loads(line)["error"]
        for line in capsys.readouterr().err.splitlines()
        if json.loads(line)["event"].startswith("webhook delivery failed")
    ]
    refused = f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}"  # the OS's words
    assert failures == [f"webhook {url}: {refused}"] * 3  # at judging, then each tick


def test_another_judge_of_the_run_does_not_wait_on_the_webhook(session_factory, db_url, receiver) -> None:
    """The webhook is called after the run's transaction commits, not while it holds the run."""
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    release = _held(receiver)
    first = threading.Thread(target=judge, args=(session_factory, failing, policies(), settings))
    first.start()
    assert receiver.arrived.wait(10)  # the first judge is now waiting on the receiver
    started = time.monotonic()
    again = judge(session_factory, failing, policies(), settings)
    waited = time.monotonic() - started
    receiver.answer.set()
    first.join(10)
    release.cancel()
    assert (again["verdict"], waited < HELD_S / 2) == ("fail", True)
    assert len(receiver.take()) == 1  # judged, alerted and sent once
    assert _distance_alert(session_factory).last_notified_at is not None


def test_a_tick_sends_with_no_transaction_open(session_factory, engine, db_url, receiver) -> None:
    """SQLite takes its write lock when a transaction begins: a tick must not hold one while it sends."""
    settings = settings_for(db_url, webhook_url=receiver.url)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
    receiver.status = 503  # the alert opens, its delivery fails: the next tick owes it
    judge(session_factory, failing, policies(), settings)
    receiver.status, _ = 200, receiver.take()
    receiver.arrived.clear()  # set by that failed delivery: wait for the tick's own
    release = _held(receiver)
    ticked = {}
    tick = threading.Thread(target=lambda: ticked.update(Daemon(engine, policies(), settings).tick()))
    tick.start()
    assert receiver.arrived.wait(10)
    started = time.monotonic()
    with session_factory.begin() as session:
        finished_run(session, [0.05])  # a worker's write while the tick is sending
    waited = time.monotonic() - started
    receiver.answer.set()
    tick.join(10)
    release.cancel()
    assert (ticked, waited < HELD_S / 2) == ({"evaluated": 0, "sent": 1}, True)


# --- lpips-gate alerts -------------------------------------------------------------------------


def _alerts_cli(db_url: str, *args: str):
    return CliRunner().invoke(main, ["alerts", *args], env={"LPIPS_GATE_DATABASE_URL": db_url})


def test_alerts_lists_open_and_resolved_alerts_as_json(session_factory, db_url) -> None:
    settings = settings_for(db_url)
    with session_factory.begin() as session:
        failing = finished_run(session, [0.3])
        other = finished_run(session, [0.5], suite="other")
        passing = finished_run(session, [0.01])
    other_policies = policies()
    other_policies.suites["other"] = other_policies.suites[SUITE]
    for run_id in (failing, other, passing):
        judge(session_factory, run_id, other_policies, settings)
    with session_factory() as session:
        resolved, still_open = alert_store.list_alerts(session)

    everything = _alerts_cli(db_url, "--json")
    assert (everything.exit_code, everything.stderr) == (0, "")
    assert json.loads(everything.stdout) == [
        {
            "rule": "distance",
            "suite": SUITE,
            "state": "resolved",
            "labels": DISTANCE_LABELS,
            "value": 0.3,
            "threshold": 0.1,
            "opened_at": resolved.opened_at.isoformat(),
            "resolved_at": resolved.resolved_at.isoformat(),
        },
        {
            "rule": "distance",
            "suite": "other",
            "state": "open",
            "labels": {**DISTANCE_LABELS, "suite": "other"},
            "value": 0.5,
            "threshold": 0.1,
            "opened_at": still_open.opened_at.isoformat(),
            "resolved_at": None,
        },
    ]
    assert [row["suite"] for row in json.loads(_alerts_cli(db_url, "--open", "--json").stdout)] == ["other"]
    assert [row["state"] for row in json.loads(_alerts_cli(db_url, "--suite", SUITE, "--json").stdout)] == ["resolved"]
    assert json.loads(_alerts_cli(db_url, "--suite", SUITE, "--open", "--json").stdout) == []
    text = _alerts_cli(db_url, "--open")
    assert text.stdout == (
        f"open     distance  other  0.5 vs 0.1  net=alex weights_version=w1  since {still_open.opened_at.isoformat()}\n"
    )


def test_a_malformed_webhook_url_is_logged_not_raised(session_factory, engine, db_url, capsys) -> None:
    settings = settings_for(db_url, webhook_url="ftp://alerts.example/api/v2/alerts", log_json=True)
    configure(settings)
    with session_factory.begin() as session:
        finished_run(session, [0.3])
    assert Daemon(engine, policies(), settings).tick() == {"evaluated": 1, "sent": 0}
    errors = {json.loads(line).get("error") for line in capsys.readouterr().err.splitlines()} - {None}
    assert errors == {"webhook url: expected http:// or https://, got 'ftp://alerts.example/api/v2/alerts'"}
