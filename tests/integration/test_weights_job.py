"""`weights fetch --skip-verified`, the deployment's weights job: verified weights are kept as they
are (no download, the same files)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gate.cli import main
from tests.integration.services import copy_weights


def _status(folder: Path) -> dict[str, dict]:
    result = CliRunner().invoke(main, ["weights", "status", "--json"], env={"LPIPS_GATE_WEIGHTS_DIR": str(folder)})
    return {row["net"]: row for row in json.loads(result.stdout)}


def test_verified_weights_are_kept_without_a_download(tmp_path: Path) -> None:
    folder = copy_weights(tmp_path)
    before = _status(folder)
    mtimes = {net: Path(before[net]["path"]).stat().st_mtime_ns for net in ("alex", "vgg")}
    result = CliRunner().invoke(
        main, ["weights", "fetch", "--net", "alex", "--net", "vgg", "--skip-verified", "--offline"],
        env={"LPIPS_GATE_WEIGHTS_DIR": str(folder)},
    )
    assert (result.exit_code, result.stdout) == (
        0, f"alex: {before['alex']['sha256']} verified, kept\nvgg: {before['vgg']['sha256']} verified, kept\n",
    )
    assert {net: Path(before[net]["path"]).stat().st_mtime_ns for net in ("alex", "vgg")} == mtimes
