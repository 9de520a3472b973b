"""Fixtures of the reliability suite. Every worker consumes a private Redis (never the shared one:
it would take other engineers' messages) and anything that restarts is a private server; the
figures of each scenario go to a JSON report and a table printed at the end of the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.services import copy_weights
from tests.reliability.report import REPORT_ENV, Report

REPORT_KEY = pytest.StashKey[Report]()


@pytest.fixture(scope="session")
def report(request, tmp_path_factory) -> Report:
    """Where the scenarios' figures go: $LPIPS_GATE_RELIABILITY_REPORT, else pytest's temporary folder."""
    default = tmp_path_factory.getbasetemp() / "reliability-report.json"
    request.config.stash[REPORT_KEY] = Report(Path(os.environ.get(REPORT_ENV) or default))
    return request.config.stash[REPORT_KEY]


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is None or not report.figures:
        return
    terminalreporter.section("lpips-gate reliability figures")
    for line in report.table():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"(written to {report.path})")


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory) -> Path:
    return copy_weights(tmp_path_factory.mktemp("reliability-weights"))


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    return root
