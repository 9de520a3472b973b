"""The `lpips-gate` group. Light commands live in `gate.cli`; engine commands (torch) arrive as
entry-point plugins in the group `lpips_gate.commands`, loaded only when invoked. Services raise
GateError; the group turns it into a message on stderr and exit 2."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from gate.cli.alerts import alerts
from gate.cli.approve import approve
from gate.cli.calibrate import calibrate
from gate.cli.db import db
from gate.cli.judging import check, gate
from gate.cli.runs import results, submit, wait
from gate.cli.serve import serve
from gate.errors import ENGINE_HINT, ENGINE_MODULES, EXIT_ERROR, GateError, error_document
from gate.settings import Settings

PLUGIN_GROUP = "lpips_gate.commands"


class UsageFailure(click.ClickException):
    """Bad input or missing prerequisites: a message on stderr, exit 2, no traceback."""

    exit_code = EXIT_ERROR


class _Cli(click.Group):
    def _plugins(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List every command; a plugin that cannot load says why instead of breaking --help."""
        rows = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
                assert command is not None
                rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
            except Exception as exc:  # noqa: BLE001  (help must render whatever one plugin does)
                rows.append((name, f"(unavailable: {exc})"))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        plugin = self._plugins().get(cmd_name)
        if plugin is None:
            return None
        try:
            loaded: click.Command = plugin.load()
        except ImportError as exc:
            if exc.name not in ENGINE_MODULES:
                raise
            raise UsageFailure(f"'{cmd_name}' needs the engine: {ENGINE_HINT} ({exc})") from exc
        return loaded

    def invoke(self, ctx: click.Context) -> Any:
        """With --json, an outcome without a verdict (bad input, a timeout, a usage error) still prints
        one JSON document on stdout; the message goes to stderr either way."""
        as_json = "--json" in ctx.args
        try:
            return super().invoke(ctx)
        except GateError as exc:
            if as_json:
                click.echo(json.dumps(error_document(str(exc), run=exc.run)))
            raise UsageFailure(str(exc)) from exc
        except click.ClickException as exc:
            if as_json:
                click.echo(json.dumps(error_document(exc.format_message())))
            raise


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lpips-gate", prog_name="lpips-gate")
@click.pass_context
def main(ctx: click.Context) -> None:
    """lpips-gate: a perceptual quality gate for rendered images (LPIPS).

    Settings come from LPIPS_GATE_* environment variables (see the README)."""
    if ctx.obj is None:  # tests and embedding callers may pass their own Settings
        ctx.obj = Settings()


for command in (db, submit, wait, results, check, approve, calibrate, alerts, gate, serve):
    main.add_command(command)
