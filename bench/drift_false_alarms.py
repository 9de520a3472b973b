"""How often does `gate.judging.drift.detect` cry wolf, and how soon does it catch a real shift?

Simulates seeds of suites whose distances are realistic LPIPS values (~0.1), judged as the gate
judges them, and reports three things per distribution:

- per check: the alarm rate of one check of a full window against a full baseline, for each test
  alone and for the gate, without a shift (false alarms) and with the window's distances moved up;
- per history: the share of stable histories of `--runs` runs of `--run-size` distances that open a
  false drift alert at least once, checked after every run on the trailing window as the gate does;
- detection delay: after `--runs` stable runs every later run is shifted; how many shifted runs the
  gate takes to alarm (1: the first shifted run), and the share it catches within `--runs` more.

    python bench/drift_false_alarms.py --check-seeds 10000 --seeds 1000 --json drift.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from gate.judging.drift import detect
from gate.judging.policy import DriftPolicy

DISTRIBUTIONS = {
    # median 0.1, a long right tail like real suites
    "lognormal(ln 0.1, 0.35)": lambda rng, n: rng.lognormal(np.log(0.1), 0.35, n),
    # mean 0.1, sd ~0.047, bounded like LPIPS
    "beta(4, 36)": lambda rng, n: rng.beta(4, 36, n),
}
SHIFTS = (0.0, 0.01, 0.02, 0.05)
REASON_PREFIXES = {"ks": "KS ", "psi": "PSI ", "wasserstein": "Wasserstein "}  # as detect words them


def per_check(policy: DriftPolicy, draw, shift: float, seeds: int) -> dict:
    """Alarm rates of one check at the policy's full sizes, per test and for the gate."""
    alarms = {"gate": 0, "ks": 0, "psi": 0, "wasserstein": 0}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        result = detect(draw(rng, policy.baseline_size), draw(rng, policy.window) + shift, policy)
        alarms["gate"] += result.drifted
        for test, prefix in REASON_PREFIXES.items():
            alarms[test] += any(reason.startswith(prefix) for reason in result.reasons)
    return {test: count / seeds for test, count in alarms.items()}


def first_alarm(policy: DriftPolicy, history: np.ndarray, run_size: int, from_run: int) -> int | None:
    """The first run (1-based) from `from_run` on whose check alarms, as the gate checks after each
    run: the newest `window` distances against the `baseline_size` just before them."""
    for run in range(from_run, len(history) // run_size + 1):
        seen = history[: run * run_size]
        recent = seen[-policy.window :]
        baseline = seen[: len(seen) - len(recent)][-policy.baseline_size :]
        if detect(baseline, recent, policy).drifted:
            return run
    return None


def histories(policy: DriftPolicy, draw, seeds: int, runs: int, run_size: int) -> dict:
    """The share of stable histories that alarm at least once, and how many checks each ran."""
    checked = sum(detect_ready(policy, run * run_size) for run in range(1, runs + 1))
    alarmed = sum(
        first_alarm(policy, draw(np.random.default_rng(seed), runs * run_size), run_size, 1) is not None
        for seed in range(seeds)
    )
    return {"runs": runs, "run_size": run_size, "checks": checked, "false_alarm_rate": alarmed / seeds}


def detect_ready(policy: DriftPolicy, seen: int) -> bool:
    """Whether `seen` distances give both the window and the baseline min_samples (a real check)."""
    recent = min(seen, policy.window)
    return min(recent, min(seen - recent, policy.baseline_size)) >= policy.min_samples


def delays(policy: DriftPolicy, draw, shift: float, seeds: int, runs: int, run_size: int) -> dict:
    """Shifted runs until the gate alarms, over the seeds whose stable part stayed quiet."""
    found, quiet = [], 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        stable, shifted = draw(rng, runs * run_size), draw(rng, runs * run_size) + shift
        history = np.concatenate([stable, shifted])
        if first_alarm(policy, stable, run_size, 1) is not None:
            continue  # a false alarm before the shift: no delay to measure
        quiet += 1
        alarm = first_alarm(policy, history, run_size, runs + 1)
        if alarm is not None:
            found.append(alarm - runs)
    return {
        "shift": shift,
        "detected": len(found) / quiet if quiet else None,
        "median_runs": float(np.median(found)) if found else None,
        "mean_runs": float(np.mean(found)) if found else None,
        "histories": quiet,
    }


def run(policy: DriftPolicy, check_seeds: int, seeds: int, runs: int, run_size: int) -> dict:
    report = {"per_check": [], "histories": [], "delays": []}
    for name, draw in DISTRIBUTIONS.items():
        for shift in SHIFTS:
            rates = per_check(policy, draw, shift, check_seeds)
            report["per_check"].append({"distribution": name, "shift": shift, **rates})
        report["histories"].append({"distribution": name, **histories(policy, draw, seeds, runs, run_size)})
        for shift in SHIFTS[1:]:
            report["delays"].append({"distribution": name, **delays(policy, draw, shift, seeds, runs, run_size)})
    return report


def print_tables(report: dict, policy: DriftPolicy, check_seeds: int, seeds: int) -> None:
    print(
        f"check seeds={check_seeds} history seeds={seeds} window={policy.window} "
        f"baseline={policy.baseline_size} min_samples={policy.min_samples} "
        f"ks_p<{policy.ks_threshold} psi>max({policy.psi_threshold}, noise floor at {policy.ks_threshold}) "
        f"bins={policy.psi_bins} wasserstein>{policy.wasserstein_threshold}"
    )
    print(f"\nper check\n{'distribution':<26}{'shift':>7}{'rate':>16}{'gate':>8}{'ks':>8}{'psi':>8}{'wass':>8}")
    for row in report["per_check"]:
        kind = "false alarms" if row["shift"] == 0 else "detection"
        print(
            f"{row['distribution']:<26}{row['shift']:>+7.2f}{kind:>16}"
            f"{row['gate']:>8.4f}{row['ks']:>8.4f}{row['psi']:>8.4f}{row['wasserstein']:>8.4f}"
        )
    print(f"\nstable histories\n{'distribution':<26}{'runs':>6}{'x size':>8}{'checks':>8}{'false alarm rate':>18}")
    for row in report["histories"]:
        print(
            f"{row['distribution']:<26}{row['runs']:>6}{row['run_size']:>8}{row['checks']:>8}"
            f"{row['false_alarm_rate']:>18.4f}"
        )
    print(f"\ndetection delay (runs)\n{'distribution':<26}{'shift':>7}{'detected':>10}{'median':>8}{'mean':>8}")
    for row in report["delays"]:
        median = "-" if row["median_runs"] is None else f"{row['median_runs']:.1f}"
        mean = "-" if row["mean_runs"] is None else f"{row['mean_runs']:.2f}"
        print(f"{row['distribution']:<26}{row['shift']:>+7.2f}{row['detected']:>10.3f}{median:>8}{mean:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-seeds", type=int, default=10000, help="single checks simulated per row")
    parser.add_argument("--seeds", type=int, default=1000, help="histories simulated per row")
    parser.add_argument("--runs", type=int, default=20, help="runs per stable history (and shifted runs after)")
    parser.add_argument("--run-size", type=int, default=10, help="distances per run")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    for option in ("window", "baseline-size", "min-samples", "psi-bins"):
        parser.add_argument(f"--{option}", type=int, help="override the policy's value")
    for option in ("ks-threshold", "wasserstein-threshold"):
        parser.add_argument(f"--{option}", type=float, help="override the policy's value")
    args = parser.parse_args(argv)
    fields = ("window", "baseline_size", "min_samples", "psi_bins", "ks_threshold", "wasserstein_threshold")
    policy = DriftPolicy(**{key: getattr(args, key) for key in fields if getattr(args, key) is not None})
    started = time.perf_counter()
    report = run(policy, args.check_seeds, args.seeds, args.runs, args.run_size)
    print_tables(report, policy, args.check_seeds, args.seeds)
    report = {
        "check_seeds": args.check_seeds,
        "seeds": args.seeds,
        "policy": policy.model_dump(),
        **report,
        "seconds": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(report))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
