"""Operations settings and conventions: every alert rule has a severity and a docs/runbook.md section
(the anchor runbook_url points at) stating it; several receivers; secrets kept out of reprs; log form."""

from __future__ import annotations

import re
from pathlib import Path

from gate.settings import Settings
from gate.vocabulary import ALERT_RULES, ALERT_SEVERITIES

RUNBOOK = Path(__file__).resolve().parents[3] / "docs" / "runbook.md"


def sections() -> dict[str, str]:
    """Heading (the GitHub anchor of a one-word heading) -> its text."""
    parts = re.split(r"^### (\S+)\n", RUNBOOK.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_rule_has_a_severity_and_a_runbook_section_that_states_it() -> None:
    assert set(ALERT_SEVERITIES) == set(ALERT_RULES)
    found = sections()
    for rule in ALERT_RULES:
        assert found[rule].lstrip().startswith(f"*Severity: {ALERT_SEVERITIES[rule]}.*"), rule


def test_receivers_come_from_both_settings_once_each(monkeypatch) -> None:
    monkeypatch.setenv("LPIPS_GATE_WEBHOOK_URL", "http://am-0:9093/api/v2/alerts, http://am-1:9093/api/v2/alerts")
    monkeypatch.setenv("LPIPS_GATE_WEBHOOK_URLS", "http://am-1:9093/api/v2/alerts,http://am-2:9093/api/v2/alerts")
    assert Settings().alert_receivers == (
        "http://am-0:9093/api/v2/alerts", "http://am-1:9093/api/v2/alerts", "http://am-2:9093/api/v2/alerts",
    )
    monkeypatch.setenv("LPIPS_GATE_WEBHOOK_URLS", '["http://am-3:9093/api/v2/alerts"]')
    monkeypatch.delenv("LPIPS_GATE_WEBHOOK_URL")
    assert Settings().alert_receivers == ("http://am-3:9093/api/v2/alerts",)
    assert Settings(webhook_url=None, webhook_urls=[]).alert_receivers == ()


def test_the_database_password_comes_from_its_own_secret_setting(monkeypatch) -> None:
    monkeypatch.setenv("LPIPS_GATE_DATABASE_URL", "postgresql+psycopg://gate:placeholder@db:5432/lpips")
    monkeypatch.setenv("LPIPS_GATE_DATABASE_PASSWORD", "s3cr@t")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://gate:s3cr%40t@db:5432/lpips"
    assert "s3cr" not in repr(settings) and "placeholder" not in repr(settings)
    assert not settings.embedded_store


def test_logs_are_json_unless_a_person_reads_them(monkeypatch) -> None:
    import sys

    from gate.logs import json_logs

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert json_logs(Settings()) is False
    assert json_logs(Settings(log_json=True)) is True
    monkeypatch.undo()
    assert json_logs(Settings()) is True  # pytest's captured stderr is no terminal


def test_celery_task_events_are_a_setting() -> None:
    from gate.runs.queue import make_celery

    for events in (False, True):
        app = make_celery(Settings(broker_url="redis://127.0.0.1:6379/15", celery_events=events), queue="q")
        assert (app.conf.worker_send_task_events, app.conf.task_send_sent_event) == (events, events)
