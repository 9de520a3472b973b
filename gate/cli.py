"""The one `lpips-gate` command. Light commands live in `gate`; engine commands (torch) arrive as
entry-point plugins in the group `lpips_gate.commands`, loaded only when invoked."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from gate.settings import Settings

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
PLUGIN_GROUP = "lpips_gate.commands"
ENGINE_MODULES = {"torch", "torchvision", "PIL", "safetensors"}


class UsageFailure(click.ClickException):
    """Bad input or missing prerequisites: a message on stderr, exit 2, no traceback."""

    exit_code = EXIT_ERROR


class _Cli(click.Group):
    def _plugins(self):
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def format_commands(self, ctx, formatter):
        """List every command; a plugin that cannot load says why instead of breaking --help."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
                rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
            except Exception as exc:  # noqa: BLE001  (help must render whatever one plugin does)
                rows.append((name, f"(unavailable: {exc})"))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        plugin = self._plugins().get(name)
        if plugin is None:
            return None
        try:
            return plugin.load()
        except ImportError as exc:
            if exc.name not in ENGINE_MODULES:
                raise
            raise UsageFailure(
                f"'{name}' needs the engine: pip install 'lpips-gate[worker]' ({exc})"
            ) from exc


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """lpips-gate: a perceptual quality gate for rendered images (LPIPS).

    Settings come from LPIPS_GATE_* environment variables (see the README)."""
    if ctx.obj is None:  # tests and embedding callers may pass their own Settings
        ctx.obj = Settings()


from gate.commands.db import db  # noqa: E402  (light command groups, registered below `main`)
from gate.commands.service import results, submit, wait  # noqa: E402

main.add_command(db)
main.add_command(submit)
main.add_command(wait)
main.add_command(results)

from gate.commands.gate import alerts, check, gate  # noqa: E402

main.add_command(check)
main.add_command(alerts)
main.add_command(gate)

if __name__ == "__main__":
    sys.exit(main())
