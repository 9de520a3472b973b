"""Throughput and memory of lpips-gate against the bare reference `lpips` model, same process,
same weights, same generated pairs. Prints a table and writes JSON.

    python bench/compare.py [--quick] [--json bench.json] [--nets alex vgg] [--sizes 64 256 1024] [--no-service]

(a) `compare --pairs` path, decoding included (Engine.compare_files over PNG files), and the cost of the
    spatial scores and pixel guards: the same engine with them off (`Engine.with_scores`, a switch only
    this bench turns), as the throughput ratio scored / unscored (target: >= 0.9)
(b) one reference against many candidates (the reference-feature cache)
(c) the service end to end, submit -> rows stored, one worker (bench/service.py: needs the local
    PostgreSQL and Redis; the first net at 256px, or 64px with --quick)
bf16/fp16, in rounds interleaved with both fp32 sides, with their largest deviation from fp32, and
(d) peak memory (RSS, each side measured in a fresh subprocess) at the largest size. Both sides share
glibc's default allocator settings unless --keep-freed-memory gives both the worker's (see
worker.tuning.keep_freed_memory)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

warnings.filterwarnings("ignore")  # the reference package's torchvision deprecation notes

import lpips  # noqa: E402

from gate.settings import Settings  # noqa: E402
from worker import weights  # noqa: E402
from worker.engine import Engine, emulated_precision  # noqa: E402
from worker.tuning import for_device, keep_freed_memory  # noqa: E402


def make_pairs(folder: Path, n: int, size: int, *, one_ref: bool = False, seed: int = 0) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        ref = folder / f"ref_{size}_{0 if one_ref else i}.png"
        if not ref.exists():
            base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(base).save(ref)
        noisy = np.asarray(Image.open(ref)).astype(np.int16) + rng.integers(-20, 21, (size, size, 3))
        cand = folder / f"cand_{size}_{seed}_{i}.png"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(cand)
        pairs.append((ref, cand))
    return pairs


def load_tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1


def reference_model(net: str, settings: Settings) -> torch.nn.Module:
    model = lpips.LPIPS(pnet_rand=True, net=net, verbose=False)
    state, _ = weights.load(settings.weights_dir, net)
    for key in list(model.net.state_dict()):
        _slice, index, rest = key.split(".", 2)
        model.net.state_dict()[key].copy_(state[f"features.{index}.{rest}"])
    return model.eval()


def rates(fns, pairs: int, repeat: int) -> list[float]:
    """Pairs per second of each function: the median of `repeat` rounds that call every function
    in turn, after a warm-up call each (allocator, oneDNN primitives). Interleaved, so a busy moment
    of a shared machine slows both sides of a comparison, not one."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [pairs / statistics.median(spent) for spent in times]


def bare_reference(model, pairs, batch: int, device: str = "cpu") -> list[float]:
    """The reference model on pre-decoded tensors already on the device, `batch` pairs a call: its best case."""
    model = model.to(device)
    refs = [load_tensor(r).to(device) for r, _ in pairs]
    cands = [load_tensor(c).to(device) for _, c in pairs]
    out = []

    def run():
        out.clear()
        with torch.no_grad():
            for i in range(0, len(pairs), batch):
                d = model(torch.stack(refs[i:i + batch]), torch.stack(cands[i:i + batch]))
                out.extend(d.flatten().tolist())
    return run, out


def ours(settings, net, pairs, precision="fp32", device="cpu", scores=True):
    engine = Engine.from_settings(settings, net=net, precision=precision, device=device)
    engine.with_scores = scores
    out = []

    def run():
        out.clear()
        if engine.cache is not None:
            engine.cache = type(engine.cache)(settings.feature_cache_bytes)  # cold cache each repeat
        out.extend(o.distance for o in engine.compare_files(pairs))
    return run, out


def peak_rss_mb(side: str, net: str, size: int, n: int) -> float:
    """Peak resident memory of a fresh process doing one side's work (VmHWM: ru_maxrss would carry
    this process's own peak across exec); ours keeps freed memory, as the worker and the CLI do."""
    code = f"""
import sys, tempfile; sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
import compare as b
s = b.Settings(); d = Path(tempfile.mkdtemp()); pairs = b.make_pairs(d, {n}, {size})
if {side!r} == 'reference':
    fn, _ = b.bare_reference(b.reference_model({net!r}, s), pairs, 8)
else:
    b.keep_freed_memory()
    fn, _ = b.ours(s, {net!r}, pairs)
fn()
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run that checks the bench works (CI)")
    parser.add_argument("--nets", nargs="+", default=["alex", "vgg"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="*", default=["bf16"], help="lower precisions to measure (none: skip)")
    parser.add_argument("--no-service", action="store_true", help="skip (c), the service end to end")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="this process (both sides) keeps freed memory, as the worker and the CLI do")
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    for_device(torch.device(args.device))  # both sides in true fp32 (no TF32 on CUDA), as the engine runs it
    settings = Settings(max_batch=8)  # the batch the reference runs with
    sizes = [64] if args.quick else args.sizes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for net in args.nets:
            reference = reference_model(net, settings)
            for size in sizes:
                n = 4 if args.quick else (64 if size <= 256 else 4)  # several decode windows, as in real use
                repeat = 1 if args.quick else (5 if size <= 256 else 1)
                pairs = make_pairs(folder, n, size)
                ref_run, ref_out = bare_reference(reference, pairs, 8, args.device)
                fp32_run, fp32_out = ours(settings, net, pairs, device=args.device)
                unscored_run, _ = ours(settings, net, pairs, device=args.device, scores=False)
                lows = [ours(settings, net, pairs, precision=p, device=args.device) for p in args.precisions]
                ref_rate, fp32_rate, unscored_rate, *low_rates = rates(
                    [ref_run, fp32_run, unscored_run, *(run for run, _ in lows)], n, repeat)
                row = {"net": net, "size": size, "pairs": n, "device": args.device,
                       "keep_freed_memory": args.keep_freed_memory,
                       "reference_pairs_s": ref_rate, "ours_pairs_s": fp32_rate,
                       "ours_unscored_pairs_s": unscored_rate, "scores_throughput_ratio": fp32_rate / unscored_rate}
                row["max_abs_diff_vs_reference"] = float(np.max(np.abs(np.array(fp32_out) - ref_out)))
                for precision, (_, low_out), low_rate in zip(args.precisions, lows, low_rates):
                    row[f"{precision}_pairs_s"] = low_rate
                    row[f"{precision}_max_abs_diff_vs_fp32"] = float(np.max(np.abs(np.array(low_out) - fp32_out)))
                    row[f"{precision}_emulated"] = emulated_precision(precision, torch.device(args.device)) is not None
                n_one = 64 if not args.quick else 4
                one = make_pairs(folder, n_one, size, one_ref=True, seed=1) if size <= 256 else None
                if one:
                    one_ref_run, _ = bare_reference(reference, one, 8, args.device)
                    one_ours_run, _ = ours(settings, net, one, device=args.device)
                    row["one_ref_reference_pairs_s"], row["one_ref_ours_pairs_s"] = rates(
                        [one_ref_run, one_ours_run], len(one), repeat
                    )
                if size == max(sizes) and not args.quick and args.device == "cpu":
                    row["reference_peak_rss_mb"] = peak_rss_mb("reference", net, size, n)
                    row["ours_peak_rss_mb"] = peak_rss_mb("ours", net, size, n)
                rows.append(row)
                print_row(row)
    service_row = None
    if not args.no_service and args.device == "cpu":
        import service  # imports this module: loaded only when (c) runs

        service_row = service.measure(net=args.nets[0], size=64 if args.quick else 256,
                                      n=8 if args.quick else 64, repeat=1 if args.quick else 3)
        service.print_row(service_row)
    result = {"engine": rows, "service": service_row}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def print_row(row: dict) -> None:
    def ratio(a: str, b: str) -> str:
        return f"{row[a] / row[b]:.2f}x" if a in row else "-"

    low = "".join(f"{p} {row[p + '_pairs_s']:7.3g}/s ({ratio(p + '_pairs_s', 'reference_pairs_s')}, "
                  f"max|d-fp32| {row[p + '_max_abs_diff_vs_fp32']:.4f}{', emulated' * row[p + '_emulated']})  "
                  for p in ("bf16", "fp16") if p + "_pairs_s" in row)
    peak = (f"peak MB {row['ours_peak_rss_mb']:.0f} vs {row['reference_peak_rss_mb']:.0f}  "
            if "ours_peak_rss_mb" in row else "")
    print(f"{row['net']:5} {row['size']:5}px  reference {row['reference_pairs_s']:7.3g}/s  "
          f"ours {row['ours_pairs_s']:7.3g}/s ({ratio('ours_pairs_s', 'reference_pairs_s')})  {low}"
          f"one-ref ({ratio('one_ref_ours_pairs_s', 'one_ref_reference_pairs_s')})  "
          f"scores ({ratio('ours_pairs_s', 'ours_unscored_pairs_s')} of unscored)  {peak}"
          f"|d-ref| {row['max_abs_diff_vs_reference']:.1e}", flush=True)


if __name__ == "__main__":
    main()
