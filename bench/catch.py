"""Does the gate catch the render regressions that sampling noise hides, and pass the re-renders a
lighting TD would accept? (issue 13)

Generates the corpus of bench/catch_corpus.py in a temporary folder, migrates a temporary SQLite store
(`lpips-gate db upgrade`), learns the suite's thresholds from the calibration re-renders
(`lpips-gate calibrate REF GOOD... --suite catch --json`), then runs the `check` service, embedded (no
broker), on every good test folder and every regression folder. Reports per regression class the catch
rate (pairs failing), the rules that failed them and how often the reported `where` box overlaps the
damage box; the false alarms on the good test renders; and the baseline: mean LPIPS alone with the
ideal single threshold, at zero false alarms and at the best trade-off (catch rate minus false-alarm
rate), as the `distance` of the same comparisons gives it.

    python bench/catch.py [--quick] [--size 512] [--scenes 10] [--net alex] [--threshold T] [--json PATH]

--threshold T judges by today's single mean-LPIPS threshold instead of calibrating (the baseline
needs only the distances). A full run writes bench/results-catch.json unless --json names another file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from catch_corpus import REGRESSIONS, WHOLE_FRAME, write_corpus

import gate
from gate.judging.policy import PolicySet
from gate.runs.check import CheckRequest, check
from gate.settings import Settings
from gate.vocabulary import NETS

SUITE = "catch"
RESULTS = Path(__file__).parent / "results-catch.json"


def lpips_gate(env: dict[str, str], *args: str) -> str:
    """Run the command as a user would, with this process's `gate`; its stdout."""
    done = subprocess.run([sys.executable, "-m", "gate.cli", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"lpips-gate {' '.join(args)}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done.stdout


def command_env(database_url: str, images: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LPIPS_GATE_")}
    source = str(Path(gate.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (source, env.get("PYTHONPATH"))))
    env.update(LPIPS_GATE_DATABASE_URL=database_url, LPIPS_GATE_IMAGE_ROOT=str(images),
               LPIPS_GATE_DEVICE=args.device, LPIPS_GATE_NET=args.net)
    return env


def pairs_of(summary: dict[str, Any], folder: str) -> list[dict[str, Any]]:
    """A checked run's pairs as the bench keeps them, named by their file inside the folder."""
    return [
        {"file": str(PurePosixPath(pair["cand"]).relative_to(folder)), "verdict": pair["verdict"],
         "distance": pair["distance"], "reasons": pair["reasons"], "where": pair["where"], "scores": pair["scores"]}
        for pair in summary["pairs"]
    ]


def overlaps(where: list[int] | None, damage: list[int]) -> bool:
    """The reported box meets the damage box (IoU > 0), or one contains the other."""
    if where is None:
        return False
    (ax, ay, aw, ah), (bx, by, bw, bh) = where, damage
    meet = min(ax + aw, bx + bw) > max(ax, bx) and min(ay + ah, by + bh) > max(ay, by)
    contains = (ax <= bx and ay <= by and ax + aw >= bx + bw and ay + ah >= by + bh) or (
        bx <= ax and by <= ay and bx + bw >= ax + aw and by + bh >= ay + ah)
    return meet or contains


def tally(reasons: list[list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pair_reasons in reasons:
        for reason in pair_reasons:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def class_row(name: str, pairs: list[dict[str, Any]], boxes: dict[str, list[int] | None]) -> dict[str, Any]:
    caught = [pair for pair in pairs if pair["verdict"] == "fail"]
    localised = name not in WHOLE_FRAME
    located = sum(overlaps(pair["where"], boxes[pair["file"]]) for pair in caught) if localised else None
    distances = [pair["distance"] for pair in pairs if pair["distance"] is not None]
    return {
        "class": name, "pairs": len(pairs), "caught": len(caught), "catch_rate": len(caught) / len(pairs),
        "errors": sum(pair["verdict"] == "error" for pair in pairs), "reasons": tally([p["reasons"] for p in caught]),
        "localised": localised, "located": located,
        "located_rate": None if located is None else located / len(pairs),
        "mean_lpips": {"min": min(distances), "max": max(distances)} if distances else None,
    }


def judged_by(threshold: float, good: list[float], bad: dict[str, list[float]]) -> dict[str, Any]:
    """Mean LPIPS alone at `threshold`: a pair fails when its distance exceeds it."""
    every = [d for distances in bad.values() for d in distances]
    return {
        "threshold": threshold,
        "catch_rate": sum(d > threshold for d in every) / len(every),
        "false_alarm_rate": sum(d > threshold for d in good) / len(good),
        "classes": {name: sum(d > threshold for d in ds) / len(ds) for name, ds in bad.items()},
    }


def mean_lpips_baseline(good: list[float], bad: dict[str, list[float]]) -> dict[str, Any]:
    """The best single threshold on the distance: the largest good distance (no false alarm), and
    the one that maximises catch rate minus false-alarm rate (Youden's J; fewer false alarms on a tie)."""
    candidates = sorted({*good, *(d for distances in bad.values() for d in distances)})
    trials = [judged_by(t, good, bad) for t in candidates]
    best = max(trials, key=lambda row: (row["catch_rate"] - row["false_alarm_rate"], -row["false_alarm_rate"]))
    return {"zero_false_alarms": judged_by(max(good), good, bad), "best": best}


def summarise(manifest: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    classes = [class_row(name, runs[name], manifest["regressions"][name]) for name in REGRESSIONS]
    good = [pair for folder in manifest["test"] for pair in runs[folder]]
    alarms = [pair for pair in good if pair["verdict"] != "pass"]
    bad_pairs = sum(row["pairs"] for row in classes)
    localised = [row for row in classes if row["localised"]]
    good_distances = [pair["distance"] for pair in good if pair["distance"] is not None]
    bad_distances = {name: [p["distance"] for p in runs[name] if p["distance"] is not None] for name in REGRESSIONS}
    return {
        "classes": classes,
        "good": {"pairs": len(good), "false_alarms": len(alarms), "false_alarm_rate": len(alarms) / len(good),
                 "reasons": tally([pair["reasons"] for pair in alarms]),
                 "mean_lpips": {"min": min(good_distances), "max": max(good_distances)}},
        "overall": {
            "pairs": bad_pairs, "caught": sum(row["caught"] for row in classes),
            "catch_rate": sum(row["caught"] for row in classes) / bad_pairs,
            "classes_fully_caught": sum(row["caught"] == row["pairs"] for row in classes),
            "located_rate": sum(row["located"] for row in localised) / sum(row["pairs"] for row in localised),
        },
        "mean_lpips_baseline": mean_lpips_baseline(good_distances, bad_distances),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lpips-gate-catch-") as tmp:
        images = Path(tmp) / "images"
        manifest = write_corpus(images, size=args.size, scenes=args.scenes, calib=args.calib, test=args.test)
        generated = time.perf_counter()
        database_url = f"sqlite:///{Path(tmp) / 'gate.db'}"
        env = command_env(database_url, images, args)
        lpips_gate(env, "db", "upgrade")
        calibration = None
        if args.threshold is None:
            calib = [str(images / folder) for folder in manifest["calib"]]
            calibration = json.loads(lpips_gate(env, "calibrate", str(images / "ref"), *calib, "--suite", SUITE,
                                                "--json"))
        calibrated = time.perf_counter()
        settings = Settings(database_url=database_url, image_root=images, broker_url=None, webhook_url=None,
                            device=args.device, net=args.net, log_level="ERROR")  # the table is the output
        runs = {}
        for folder in [*manifest["test"], *REGRESSIONS]:
            request = CheckRequest(images / "ref", images / folder, SUITE, args.threshold, PolicySet())
            runs[folder] = pairs_of(check(settings, request), folder)
        checked = time.perf_counter()
    checked_pairs = sum(len(pairs) for pairs in runs.values())
    return {
        "net": args.net, "size": args.size, "scenes": args.scenes, "device": args.device,
        "calibration_renders": args.calib, "test_renders": args.test,
        "judged_by": "calibration" if calibration is not None else "threshold", "threshold": args.threshold,
        "calibration": calibration,
        **summarise(manifest, runs),
        "pairs_checked": checked_pairs,
        "seconds": {"corpus": round(generated - started, 2), "calibrate": round(calibrated - generated, 2),
                    "check": round(checked - calibrated, 2)},
        "runs": runs,
    }


def _range(span: dict[str, float] | None) -> str:
    return "-" if span is None else f"{span['min']:.4f}..{span['max']:.4f}"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in counts.items()) or "-"


def print_table(report: dict[str, Any]) -> None:
    judged = ("calibrated thresholds" if report["calibration"] is not None
              else f"one mean-LPIPS threshold {report['threshold']}")
    print(f"catch: {report['net']} {report['size']}px {report['device']}, {report['scenes']} scenes, "
          f"{report['calibration_renders']} calibration + {report['test_renders']} test re-renders each, "
          f"judged by {judged}")
    baseline = report["mean_lpips_baseline"]
    zero, best = baseline["zero_false_alarms"], baseline["best"]
    print(f"{'class':<17}{'caught':>8}{'located':>9}  {'failed rules':<30}{'mean LPIPS':>16}"
          f"{'alone@0FA':>11}{'alone@best':>11}")
    for row in report["classes"]:
        located = "-" if row["located"] is None else f"{row['located']}/{row['pairs']}"
        print(f"{row['class']:<17}{row['caught']:>4}/{row['pairs']:<3}{located:>9}  {_reasons(row['reasons']):<30}"
              f"{_range(row['mean_lpips']):>16}{zero['classes'][row['class']]:>11.0%}"
              f"{best['classes'][row['class']]:>11.0%}")
    good = report["good"]
    print(f"{'good re-renders':<17}{good['false_alarms']:>4}/{good['pairs']:<3}{'':>9}  "
          f"{_reasons(good['reasons']):<30}{_range(good['mean_lpips']):>16}{zero['false_alarm_rate']:>11.0%}"
          f"{best['false_alarm_rate']:>11.0%}   (false alarms)")
    overall = report["overall"]
    print(f"gate: caught {overall['caught']}/{overall['pairs']} ({overall['catch_rate']:.0%}), "
          f"{overall['classes_fully_caught']}/{len(report['classes'])} classes fully, "
          f"{good['false_alarms']} false alarms in {good['pairs']}, "
          f"localised damage located {overall['located_rate']:.0%}")
    print(f"mean LPIPS alone, ideal threshold: {zero['threshold']:.4f} (no false alarm) catches "
          f"{zero['catch_rate']:.0%}; {best['threshold']:.4f} (best catch - false alarms) catches "
          f"{best['catch_rate']:.0%} with {best['false_alarm_rate']:.0%} false alarms")
    seconds = report["seconds"]
    print(f"{report['pairs_checked']} pairs checked in {seconds['check']}s (corpus {seconds['corpus']}s, "
          f"calibration {seconds['calibrate']}s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small run that checks the bench works (CI): "
                        "256px, 2 scenes, 3 calibration and 2 test re-renders")
    parser.add_argument("--size", type=int, default=512, help="frame side in pixels")
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--calib", type=int, default=4, help="good re-renders per scene to calibrate on")
    parser.add_argument("--test", type=int, default=4, help="good re-renders per scene to count false alarms on")
    parser.add_argument("--net", default="alex", choices=NETS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threshold", type=float, help="judge by this one mean-LPIPS threshold, no calibration")
    parser.add_argument("--json", type=Path, help=f"write the report here (a full run: {RESULTS.name})")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.scenes, args.calib, args.test = 256, 2, 3, 2
    report = run(args)
    print_table(report)
    out = args.json or (None if args.quick else RESULTS)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
