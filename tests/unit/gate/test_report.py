import io
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from gate.report.html import IMAGE_WIDTH_PX, WHERE_COLOUR, render_html

MAGENTA, CYAN, FAIL_RED = (255, 0, 255), (0, 255, 255), (207, 34, 46)
IMAGE_SIZE = (64, 36)  # shown IMAGE_WIDTH_PX wide, so 198 px tall
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
                "ref_png": _png(MAGENTA),
                "cand_png": _png(CYAN),
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


def _screenshot(html: str, tmp_path) -> np.ndarray:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh installs it)")
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    page.write_text(html, encoding="utf-8")
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,900",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.exists()
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        return np.asarray(image.convert("RGB")).astype(int)


def _solid_box(pixels: np.ndarray, colour) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels within 2 of `colour`, which must fill it."""
    ys, xs = np.nonzero(np.all(np.abs(pixels - colour) <= 2, axis=-1))
    assert xs.size, f"no pixel of colour {colour} on screen"
    left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    assert xs.size == (right - left) * (bottom - top), f"{colour} does not fill its bounding box"
    return left, top, right, bottom


def test_the_report_renders_reference_and_candidate_side_by_side(tmp_path):
    pixels = _screenshot(render_html(_run()), tmp_path)
    shown_height = round(IMAGE_WIDTH_PX * IMAGE_SIZE[1] / IMAGE_SIZE[0])
    ref_left, ref_top, ref_right, ref_bottom = _solid_box(pixels, MAGENTA)
    cand_left, cand_top, cand_right, cand_bottom = _solid_box(pixels, CYAN)
    assert (ref_right - ref_left, ref_bottom - ref_top) == (IMAGE_WIDTH_PX, shown_height)
    assert (cand_right - cand_left, cand_bottom - cand_top) == (IMAGE_WIDTH_PX, shown_height)
    assert cand_top == ref_top and cand_left > ref_right  # same row, candidate to the right
    assert np.all(np.abs(pixels - FAIL_RED) <= 2, axis=-1).sum() > 500  # the failing pair's badge and border


def test_the_heatmap_outlines_where_the_pair_failed_scaled_to_the_image_shown(tmp_path):
    """The box is in the candidate's pixels (64x36): [16, 9, 24, 18] is a quarter in, 3/8 wide, half tall."""
    failing = {**_run()["pairs"][1], "reasons": ["region"], "where": [16, 9, 24, 18], "cand_size": [64, 36]}
    pixels = _screenshot(render_html(_run(pairs=[failing])), tmp_path)
    ref_left, ref_top, _, _ = _solid_box(pixels, MAGENTA)
    cand_left = _solid_box(pixels, CYAN)[0]
    heatmap_left = cand_left + (cand_left - ref_left)  # the third figure, one figure further right
    shown_height = IMAGE_WIDTH_PX * IMAGE_SIZE[1] / IMAGE_SIZE[0]
    ys, xs = np.nonzero(np.all(np.abs(pixels - WHERE_COLOUR) <= 2, axis=-1))
    assert xs.size, "no outline on screen"
    left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    expected = (heatmap_left + IMAGE_WIDTH_PX * 16 / 64, ref_top + shown_height * 9 / 36,
                heatmap_left + IMAGE_WIDTH_PX * 40 / 64, ref_top + shown_height * 27 / 36)
    assert np.allclose((left, top, right, bottom), expected, atol=1.5), ((left, top, right, bottom), expected)
    inside = pixels[top + 4 : bottom - 4, left + 4 : right - 4]
    assert np.all(np.abs(inside - (40, 40, 40)) <= 2)  # an outline: the heatmap shows through


def test_the_worst_region_is_outlined_when_no_rule_says_where_and_nothing_without_the_size():
    passing = {**_run()["pairs"][1], "verdict": "pass", "worst_region": [0, 0, 32, 18], "cand_size": [64, 36]}
    html = render_html(_run(pairs=[passing]))
    assert 'style="left:0.000%;top:0.000%;width:50.000%;height:50.000%"' in html
    assert 'class="where"' not in render_html(_run(pairs=[{**passing, "cand_size": None}]))
    assert 'class="where"' not in render_html(_run())  # no box given


def test_text_is_escaped():
    html = render_html(
        _run(
            suite="<b>suite</b>",
            pairs=[
                {"ref": "<script>x</script>", "cand": "c&d", "status": "error", "verdict": "error", "error": "<img>"}
            ],
        )
    )
    assert "<script>" not in html and "<b>suite" not in html and "<img>" not in html
    assert "&lt;script&gt;x&lt;/script&gt; -&gt; c&amp;d" in html and "&lt;img&gt;" in html


def test_html_embeds_images_and_layer_shares():
    html = render_html(_run())
    assert html.count('src="data:image/png;base64,') == 3
    assert "http" not in html  # self-contained: nothing to fetch
    assert 'style="width:25.0%"' in html and 'style="width:75.0%"' in html  # 0.03 and 0.09 of 0.12
    assert "0.0900 (75%)" in html and "n/a" in html
    assert html.index("ok/c.png") < html.index("ok/b.png") < html.index("ok/a.png")  # worst first


def test_the_header_names_the_policy_that_produced_the_verdict():
    assert "threshold 0.1000 · 3 comparisons" in render_html(_run())
    assert "threshold 0.1000 · policy 0123456789ab · 3 comparisons" in render_html(_run(policy="0123456789ab" * 5))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"suite": None}, "run report: suite: Input should be a valid string"),
        ({"verdict": "ok"}, "run report: verdict: Input should be 'pass', 'fail' or 'error'"),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "done", "verdict": "pass", "ref_png": b"GIF89a"}]},
            "run report: pairs.0.ref_png: not PNG bytes",
        ),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "done", "verdict": "fail"}]},
            "run report: pairs.0: a fail pair needs its distance",
        ),
        (
            {"pairs": [{"ref": "a", "cand": "b", "status": "queued", "verdict": "pass", "distance": 0.1}]},
            "run report: pairs.0.status: Input should be 'done' or 'error'",
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


def test_html_names_each_failed_rule():
    failing = {**_run()["pairs"][1], "reasons": ["distance", "region", "fireflies", "flat"],
               "scores": {"mean": 0.12, "region": 1.75, "fireflies": 12.0, "flat": 1.0},
               "limits": {"distance": 0.11, "region": 0.9, "fireflies": 2.0, "flat": 0.0}}
    assert "failed: distance, region, fireflies, flat" in render_html(_run(pairs=[failing]))
