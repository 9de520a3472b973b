"""A run as JUnit XML, so any CI shows the gate's comparisons as test cases."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from gate.report.html import ReportPair, parse_run


def render_junit(run: dict[str, Any]) -> str:
    """One testsuite (the suite), one testcase per pair: failures carry distance and threshold."""
    report = parse_run(run)
    suite = ET.Element(
        "testsuite",
        name=report.suite,
        tests=str(len(report.pairs)),
        failures=str(sum(pair.verdict == "fail" for pair in report.pairs)),
        errors=str(sum(pair.verdict == "error" for pair in report.pairs)),
        skipped="0",
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (("run", report.run), ("verdict", report.verdict), ("threshold", report.threshold)):
        ET.SubElement(properties, "property", name=name, value="" if value is None else str(value))
    for pair in report.pairs:
        _testcase(suite, pair, report.suite, report.threshold)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _testcase(suite: ET.Element, pair: ReportPair, classname: str, threshold: float | None) -> None:
    case = ET.SubElement(suite, "testcase", name=pair.label, classname=classname)
    if pair.verdict == "fail":
        reasons = pair.reasons or ["distance"]
        message = "; ".join(_failure(pair, reason, threshold) for reason in reasons)
        ET.SubElement(case, "failure", message=message, type=reasons[0]).text = message
    elif pair.verdict == "error":
        message = pair.error or "comparison failed"
        ET.SubElement(case, "error", message=message, type="error").text = message


def _failure(pair: ReportPair, reason: str, threshold: float | None) -> str:
    """One failed rule with its value and the limit it exceeded: "region 1.75 > max_region 0.9"."""
    if reason == "flat":
        return "flat: the candidate is blank or flat where the reference is not (fail_flat)"
    scores = pair.scores or {}
    if reason == "distance":
        limit = pair.limits.get(reason, threshold)
        return f"distance {scores.get('mean', pair.distance):.6g} > threshold {_number(limit)}"
    return f"{reason} {_number(scores.get(reason))} > max_{reason} {_number(pair.limits.get(reason))}"


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"
