"""Where a pair's time goes on the CPU: the pipeline (decoding in-process) taken apart on the same pairs,
in the same run, against the bare reference on tensors. Prints a table and writes JSON.

    python bench/budget.py [--quick] [--sizes 64 256] [--pairs 256 64] [--precisions fp32 bf16] [--json out.json]

Sides, each in pairs per second and milliseconds per pair (median of `--repeat` interleaved rounds, after
one warm-up each):
  reference   the bare `lpips` model on pre-decoded tensors, at its best of `--ref-batches`
  trunk       our convolutions alone on the same tensors (scaled, both images of every pair), at the engine's
              pass size: the part the reference runs too
  network     ours on the same tensors: features, layer statistics and distances, at the engine's pass size
  decode      every file decoded, checked and hashed, one after another in one thread
  unscored    the pipeline from files without the spatial scores and pixel guards
  pipeline    the pipeline from files, as `compare --pairs` runs it but decoding in-process
network + decode spread over the cores + scores (pipeline - unscored, so as noisy as two sides) estimates the
fastest the pipeline could run on these cores, if the network kept them all busy: `bound` is the reference's
time over that sum. The trunk's GFLOP/s is set beside those of one wide 3x3 convolution in the same precision,
timed in the same rounds: the rate these cores reach on the trunk's kind of work, so how much faster the
trunk could run at all."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
import compare as bench  # noqa: E402

from gate.settings import Settings  # noqa: E402
from worker import pixels  # noqa: E402
from worker.engine import Engine  # noqa: E402
from worker.perceptual.metric import PRECISIONS  # noqa: E402
from worker.tuning import for_device, tune_process  # noqa: E402

WIDE = 512  # channels of the probe convolution (8 images, 32x32): wide enough for oneDNN's full rate
WIDE_GFLOP = 2 * 8 * 32 * 32 * WIDE * WIDE * 9 / 1e9


def measure(args, settings: Settings, size: int, n: int, precision: str, folder: Path) -> dict:
    pairs = bench.make_pairs(folder, n, size)
    reference = bench.reference_model("alex", settings)
    by_batch = {batch: bench.bare_reference(reference, pairs, batch) for batch in args.ref_batches}
    best = max(by_batch, key=lambda batch: bench.rates([by_batch[batch][0]], n, 1)[0])
    engine = Engine.from_settings(settings.model_copy(update={"decode_processes": 0}), net="alex", precision=precision,
                                   device="cpu")
    refs = [bench.load_tensor(ref) for ref, _ in pairs]
    cands = [bench.load_tensor(cand) for _, cand in pairs]
    step = engine.batch_limit((3, size, size))
    model, dtype = engine.model, PRECISIONS[precision] or torch.float32

    def passes():
        for start in range(0, n, step):
            yield torch.stack(refs[start:start + step]), torch.stack(cands[start:start + step])

    def trunk() -> None:
        for ref_batch, cand_batch in passes():
            model.activations(torch.cat([ref_batch, cand_batch]))

    with FlopCounterMode(display=False) as counted:
        trunk()
    wide = torch.randn(8, WIDE, 32, 32, dtype=dtype).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(WIDE, WIDE, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def wide_conv() -> None:
        with torch.inference_mode():
            F.conv2d(wide, kernel, padding=1)

    def network() -> None:
        for ref_batch, cand_batch in passes():
            model.run(ref_batch, cand_batch)

    def decode() -> None:
        for ref, cand in pairs:
            pixels.decode_hashed(ref, max_pixels=settings.max_pixels)
            pixels.decode_hashed(cand, max_pixels=settings.max_pixels, keep_nonfinite=True)

    distances: list[float] = []

    def pipeline(scores: bool):
        def run() -> None:
            engine.with_scores = scores
            engine.cache = type(engine.cache)(settings.feature_cache_bytes)  # cold cache each round
            distances[:] = [outcome.distance for outcome in engine.compare_files(pairs)]
        return run

    sides = {"reference": by_batch[best][0], "trunk": trunk, "network": network, "decode": decode,
             "unscored": pipeline(False), "pipeline": pipeline(True)}
    *rates, wide_rate = bench.rates([*sides.values(), wide_conv], n, args.repeat)
    ms = {name: 1e3 / rate for name, rate in zip(sides, rates)}
    trunk_gflop = counted.get_total_flops() / n / 1e9
    scores_ms = max(0.0, ms["pipeline"] - ms["unscored"])
    cores = len(os.sched_getaffinity(0))
    parts_ms = ms["network"] + ms["decode"] / cores + scores_ms
    return {"net": "alex", "size": size, "pairs": n, "precision": precision, "repeat": args.repeat,
            "cores": cores, "reference_batch": best, "engine_batch": step,
            "ms_per_pair": ms, "scores_ms": scores_ms, "parts_ms": parts_ms, "trunk_gflop_per_pair": trunk_gflop,
            "trunk_gflops": trunk_gflop * 1e3 / ms["trunk"], "wide_conv_gflops": WIDE_GFLOP * wide_rate / n,
            "ratio": ms["reference"] / ms["pipeline"], "bound": ms["reference"] / parts_ms,
            "max_abs_diff_vs_reference": max(abs(a - b) for a, b in zip(distances, by_batch[best][1], strict=True))}


def print_row(row: dict) -> None:
    print(f"alex {row['size']}px x{row['pairs']} {row['precision']}: reference batch {row['reference_batch']}, "
          f"ours {row['engine_batch']} pairs a pass, {row['cores']} cores", flush=True)
    for name, ms in row["ms_per_pair"].items():
        print(f"  {name:9} {1e3 / ms:8.4g} pairs/s  {ms:7.3f} ms/pair", flush=True)
    print(f"  scores {row['scores_ms']:.3f} ms/pair; network + decode over the cores + scores "
          f"{row['parts_ms']:.3f} ms/pair: pipeline {row['ratio']:.2f}x the reference, bound {row['bound']:.2f}x",
          flush=True)
    print(f"  trunk {row['trunk_gflop_per_pair']:.3f} GFLOP/pair at {row['trunk_gflops']:.0f} GFLOP/s; "
          f"a {WIDE}-channel 3x3 convolution {row['wide_conv_gflops']:.0f} GFLOP/s in {row['precision']}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run that checks the bench works (CI)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--pairs", nargs="+", type=int, help="pairs per size (default: 256 at 64px, 64 above)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--ref-batches", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    tune_process()
    for_device(torch.device("cpu"))
    if args.quick:
        args.sizes, args.pairs, args.repeat, args.ref_batches = [64], [8], 1, [8]
    counts = args.pairs or [256 if size <= 64 else 64 for size in args.sizes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, n in zip(args.sizes, counts):
            for precision in args.precisions:
                rows.append(measure(args, Settings(), size, n, precision, Path(tmp)))
                print_row(rows[-1])
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
