"""The figures of the reliability scenarios: what each submitted, stored, lost, duplicated and
errored, and how long recovery took. Kept in a JSON file (rewritten after every scenario, so a
crashed run still leaves what it measured) and printed as a table at the end of the run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPORT_ENV = "LPIPS_GATE_RELIABILITY_REPORT"
FINISHED = ("done", "error")
COLUMNS = ("submitted", "stored", "lost", "duplicated", "errored", "recovery_s", "wall_s")


@dataclass(frozen=True)
class Figures:
    """`stored`: comparisons done; `lost`: ones that should have been done and are not (unfinished,
    or an error nobody asked for); `duplicated`: writes of a result beyond the first, counted from
    every worker's "comparison done ... recorded" log lines; `recovery_s`: from the fault until every
    comparison had finished (None without a fault); `wall_s`: from the first message to the end."""

    scenario: str
    submitted: int
    stored: int
    lost: int
    duplicated: int
    errored: int
    recovery_s: float | None
    wall_s: float
    notes: dict = field(default_factory=dict)


def count(
    scenario: str,
    rows: Iterable[tuple[int, str]],
    recorded: Mapping[int, int],
    *,
    expected_errors: Iterable[int] = (),
    recovery_s: float | None,
    wall_s: float,
    **notes,
) -> Figures:
    """Figures from the (id, status) of every submitted comparison and the recorded writes per id."""
    statuses = dict(rows)
    expected = set(expected_errors)
    return Figures(
        scenario=scenario,
        submitted=len(statuses),
        stored=sum(status == "done" for status in statuses.values()),
        lost=sum(status != "done" for i, status in statuses.items() if i not in expected),
        duplicated=sum(max(0, recorded.get(i, 0) - 1) for i in statuses),
        errored=sum(status == "error" for status in statuses.values()),
        recovery_s=None if recovery_s is None else round(recovery_s, 2),
        wall_s=round(wall_s, 2),
        notes=notes,
    )


class Report:
    def __init__(self, path: Path):
        self.path, self.figures = path, []

    def add(self, figures: Figures) -> Figures:
        self.figures.append(figures)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps([asdict(f) for f in self.figures], indent=1) + "\n")
        return figures

    def table(self) -> list[str]:
        width = max([len("scenario"), *(len(f.scenario) for f in self.figures)])
        lines = [f"{'scenario':<{width}}  " + "  ".join(f"{c:>10}" for c in COLUMNS)]
        for f in self.figures:
            values = [_cell(getattr(f, c)) for c in COLUMNS]
            lines.append(f"{f.scenario:<{width}}  " + "  ".join(f"{v:>10}" for v in values))
            if f.notes:
                lines.append(f"{'':<{width}}    " + ", ".join(f"{key}={value}" for key, value in f.notes.items()))
        return lines


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)
