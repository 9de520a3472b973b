"""A run as JUnit XML, so any CI shows the gate's comparisons as test cases, with a history that
survives builds: a case is named by the frame's path relative to the compared candidate folder (the
same in every checkout and build), its classname is the suite, its time the pair's decoding and
model seconds. Run metadata, id, net, weights version and policy hash are properties; a pair's
heatmap, written next to the XML, is attached in system-out with GitLab's `[[ATTACHMENT|path]]`."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gate.errors import GateError
from gate.judging.pairs import UNPAIRED_TEXT


def write_junit(run: Mapping[str, Any], path: Path) -> None:
    """The XML at `path`, and each pair's heatmap (PNG bytes in "heatmap_png", when the run computed
    them) under `<stem>-heatmaps/` beside it, by the frame's relative path."""
    heatmaps: dict[str, str] = {}
    folder = path.parent / f"{path.stem}-heatmaps"
    try:
        for pair in run["pairs"]:
            if pair.get("heatmap_png"):
                target = folder / _png_name(pair["name"])
                if not target.resolve().is_relative_to(folder.resolve()):
                    continue  # a name is a path under the candidate folder: never leaves it
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(pair["heatmap_png"])
                heatmaps[pair["name"]] = target.as_posix()
        path.write_text(render_junit(run, heatmaps), encoding="utf-8")
    except OSError as exc:
        raise GateError(f"{exc.filename or path}: cannot write: {exc.strerror}") from exc


def _png_name(name: str) -> str:
    return name if name.lower().endswith(".png") else f"{name}.png"


def render_junit(run: Mapping[str, Any], heatmaps: Mapping[str, str] | None = None) -> str:
    """One testsuite (the suite), one testcase per pair (gate.judging.verdict.run_summary, with the
    report's "threshold" and each pair's "limits" where known). `heatmaps`: name -> path to attach."""
    pairs = run["pairs"]
    suite = ET.Element(
        "testsuite",
        name=run["suite"],
        tests=str(len(pairs)),
        failures=str(sum(pair["verdict"] == "fail" for pair in pairs)),
        errors=str(sum(pair["verdict"] == "error" for pair in pairs)),
        skipped=str(sum(_skipped(pair) for pair in pairs)),
        time=_seconds(sum(pair.get("seconds") or 0.0 for pair in pairs)),
    )
    properties = ET.SubElement(suite, "properties")
    shown = {"run": run["run"], "verdict": run["verdict"], "threshold": run.get("threshold"),
             "policy": run.get("policy"), "net": run.get("net"), "weights_version": run.get("weights_version"),
             **{f"meta.{key}": value for key, value in sorted((run.get("meta") or {}).items())}}
    for name, value in shown.items():
        ET.SubElement(properties, "property", name=name, value="" if value is None else str(value))
    for pair in pairs:
        _testcase(suite, pair, run["suite"], run.get("threshold"), (heatmaps or {}).get(_name(pair)))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _name(pair: Mapping[str, Any]) -> str:
    return str(pair.get("name") or pair["cand"])


def _skipped(pair: Mapping[str, Any]) -> bool:
    """A new or missing frame the run lets pass (missing=warn or ignore): not compared, not failed."""
    return bool(pair["status"] in UNPAIRED_TEXT and pair["verdict"] == "pass")


def _seconds(value: float) -> str:
    return f"{value:.3f}"


def _testcase(suite: ET.Element, pair: Mapping[str, Any], classname: str, threshold: float | None,
              heatmap: str | None) -> None:
    case = ET.SubElement(suite, "testcase", name=_name(pair), classname=classname,
                         time=_seconds(pair.get("seconds") or 0.0))
    if pair["status"] in UNPAIRED_TEXT:
        message = f"{UNPAIRED_TEXT[pair['status']]}: {pair['ref']} -> {pair['cand']}"
        element = "failure" if pair["verdict"] == "fail" else "skipped"
        ET.SubElement(case, element, message=message, type=pair["status"]).text = message
    elif pair["verdict"] == "fail":
        reasons = pair["reasons"] or ["distance"]
        message = "; ".join(_failure(pair, reason, threshold) for reason in reasons)
        ET.SubElement(case, "failure", message=message, type=reasons[0]).text = message
    elif pair["verdict"] == "error":
        message = pair["error"] or "comparison failed"
        ET.SubElement(case, "error", message=message, type="error").text = message
    if heatmap is not None:
        ET.SubElement(case, "system-out").text = f"[[ATTACHMENT|{heatmap}]]"


def _failure(pair: Mapping[str, Any], reason: str, threshold: float | None) -> str:
    """One failed rule with its value and the limit it exceeded: "region 1.75 > max_region 0.9"."""
    if reason == "flat":
        return "flat: the candidate is blank or flat where the reference is not (fail_flat)"
    scores, limits = pair.get("scores") or {}, pair.get("limits") or {}
    if reason == "distance":
        value = scores.get("mean", pair["distance"])
        return f"distance {_number(value)} > threshold {_number(limits.get(reason, threshold))}"
    return f"{reason} {_number(scores.get(reason))} > max_{reason} {_number(limits.get(reason))}"


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"
