"""`lpips-gate alerts`: what the gate raised."""

from __future__ import annotations

from typing import Any

import click

from gate.cli.runs import echo
from gate.settings import Settings


@click.command()
@click.option("--suite", default=None, help="Only this suite's alerts.")
@click.option("--open", "open_only", is_flag=True, help="Only alerts still open.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, oldest first.")
@click.pass_obj
def alerts(settings: Settings, suite: str | None, open_only: bool, as_json: bool) -> None:
    """List the alerts the gate raised, oldest first."""
    from gate.alerts.store import alert_rows
    from gate.store import session_scope
    from gate.store.opening import open_store

    with open_store(settings) as engine, session_scope(engine) as session:
        rows = alert_rows(session, suite_name=suite, open_only=open_only)
    echo(as_json, rows, "\n".join(_alert_line(row) for row in rows))


def _alert_line(row: dict[str, Any]) -> str:
    where = " ".join(f"{key}={value}" for key, value in sorted(row["labels"].items()) if key != "suite")
    value = "-" if row["value"] is None else f"{row['value']:.4g}"
    limit = "-" if row["threshold"] is None else f"{row['threshold']:.4g}"
    return f"{row['state']:<8} {row['rule']:<9} {row['suite']}  {value} vs {limit}  {where}  since {row['opened_at']}"
