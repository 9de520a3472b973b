"""The review page: what the HTML holds, then what headless Chromium shows of it (pixels), then the
controls moved in a driven Chromium. Screenshots are kept under the test's tmp folder to look at."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from gate.report.html import IMAGE_WIDTH_PX, WHERE_COLOUR, render_html
from gate.report.model import frame_size
from gate.vocabulary import HEATMAP_RAMP
from tests.support.browser import driven, matching, pixels_of, screenshot

MAGENTA, CYAN, HEAT_GREY, YELLOW = (255, 0, 255), (0, 255, 255), (40, 40, 40), (255, 200, 0)
SLIDER_BLUE = (9, 105, 218)  # the controls' accent colour (#0969da)
SIZE = (64, 36)  # the previews' size; shown IMAGE_WIDTH_PX wide, so 180 px tall
SHOWN_HEIGHT = IMAGE_WIDTH_PX * SIZE[1] // SIZE[0]
WHERE = [16, 9, 24, 18]  # a quarter in, 3/8 wide, half tall: shown at (80, 45)-(200, 135)


def _png(colour, size=SIZE):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _run(tmp_path, **changes):
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    (frames / "new.png").write_bytes(_png(YELLOW))
    (frames / "gone.png").write_bytes(_png(YELLOW))
    pairs = [
        {"ref": "ref/a.png", "cand": "cand/a.png", "status": "done", "verdict": "pass", "distance": 0.02,
         "layers": [{"name": "relu1", "distance": 0.03}, {"name": "relu2", "distance": 0.09}]},
        {"ref": "ref/b.png", "cand": "cand/b.png", "status": "done", "verdict": "fail", "distance": 0.12,
         "reasons": ["region"], "where": WHERE, "cand_size": list(SIZE), "ref_thumb": _png(MAGENTA),
         "cand_thumb": _png(CYAN), "heatmap_png": _png(HEAT_GREY), "ref_file": str(frames / "gone.png"),
         "cand_file": str(frames / "new.png")},
        {"ref": "ref/c.png", "cand": "cand/c.png", "status": "error", "verdict": "error", "error": "truncated"},
        {"ref": "ref/d.png", "cand": "cand/d.png", "status": "new", "verdict": "fail", "reasons": ["new"],
         "cand_file": str(frames / "new.png")},
        {"ref": "ref/e.png", "cand": "cand/e.png", "status": "missing", "verdict": "pass",
         "warning": "missing frame: no candidate (missing=warn)", "ref_file": str(frames / "gone.png")},
        {"ref": "ref/f.png", "cand": "cand/f.png", "status": "done", "verdict": "pass", "distance": 0.05},
    ]
    run = {"run": 7, "suite": "render", "verdict": "fail", "threshold": 0.1, "net": "alex",
           "weights_version": "alex-0.1-abc", "policy": "0123456789ab" * 5,
           "meta": {"commit": "abc123", "pipeline": "42"}, "reasons": ["1 new frame(s) (missing=fail): d.png"],
           "pairs": pairs}
    return {**run, **changes}


def _sections(html):
    return re.findall(r"<section .*?</section>", html, flags=re.S)


def test_failures_come_first_then_the_worst_distance(tmp_path):
    labels = [re.search(r"<h2 id=\"p\d+\">.*</span> (.*?)</h2>", section).group(1) for section in _sections(render_html(
        _run(tmp_path)))]
    assert labels == ["ref/b.png -&gt; cand/b.png", "ref/d.png -&gt; cand/d.png", "ref/c.png -&gt; cand/c.png",
                      "ref/f.png -&gt; cand/f.png", "ref/a.png -&gt; cand/a.png", "ref/e.png -&gt; cand/e.png"]


def test_the_failing_region_is_boxed_on_the_candidate_and_the_heatmap_next_to_a_colour_bar(tmp_path):
    failing = _sections(render_html(_run(tmp_path)))[0]
    box = 'class="where" title="region 16,9 24x18 px" style="left:25.000%;top:25.000%;width:37.500%;height:50.000%"'
    viewer, heatmap = failing.split('<figure class="heat">')
    assert box in viewer and '<img class="cand" alt="candidate"' in viewer and box in heatmap
    assert '<div class="scale" role="img" aria-label="colour scale: dark 0 to bright 1 and above">' in heatmap
    ticks = re.findall(r"<span>([0-9.+]+)</span>", heatmap)
    assert ticks == ["1.00+", "0.75", "0.50", "0.25", "0.00"]
    assert f'width="{IMAGE_WIDTH_PX}" height="{SHOWN_HEIGHT}"' in viewer  # no reflow as lazy images arrive


def test_each_pair_has_an_a_b_slider_and_a_blink_toggle_with_labels(tmp_path):
    failing = _sections(render_html(_run(tmp_path)))[0]
    assert 'aria-labelledby="p0"><h2 id="p0">' in failing  # the controls are the pair's, named by its heading
    slider = '<input type="range" min="0" max="100" value="50" aria-label="A/B divider, reference to candidate">'
    assert slider in failing
    assert '<button type="button" class="blink" aria-pressed="false">blink</button>' in failing


def test_previews_are_embedded_lazily_and_full_images_linked(tmp_path):
    html = render_html(_run(tmp_path), links_from=tmp_path)
    images = re.findall(r"<img [^>]*>", html)
    assert len(images) == 5  # reference, candidate, heatmap; the new frame's and the missing one's file
    assert all('loading="lazy" decoding="async"' in image for image in images)
    assert html.count('src="data:image/png;base64,') == 3
    assert 'full size: <a href="frames/gone.png">reference</a> · <a href="frames/new.png">candidate</a>' in html
    assert "http" not in html  # self-contained: nothing fetched from anywhere
    assert f'<a href="{(tmp_path / "frames/new.png").as_uri()}">candidate</a>' in render_html(_run(tmp_path))


def test_new_and_missing_frames_get_a_badge_and_the_one_image_there_is(tmp_path):
    sections = {re.search(r'</span> (ref/\w)', s).group(1): s
                for s in _sections(render_html(_run(tmp_path), links_from=tmp_path))}
    new, missing = sections["ref/d"], sections["ref/e"]
    assert '<span class="badge fail">FAIL</span> <span class="badge new">NEW</span>' in new
    assert "no reference: a new frame" in new and "data-unpaired" in new and "data-fail" in new
    linked = re.findall(r'<img alt="(\w+) \(from its file\)"[^>]* src="([^"]+)"', new)
    assert linked == [("candidate", "frames/new.png")]
    assert '<span class="badge pass">PASS</span> <span class="badge missing">MISSING</span>' in missing
    assert "no candidate: a missing frame · missing frame: no candidate (missing=warn)" in missing
    assert re.findall(r'<img alt="(\w+) \(from its file\)"', missing) == ["reference"]


def test_the_run_metadata_and_summary_head_the_page(tmp_path):
    html = render_html(_run(tmp_path))
    header = html[html.index("<header>"):html.index("</header>")]
    for key, value in [("run", "7"), ("verdict", "FAIL"), ("threshold", "0.1000"), ("net", "alex"),
                       ("comparisons", "6: 3 pass, 2 fail, 1 error, 1 new, 1 missing"), ("weights", "alex-0.1-abc"),
                       ("policy", "0123456789ab"), ("commit", "abc123"), ("pipeline", "42")]:
        assert f'<th scope="row">{key}</th><td>{value}</td>' in header
    assert "<caption>run metadata</caption>" in header and "1 new frame(s) (missing=fail): d.png" in header
    assert "run metadata" not in render_html(_run(tmp_path, meta={}))
    filters = re.findall(r'value="(\w+)"(?: checked)?> ([^<]+)</label>', html)
    assert filters == [("all", "all (6)"), ("fail", "failing (2)"), ("unpaired", "new + missing (2)"),
                       ("error", "errors (1)")]


def test_text_is_escaped(tmp_path):
    html = render_html(_run(tmp_path, suite="<b>suite</b>", meta={"<i>": "<script>"}, pairs=[
        {"ref": "<script>x</script>", "cand": "c&d", "status": "error", "verdict": "error", "error": "<img>"}]))
    assert "<script>x" not in html and "<b>suite" not in html and "<img>" not in html and "<i>" not in html
    assert "&lt;script&gt;x&lt;/script&gt; -&gt; c&amp;d" in html and "&lt;img&gt;" in html


def test_the_candidate_size_is_read_from_the_heatmap_the_worker_wrote():
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("lpips-gate-frame", "1920x1080")
    buffer = io.BytesIO()
    Image.new("L", (320, 180)).save(buffer, "PNG", pnginfo=info)
    assert frame_size(buffer.getvalue()) == (1920, 1080)
    assert frame_size(_png(HEAT_GREY)) is None and frame_size(None) is None


@pytest.mark.parametrize(
    "pair, message",
    [
        ({"cand_thumb": b"GIF89a"}, "run report: pairs.0.cand_thumb: not PNG, JPEG or WebP bytes"),
        ({"distance": None}, "run report: pairs.0: a fail pair needs its distance"),
        ({"status": "queued"}, "run report: pairs.0.status: Input should be 'done', 'error', 'new' or 'missing'"),
    ],
)
def test_bad_pairs_are_refused_by_key(tmp_path, pair, message):
    failing = {"ref": "a", "cand": "b", "status": "done", "verdict": "fail", "distance": 0.2}
    with pytest.raises(ValueError) as caught:
        render_html(_run(tmp_path, pairs=[{**failing, **pair}]))
    assert str(caught.value) == message


# --- what Chromium shows --------------------------------------------------------------------------


def _viewer_at(pixels):
    """(left, top) of the first A/B viewer: its reference half is the only magenta on the page."""
    ys, xs = np.nonzero(matching(pixels, MAGENTA))
    assert xs.size, "no reference preview on screen"
    return int(xs.min()), int(ys.min())


def _boxes(pixels, left, top):
    """The outline's pixels within the picture at (left, top), as (left, top, right, bottom)."""
    inside = matching(pixels[top:top + SHOWN_HEIGHT, left:left + IMAGE_WIDTH_PX], WHERE_COLOUR)
    ys, xs = np.nonzero(inside)
    assert xs.size, f"no box on the picture at {left},{top}"
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_chromium_shows_the_slider_the_boxed_region_and_the_colour_bar(tmp_path):
    pixels = screenshot(render_html(_run(tmp_path)), tmp_path)  # tmp_path/shot.png
    left, top = _viewer_at(pixels)
    half = IMAGE_WIDTH_PX // 2
    reference = matching(pixels[top:top + SHOWN_HEIGHT, left:left + IMAGE_WIDTH_PX], MAGENTA)
    candidate = matching(pixels[top:top + SHOWN_HEIGHT, left:left + IMAGE_WIDTH_PX], CYAN)
    assert reference[:, : half - 2].mean() > 0.9 and not reference[:, half + 2:].any()  # A/B split at the middle
    assert candidate[:, half + 2:].mean() > 0.9 and not candidate[:, : half - 2].any()
    assert np.allclose(_boxes(pixels, left, top), (80, 45, 200, 135), atol=1.5)  # boxed on the candidate

    heat = np.nonzero(matching(pixels[top:top + SHOWN_HEIGHT, left + IMAGE_WIDTH_PX:], HEAT_GREY))[1]
    heat_left = left + IMAGE_WIDTH_PX + int(heat.min())
    assert np.allclose(_boxes(pixels, heat_left, top), (80, 45, 200, 135), atol=1.5)  # and on the heatmap

    beside = pixels[top:top + SHOWN_HEIGHT, heat_left + IMAGE_WIDTH_PX:heat_left + IMAGE_WIDTH_PX + 40]
    for colour in (HEATMAP_RAMP[0], HEATMAP_RAMP[3], HEATMAP_RAMP[-1]):  # the colour bar: dark, red, bright
        assert matching(beside, colour, tolerance=12).sum() >= 10, colour

    controls = pixels[top + SHOWN_HEIGHT:top + SHOWN_HEIGHT + 30, left:left + IMAGE_WIDTH_PX]
    assert matching(controls, SLIDER_BLUE, tolerance=30).sum() >= 30  # the slider, filled to its thumb


def test_moving_the_slider_moves_the_clip_and_the_filters_hide_pairs(tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = tmp_path / "report.html"
    page.write_text(render_html(_run(tmp_path)), encoding="utf-8")
    with driven(tmp_path / "profile") as browser:
        browser.get(page.as_uri())
        slider = browser.find_element(By.CSS_SELECTOR, ".ab input[type=range]")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
        for key, expected, shot in ((Keys.HOME, CYAN, "start.png"), (Keys.END, MAGENTA, "end.png")):
            slider.send_keys(key)
            x, y = browser.execute_script(
                "const r = document.querySelector('.ab .viewer').getBoundingClientRect(); return [r.x, r.y]")
            browser.save_screenshot(str(tmp_path / shot))
            x, y = round(x), round(y)
            inside = pixels_of(tmp_path / shot, None)[y + 2:y + SHOWN_HEIGHT - 2, x + 2:x + IMAGE_WIDTH_PX - 2]
            assert matching(inside, expected).mean() > 0.9, shot  # all candidate, then all reference
        split = browser.execute_script("return getComputedStyle(document.querySelector('.ab .cand')).clipPath")
        assert split == "inset(0px 0px 0px 100%)"

        blink = browser.find_element(By.CSS_SELECTOR, "button.blink")
        blink.click()
        assert blink.get_attribute("aria-pressed") == "true"

        def shown():
            return browser.execute_script(
                "return [...document.querySelectorAll('section.pair')].filter(s => !s.hidden)"
                ".map(s => s.querySelector('h2').textContent)")

        browser.find_element(By.CSS_SELECTOR, "input[name=show][value=unpaired]").click()
        assert shown() == ["FAIL NEW ref/d.png -> cand/d.png", "PASS MISSING ref/e.png -> cand/e.png"]
        browser.find_element(By.CSS_SELECTOR, "input[name=show][value=all]").click()
        browser.find_element(By.ID, "path-filter").send_keys("F.PNG")
        assert shown() == ["PASS ref/f.png -> cand/f.png"]
        assert browser.find_element(By.ID, "shown").text == "1 of 6 shown"

        browser.find_element(By.CSS_SELECTOR, "input[name=show][value=all]").click()
        browser.find_element(By.ID, "path-filter").clear()
        viewer = browser.find_element(By.CSS_SELECTOR, ".ab .viewer")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", viewer)
        slider.send_keys(Keys.HOME)  # the divider at the left edge: all candidate
        ActionChains(browser).move_to_element_with_offset(viewer, -IMAGE_WIDTH_PX // 4, 0).click().perform()
        assert browser.current_url == (tmp_path / "frames/new.png").as_uri()  # the side shown there: its file
        browser.back()
        viewer = browser.find_element(By.CSS_SELECTOR, ".ab .viewer")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", viewer)
        browser.find_element(By.CSS_SELECTOR, ".ab input[type=range]").send_keys(Keys.END)  # all reference
        ActionChains(browser).move_to_element_with_offset(viewer, IMAGE_WIDTH_PX // 4, 0).click().perform()
        assert browser.current_url == (tmp_path / "frames/gone.png").as_uri()
