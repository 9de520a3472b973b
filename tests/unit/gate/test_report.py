"""The report's model refuses a malformed run by key; the page itself is tested in test_report_html.py,
JUnit in test_junit.py."""

import io

import pytest
from PIL import Image

from gate.report.html import render_html

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
    with pytest.raises(ValueError) as caught:
        render_html(_run(**changes))
    assert str(caught.value) == message

