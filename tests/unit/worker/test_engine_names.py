"""The light CLI module names the engine's choices without importing torch: keep them in step."""

import subprocess
import sys

from worker import cli
from worker.perceptual.normalise import NORMALISERS
from worker.perceptual.reduce import REDUCTIONS


def test_cli_choices_match_the_engine():
    assert set(cli.NORMALISE_NAMES) == set(NORMALISERS)
    assert set(cli.REDUCTION_NAMES) == set(REDUCTIONS)


def test_help_and_the_gate_package_import_no_torch():
    code = ("import sys, gate.cli, gate.store, gate.runs.queue, gate.settings;"
            "from click.testing import CliRunner;"
            "r = CliRunner().invoke(gate.cli.main, ['--help']);"
            "assert r.exit_code == 0, r.output;"
            "print('torch' in sys.modules, 'worker.perceptual' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["False", "False"], done.stderr
