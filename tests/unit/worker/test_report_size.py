"""A 1,000-pair run of 1920x1080 renders gives a report under 30 MB that headless Chromium opens and
shows (the acceptance of issue 14). No timing is asserted: the browser's timeout only guards against a
hang; bench/report.py measures the seconds, the README records them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bench.report_corpus import FRAME, SHOWN, frame, run
from gate.report.html import IMAGE_WIDTH_PX, WHERE_COLOUR, render_html
from tests.support.browser import matching, pixels_of, screenshot_file
from worker.previews import encode_preview, thumbnail

LIMIT_BYTES = 30 * 10**6


def test_the_corpus_previews_are_as_large_as_the_worker_makes_of_real_frames(tmp_path):
    """The size test's previews are made at preview size: they must not be smaller than what the
    worker's thumbnail() makes of full 1920x1080 frames of the same scenes."""
    real, made = [], []
    for seed in range(3):
        Image.fromarray(frame(seed, FRAME, 14, 1)).save(tmp_path / "frame.png")
        data, size = thumbnail(tmp_path / "frame.png", exposure=0.0, max_pixels=10**8)
        assert size == FRAME and data is not None
        real.append(len(data))
        made.append(len(encode_preview(Image.fromarray(frame(seed, SHOWN, 14 / 6, 1)))))
    assert np.mean(made) > 0.95 * np.mean(real), (made, real)


def test_a_thousand_pairs_at_1080p_make_a_report_under_30_mb_that_chromium_opens(tmp_path):
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"  # the screenshot, to look at
    page.write_text(render_html(run(1000), links_from=tmp_path), encoding="utf-8")
    size = page.stat().st_size
    assert size < LIMIT_BYTES, f"{size / 1e6:.1f} MB"
    seconds = screenshot_file(page, shot, tmp_path / "profile", timeout=180)
    print(f"1000 pairs: {size / 1e6:.1f} MB, headless Chromium {seconds:.1f} s")
    pixels = pixels_of(shot)
    assert matching(pixels, WHERE_COLOUR).sum() > 4 * 60  # the first failing pair's boxes are drawn
    first = pixels[:, 40:40 + IMAGE_WIDTH_PX]
    assert first.std() > 20  # its previews decoded: texture, not a blank frame
