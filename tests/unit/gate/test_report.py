"""JUnit from a judged run; the HTML page's tests are in test_report_html.py."""

import io
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from gate.report.html import render_html
from gate.report.junit import render_junit

MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
IMAGE_SIZE = (64, 36)
LAYERS = [{"name": "relu1", "distance": 0.03}, {"name": "relu2", "distance": 0.09}, {"name": "relu3", "distance": None}]


def _png(colour, size=IMAGE_SIZE):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _run(**changes):
    run = {
        "run": 7,
        "suite": "render",
        "verdict": "error",
        "threshold": 0.1,
        "pairs": [
            {
                "ref": "ok/a.png",
                "cand": "new/a.png",
                "status": "done",
                "verdict": "pass",
                "distance": 0.02,
                "error": None,
                "layers": LAYERS,
            },
            {
                "ref": "ok/b.png",
                "cand": "new/b.png",
                "status": "done",
                "verdict": "fail",
                "distance": 0.12,
                "error": None,
                "ref_thumb": _png(MAGENTA),
                "cand_thumb": _png(CYAN),
                "heatmap_png": _png((40, 40, 40)),
                "layers": LAYERS,
            },
            {
                "ref": "ok/c.png",
                "cand": "new/c.png",
                "status": "error",
                "verdict": "error",
                "distance": None,
                "error": "decode: truncated",
            },
        ],
    }
    return {**run, **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"suite": None}, "run report: suite: Input should be a valid string"),
        ({"verdict": "ok"}, "run report: verdict: Input should be 'pass', 'fail' or 'error'"),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "done", "verdict": "pass", "ref_thumb": b"GIF89a"}]},
            "run report: pairs.0.ref_thumb: not PNG, JPEG or WebP bytes",
        ),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "done", "verdict": "fail"}]},
            "run report: pairs.0: a fail pair needs its distance",
        ),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "queued", "verdict": "pass", "distance": 0.1}]},
            "run report: pairs.0.status: Input should be 'done', 'error', 'new' or 'missing'",
        ),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "done", "verdict": "pass", "distance": 0.1, "png": b""}]},
            "run report: pairs.0.png: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_runs_are_refused_by_key(changes, message):
    for render in (render_html, render_junit):
        with pytest.raises(ValueError) as caught:
            render(_run(**changes))
        assert str(caught.value) == message


def test_junit_has_one_testcase_per_pair():
    root = ET.fromstring(render_junit(_run()))
    assert root.tag == "testsuites"
    [suite] = root
    assert {key: suite.get(key) for key in ("name", "tests", "failures", "errors", "skipped")} == {
        "name": "render",
        "tests": "3",
        "failures": "1",
        "errors": "1",
        "skipped": "0",
    }
    properties = {prop.get("name"): prop.get("value") for prop in suite.find("properties")}
    assert properties == {"run": "7", "verdict": "error", "threshold": "0.1"}
    cases = suite.findall("testcase")
    assert [(case.get("name"), case.get("classname")) for case in cases] == [
        ("ok/a.png -> new/a.png", "render"),
        ("ok/b.png -> new/b.png", "render"),
        ("ok/c.png -> new/c.png", "render"),
    ]
    assert list(cases[0]) == []
    [failure] = cases[1]
    assert (failure.tag, failure.get("type"), failure.get("message")) == (
        "failure",
        "distance",
        "distance 0.12 > threshold 0.1",
    )
    [error] = cases[2]
    assert (error.tag, error.get("message"), error.text) == ("error", "decode: truncated", "decode: truncated")


def test_junit_names_each_failed_rule_with_its_limit():
    failing = {**_run()["pairs"][1], "reasons": ["distance", "region", "fireflies", "flat"],
               "scores": {"mean": 0.12, "region": 1.75, "fireflies": 12.0, "flat": 1.0},
               "limits": {"distance": 0.11, "region": 0.9, "fireflies": 2.0, "flat": 0.0}}
    [failure] = ET.fromstring(render_junit(_run(pairs=[failing]))).find("testsuite/testcase")
    assert failure.get("type") == "distance"
    assert failure.get("message") == (
        "distance 0.12 > threshold 0.11; region 1.75 > max_region 0.9; fireflies 12 > max_fireflies 2; "
        "flat: the candidate is blank or flat where the reference is not (fail_flat)"
    )
    assert "failed: distance, region, fireflies, flat" in render_html(_run(pairs=[failing]))


def test_junit_escapes_names():
    pair = {"ref": 'a<"&>', "cand": "b", "status": "done", "verdict": "pass", "distance": 0.0}
    xml = render_junit(_run(pairs=[pair]))
    assert ET.fromstring(xml).find("testsuite/testcase").get("name") == 'a<"&> -> b'
