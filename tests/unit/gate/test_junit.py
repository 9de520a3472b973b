"""JUnit from a judged run: stable case names, time, the failed rules with their limits, run
metadata as properties, new and missing frames, heatmaps attached the GitLab way."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gate.report.junit import render_junit, write_junit

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def _pair(name: str, verdict: str, *, status: str = "done", distance: float | None = 0.02, **extra: Any) -> dict:
    return {"ref": f"ref/{name}", "cand": f"build-41/cand/{name}", "name": name, "status": status,
            "verdict": verdict, "distance": distance, "error": None, "scores": None, "reasons": [],
            "seconds": 0.25, **extra}


def _run(**changes: Any) -> dict:
    return {"run": 7, "suite": "render", "verdict": "fail", "policy": "ab" * 32, "net": "alex",
            "weights_version": "alexnet-owt-7be5be79", "threshold": 0.1,
            "meta": {"commit": "0a1b2c", "pipeline": "991"}, "pairs": [
                _pair("a.png", "pass"),
                _pair("sub/b.png", "fail", distance=0.12, reasons=["distance", "region", "flat"],
                      scores={"mean": 0.12, "region": 1.75, "flat": 1.0}, limits={"distance": 0.11, "region": 0.9}),
                _pair("c.png", "error", status="error", distance=None, error="decode: truncated", seconds=None),
                _pair("new.png", "fail", status="new", distance=None, reasons=["new"], seconds=None),
                _pair("gone.png", "pass", status="missing", distance=None, seconds=None),
            ], **changes}


def test_cases_are_named_by_the_frame_path_under_the_candidate_folder_with_time_and_classname() -> None:
    [suite] = ET.fromstring(render_junit(_run()))
    assert {key: suite.get(key) for key in ("name", "tests", "failures", "errors", "skipped", "time")} == {
        "name": "render", "tests": "5", "failures": "2", "errors": "1", "skipped": "1", "time": "0.500",
    }
    cases = suite.findall("testcase")
    assert [(case.get("name"), case.get("classname"), case.get("time")) for case in cases] == [
        ("a.png", "render", "0.250"), ("sub/b.png", "render", "0.250"), ("c.png", "render", "0.000"),
        ("new.png", "render", "0.000"), ("gone.png", "render", "0.000"),
    ]
    assert [[(child.tag, child.get("type"), child.get("message")) for child in case] for case in cases] == [
        [],
        [("failure", "distance", "distance 0.12 > threshold 0.11; region 1.75 > max_region 0.9; flat: the "
                                 "candidate is blank or flat where the reference is not (fail_flat)")],
        [("error", "error", "decode: truncated")],
        [("failure", "new", "new frame: no reference: ref/new.png -> build-41/cand/new.png")],
        [("skipped", "missing", "missing frame: no candidate: ref/gone.png -> build-41/cand/gone.png")],
    ]


def test_run_metadata_id_net_weights_and_policy_are_properties() -> None:
    [suite] = ET.fromstring(render_junit(_run()))
    assert {prop.get("name"): prop.get("value") for prop in suite.find("properties")} == {
        "run": "7", "verdict": "fail", "threshold": "0.1", "policy": "ab" * 32, "net": "alex",
        "weights_version": "alexnet-owt-7be5be79", "meta.commit": "0a1b2c", "meta.pipeline": "991",
    }


def test_heatmaps_are_written_beside_the_xml_and_attached(tmp_path: Path) -> None:
    run = _run()
    run["pairs"][1]["heatmap_png"] = PNG
    write_junit(run, tmp_path / "junit.xml")
    assert (tmp_path / "junit-heatmaps/sub/b.png").read_bytes() == PNG
    cases = ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite/testcase")
    assert [case.findtext("system-out") for case in cases] == [
        None, f"[[ATTACHMENT|{(tmp_path / 'junit-heatmaps/sub/b.png').as_posix()}]]", None, None, None,
    ]


def test_names_are_escaped() -> None:
    run = _run(pairs=[_pair('a<"&>.png', "pass")])
    assert ET.fromstring(render_junit(run)).find("testsuite/testcase").get("name") == 'a<"&>.png'
