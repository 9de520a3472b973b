"""The one `lpips-gate` command: options parsed, a service called, its answer printed."""

from gate.cli.main import main

__all__ = ["main"]
