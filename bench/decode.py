"""The pipeline at scale, decode included: lpips-gate with decoding in-process and in 1..N decode
processes (worker.decoding), against the bare reference `lpips` model on tensors already on the device,
in the same run, on the same generated PNG pairs. Prints a table and writes JSON.

    python bench/decode.py [--quick] [--device cpu|cuda] [--nets alex] [--sizes 64 256]
                           [--pairs 256 128] [--processes 0 1 2] [--precisions fp32 bf16] [--json out.json]

Rates are pairs per second, the median of `--repeat` rounds that run every side in turn after one
warm-up each (a busy moment of a shared machine slows both sides, not one). The reference runs at each
of `--ref-batches` and the best is kept: its own best case. On CUDA the GPU's utilisation is sampled
(nvidia-smi, every 100 ms) and averaged over the rounds of each side of ours."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import compare as bench  # noqa: E402

from gate.settings import Settings  # noqa: E402
from worker import decoding  # noqa: E402
from worker.engine import Engine, emulated_precision  # noqa: E402
from worker.tuning import for_device, tune_process  # noqa: E402


class GpuSampler:
    """nvidia-smi's utilisation.gpu every 100 ms, with the time each sample arrived."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self.process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line.split(",")[0])))

    def mean_during(self, spans: list[tuple[float, float]]) -> float | None:
        inside = [u for t, u in self.samples if any(a <= t <= b for a, b in spans)]
        return statistics.fmean(inside) if inside else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def timed(fns: list, pairs: int, repeat: int) -> tuple[list[float], list[list[tuple[float, float]]]]:
    """Pairs per second of each function (median of `repeat` interleaved rounds) and when each ran."""
    for fn in fns:
        fn()
    spans: list[list[tuple[float, float]]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, spans):
            start = time.perf_counter()
            fn()
            spent.append((start, time.perf_counter()))
    return [pairs / statistics.median(b - a for a, b in spent) for spent in spans], spans


def engine_side(settings: Settings, net: str, pairs, size: int, *, precision: str, device: str, processes: int):
    """Our side's run, its distances, and the pairs it puts in one pass at `size` (CPU packing included)."""
    engine = Engine.from_settings(settings.model_copy(update={"decode_processes": processes}), net=net,
                                  precision=precision, device=device)
    out: list[float] = []

    def run() -> None:
        if engine.cache is not None:
            engine.cache = type(engine.cache)(settings.feature_cache_bytes)  # cold cache each round
        out[:] = [o.distance for o in engine.compare_files(pairs)]
    return run, out, engine.batch_limit((3, size, size))


def measure(args, settings: Settings, net: str, size: int, n: int, folder: Path, sampler: GpuSampler | None) -> dict:
    pairs = bench.make_pairs(folder, n, size)
    reference = bench.reference_model(net, settings)
    ref_sides, batches = [], []
    tried = args.ref_batches or ([8, 32, 128] if args.device == "cpu" else [32, 128, 512] if size <= 256
                                 else [8, 16, 32, 64])
    for batch in tried:
        side = bench.bare_reference(reference, pairs, batch, args.device)
        try:
            side[0]()  # a batch the device cannot hold is left out of the reference's best
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            continue
        ref_sides.append(side)
        batches.append(batch)
    sides = {(p, k): engine_side(settings, net, pairs, size, precision=p, device=args.device, processes=k)
             for p in args.precisions for k in args.processes}
    rates, spans = timed([run for run, _ in ref_sides] + [run for run, _, _ in sides.values()], n, args.repeat)
    best = int(np.argmax(rates[:len(ref_sides)]))
    ref_out = np.array(ref_sides[best][1])
    row: dict = {"net": net, "size": size, "pairs": n, "device": args.device, "repeat": args.repeat,
                 "cores": len(__import__("os").sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                 "reference_batch": batches[best], "reference_pairs_s": rates[best],
                 "reference_pairs_s_by_batch": dict(zip(map(str, batches), rates[:len(ref_sides)])),
                 "ours": []}
    fp32 = {k: np.array(out) for (p, k), (_, out, _) in sides.items() if p == "fp32"}
    for ((precision, processes), (_, out, batch)), rate, span in zip(sides.items(), rates[len(ref_sides):],
                                                                     spans[len(ref_sides):]):
        side = {"precision": precision, "decode_processes": processes, "batch": batch, "pairs_s": rate,
                "ratio": rate / rates[best],
                "max_abs_diff_vs_reference": float(np.max(np.abs(np.array(out) - ref_out))),
                "emulated": emulated_precision(precision, torch.device(args.device)) is not None}
        if processes in fp32:
            side["max_abs_diff_vs_fp32"] = float(np.max(np.abs(np.array(out) - fp32[processes])))
        if sampler is not None:
            side["gpu_busy_pct"] = sampler.mean_during(span)
        row["ours"].append(side)
    return row


def print_row(row: dict) -> None:
    by_batch = ", ".join(f"{rate:.4g}/s at {batch}" for batch, rate in row["reference_pairs_s_by_batch"].items())
    print(f"{row['net']:5} {row['size']:5}px x{row['pairs']:<4} reference {row['reference_pairs_s']:8.4g}/s "
          f"(batch {row['reference_batch']}; {by_batch})", flush=True)
    for side in row["ours"]:
        busy = f"  GPU busy {side['gpu_busy_pct']:.0f}%" if side.get("gpu_busy_pct") is not None else ""
        print(f"      {side['precision']:5} decode processes {side['decode_processes']}  {side['pairs_s']:8.4g}/s "
              f"({side['ratio']:.2f}x)  batch {side['batch']}  max|d-ref| {side['max_abs_diff_vs_reference']:.1e}"
              f"{'  (emulated)' * side['emulated']}{busy}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run that checks the bench works (CI)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--nets", nargs="+", default=["alex"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--pairs", nargs="+", type=int,
                        help="pairs per size (default: 256 at 64px, 128 at 256px, 64 above)")
    parser.add_argument("--processes", nargs="+", type=int, default=[0, 1, 2], help="decode processes (0: in-process)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--ref-batches", nargs="+", type=int,
                        help="reference batch sizes tried (default: 8, 32 and 128 on the CPU; on CUDA 32-512, "
                             "8-64 above 256px)")
    parser.add_argument("--max-batch", type=int, help="ours: pairs per forward pass (default: the settings')")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    tune_process()  # ours as the worker and `compare` run it: the reference shares the process and its setting
    for_device(torch.device(args.device))
    updates = {"max_batch": args.max_batch, "cuda_max_batch": args.max_batch} if args.max_batch else {}
    settings = Settings(**updates)
    if args.quick:
        args.sizes, args.pairs, args.repeat, args.ref_batches = [64], [8], 1, args.ref_batches or [8]
    counts = args.pairs or [256 if s <= 64 else 128 if s <= 256 else 64 for s in args.sizes]
    sampler = GpuSampler() if args.device == "cuda" and shutil.which("nvidia-smi") else None
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for net in args.nets:
                for size, n in zip(args.sizes, counts):
                    rows.append(measure(args, settings, net, size, n, Path(tmp), sampler))
                    print_row(rows[-1])
                    if args.json:  # after every row: a run cut short by its time limit keeps what it measured
                        args.json.write_text(json.dumps(rows, indent=1))
    finally:
        if sampler is not None:
            sampler.stop()
        decoding.shutdown()


if __name__ == "__main__":
    main()
