"""The embedded executor runs the worker's processor alone: a run with no broker loads no broker library."""

from __future__ import annotations

import subprocess
import sys

BROKER_PACKAGES = ("billiard", "celery", "kombu", "redis")


def loaded_after(statement: str) -> list[str]:
    """The top-level packages of BROKER_PACKAGES and `worker` that a fresh interpreter holds after `statement`."""
    code = (
        f"import sys; {statement}; "
        f"print(' '.join(sorted({{n.split('.')[0] for n in sys.modules}} & {{'worker', *{BROKER_PACKAGES!r}}})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_embedded_executor_loads_no_broker_library():
    assert loaded_after("import worker.embedded") == ["worker"]


def test_the_celery_adapter_loads_them():
    assert loaded_after("import worker.celery_app") == ["billiard", "celery", "kombu", "redis", "worker"]
