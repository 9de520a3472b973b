"""How often does `gate.drift.detect` cry wolf, and how often does it catch a real shift?

Simulates many seeds of a stable suite (baseline and recent window from one distribution of
realistic LPIPS distances, ~0.1) and of shifted suites (the recent window's distances moved up),
at the policy's window sizes, and reports the alarm rate of each test alone and of the gate:

    python bench/drift_false_alarms.py --seeds 1000 --json drift.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from gate.drift import detect
from gate.policy import DriftPolicy

DISTRIBUTIONS = {
    # median 0.1, a long right tail like real suites
    "lognormal(ln 0.1, 0.35)": lambda rng, n: rng.lognormal(np.log(0.1), 0.35, n),
    # mean 0.1, sd ~0.047, bounded like LPIPS
    "beta(4, 36)": lambda rng, n: rng.beta(4, 36, n),
}
SHIFTS = (0.0, 0.01, 0.02, 0.05)
REASON_PREFIXES = {"ks": "KS ", "psi": "PSI ", "wasserstein": "Wasserstein "}  # as detect words them


def simulate(policy: DriftPolicy, draw, shift: float, seeds: int) -> dict:
    alarms = {"gate": 0, "ks": 0, "psi": 0, "wasserstein": 0}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        baseline = draw(rng, policy.baseline_size)
        recent = draw(rng, policy.window) + shift
        result = detect(baseline, recent, policy)
        alarms["gate"] += result.drifted
        for test, prefix in REASON_PREFIXES.items():
            alarms[test] += any(reason.startswith(prefix) for reason in result.reasons)
    return {test: count / seeds for test, count in alarms.items()}


def run(policy: DriftPolicy, seeds: int) -> list[dict]:
    rows = []
    for name, draw in DISTRIBUTIONS.items():
        for shift in SHIFTS:
            rates = simulate(policy, draw, shift, seeds)
            rows.append({"distribution": name, "shift": shift, **rates})
    return rows


def print_table(rows: list[dict], policy: DriftPolicy, seeds: int) -> None:
    print(
        f"seeds={seeds} window={policy.window} baseline={policy.baseline_size} "
        f"ks_p<{policy.ks_threshold} psi>max({policy.psi_threshold}, noise floor) "
        f"bins={policy.psi_bins} wasserstein>{policy.wasserstein_threshold}"
    )
    print(f"{'distribution':<26}{'shift':>7}{'rate':>16}{'gate':>8}{'ks':>8}{'psi':>8}{'wass':>8}")
    for row in rows:
        kind = "false alarms" if row["shift"] == 0 else "detection"
        print(
            f"{row['distribution']:<26}{row['shift']:>+7.2f}{kind:>16}"
            f"{row['gate']:>8.3f}{row['ks']:>8.3f}{row['psi']:>8.3f}{row['wasserstein']:>8.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    parser.add_argument("--psi-bins", type=int, help="override the policy's PSI bin count")
    parser.add_argument("--wasserstein-threshold", type=float)
    args = parser.parse_args(argv)
    fields = {"psi_bins": args.psi_bins, "wasserstein_threshold": args.wasserstein_threshold}
    policy = DriftPolicy(**{key: value for key, value in fields.items() if value is not None})
    started = time.perf_counter()
    rows = run(policy, args.seeds)
    print_table(rows, policy, args.seeds)
    report = {
        "seeds": args.seeds,
        "policy": policy.model_dump(),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(report))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
