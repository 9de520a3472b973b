"""`python -m tests.support.faulty_worker ARGS...` is `lpips-gate ARGS...` with the faults of
LPIPS_TEST_FAULTS installed first, so a worker's pool processes inherit them through fork."""

from __future__ import annotations

import sys

from gate.cli import main
from tests.support.faults import Faults
from worker import runtime


def run(args: list[str]) -> None:
    faults = Faults.from_env()
    if faults is not None:
        runtime.use_engine_factory(faults.build_engine)
    main(args=args, prog_name="lpips-gate")


if __name__ == "__main__":
    run(sys.argv[1:])
