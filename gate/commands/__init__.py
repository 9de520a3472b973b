"""Light CLI command groups added to `lpips-gate` in gate/cli.py."""
