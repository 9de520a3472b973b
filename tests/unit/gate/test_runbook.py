"""Alerting conventions: every alert rule has a severity, and docs/runbook.md a section (the anchor the
alerts' runbook_url points at) stating that severity; receivers come from both URL settings."""

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
