"""`lpips-gate calibrate`: thresholds from known-good renders (the service: gate.calibration.service)."""

from __future__ import annotations

from pathlib import Path

import click

from gate.calibration.learn import DEFAULT_MARGIN
from gate.cli.runs import echo, progress_bar
from gate.settings import Settings
from gate.vocabulary import NETS, PRECISIONS

DEFAULT_TIMEOUT_S = 3600.0


@click.command()
@click.argument("ref_dir", type=click.Path(path_type=Path))
@click.argument("good_dirs", metavar="GOOD_DIR...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--suite", required=True, help="Suite name: the calibration judges its runs.")
@click.option("--margin", type=click.FloatRange(min=0), default=DEFAULT_MARGIN, show_default=True,
              help="Relative margin over the largest value the good renders gave each score.")
@click.option("--net", type=click.Choice(NETS), default=None, help="Backbone (default: LPIPS_GATE_NET).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Network precision (default: LPIPS_GATE_PRECISION).")
@click.option("--timeout", type=click.FloatRange(min=0), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds to wait for all the comparisons before giving up (exit 2).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"suite", "pairs", "thresholds": {score: limit}, ...} as JSON.')
@click.pass_obj
def calibrate(settings: Settings, ref_dir: Path, good_dirs: tuple[Path, ...], suite: str, margin: float,
              net: str | None, precision: str | None, timeout: float, as_json: bool) -> None:
    """Learn the thresholds of SUITE from folders of accepted re-renders of REF_DIR.

    Each GOOD_DIR is compared with REF_DIR (pairs matched by relative path, as `check` does); every
    score's noise floor becomes a threshold a margin above it, for the suite and per image where at
    least 3 good renders of it were scored. `check`, `wait` and the gate daemon then judge the
    suite's pairs by them wherever the policies and --threshold set none."""
    from gate.calibration.service import CalibrationRequest
    from gate.calibration.service import calibrate as calibrate_suite
    from gate.logs import configure

    request = CalibrationRequest(ref_dir, good_dirs, suite, margin=margin, net=net, precision=precision,
                                 timeout=timeout)
    configure(settings)  # the embedded executor logs; stdout is for the answer
    with progress_bar("calibration") as progress:
        calibration = calibrate_suite(settings, request, progress=progress)
    shown = calibration.as_json()
    lines = [
        f"suite {suite}: calibration {shown['calibration']} for {shown['net']}@{shown['weights_version']} from "
        f"{shown['pairs']} pairs (runs {', '.join(map(str, shown['runs']))}), margin {shown['margin']:g}",
        *(f"  {score:<10} {limit:.6g}" for score, limit in shown["thresholds"].items()),
        f"  own limits for {shown['per_image']} image(s)",
    ]
    echo(as_json, shown, "\n".join(lines))
