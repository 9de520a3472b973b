"""Headless Chromium for the report tests: a screenshot of a page as pixels (the `--screenshot` flag),
and a driven browser (selenium, /usr/bin/chromedriver) where a test must move a control."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WINDOW = (1200, 900)
QUIET = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (scripts/test.sh installs it)")
    return found


def screenshot_file(page: Path, shot: Path, profile: Path, *, window: tuple[int, int] = WINDOW,
                    timeout: float = 120) -> float:
    """Chromium's screenshot of `page` at `shot`; the seconds the browser took, start to exit."""
    started = time.monotonic()
    subprocess.run(
        [chromium(), "--headless", *QUIET, f"--user-data-dir={profile}", f"--screenshot={shot}",
         f"--window-size={window[0]},{window[1]}", page.as_uri()],
        check=True, capture_output=True, timeout=timeout,
    )
    assert shot.exists()
    return time.monotonic() - started


def screenshot(html: str, tmp_path: Path) -> np.ndarray:
    """The page as (height, width, 3) ints, saved as tmp_path/shot.png to look at."""
    page, shot = tmp_path / "report.html", tmp_path / "shot.png"
    page.write_text(html, encoding="utf-8")
    screenshot_file(page, shot, tmp_path / "profile")
    return pixels_of(shot)


def pixels_of(shot: Path, window: tuple[int, int] | None = WINDOW) -> np.ndarray:
    """A screenshot as (height, width, 3) ints; a driven browser's is its viewport, less than the window."""
    with Image.open(shot) as image:
        assert window is None or image.size == window
        return np.asarray(image.convert("RGB")).astype(int)


def matching(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 2) -> np.ndarray:
    return np.all(np.abs(pixels - colour) <= tolerance, axis=-1)


def solid_box(pixels: np.ndarray, colour: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels within 2 of `colour`, which must fill it."""
    ys, xs = np.nonzero(matching(pixels, colour))
    assert xs.size, f"no pixel of colour {colour} on screen"
    left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    assert xs.size == (right - left) * (bottom - top), f"{colour} does not fill its bounding box"
    return int(left), int(top), int(right), int(bottom)


@contextmanager
def driven(profile: Path) -> Iterator[object]:
    """A selenium-driven headless Chromium with the window size of `screenshot`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("chromedriver is not installed: apt-get install -y chromium-driver (scripts/test.sh installs it)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for flag in ["--headless", *QUIET, f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
