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
        limit = "none" if threshold is None else f"{threshold:.6g}"
        message = f"distance {pair.distance:.6g} > threshold {limit}"
        ET.SubElement(case, "failure", message=message, type="distance").text = message
    elif pair.verdict == "error":
        message = pair.error or "comparison failed"
        ET.SubElement(case, "error", message=message, type="error").text = message
