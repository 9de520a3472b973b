"""How large the HTML report of a big run is, and how long headless Chromium takes to open it.

Builds the report of a judged run of PAIRS pairs of 1920x1080 renders (bench/report_corpus.py: the
previews and heatmaps the worker would store, one pair in 20 failing), writes it, and has headless
Chromium load it and take a screenshot; prints as JSON the file's size, the seconds of the screenshot
run (browser start to exit, its start-up included), and, in a driven Chromium, the page's own
navigation timing: DOMContentLoaded (parsed, script run) and load (every eager resource).

    python bench/report.py [--pairs 1000] [--out report.html] [--shot shot.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.report_corpus import run
from gate.report.html import render_html
from tests.support.browser import driven, screenshot_file


def measure(pairs: int, out: Path, shot: Path) -> dict[str, float]:
    started = time.monotonic()
    out.write_text(render_html(run(pairs), links_from=out.parent), encoding="utf-8")
    built = time.monotonic() - started
    with tempfile.TemporaryDirectory() as profile:
        seconds = screenshot_file(out, shot, Path(profile))
    with tempfile.TemporaryDirectory() as profile, driven(Path(profile)) as browser:
        browser.get(out.as_uri())
        timing = browser.execute_script(
            "const t = performance.getEntriesByType('navigation')[0];"
            "return [t.domContentLoadedEventEnd / 1000, t.loadEventEnd / 1000]")
    return {"pairs": pairs, "megabytes": round(out.stat().st_size / 1e6, 2), "build_s": round(built, 1),
            "screenshot_run_s": round(seconds, 2), "dom_content_loaded_s": round(timing[0], 2),
            "load_s": round(timing[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "lpips-gate-report.html")
    parser.add_argument("--shot", type=Path, default=Path(tempfile.gettempdir()) / "lpips-gate-report.png")
    args = parser.parse_args()
    print(json.dumps(measure(args.pairs, args.out, args.shot)))


if __name__ == "__main__":
    main()
