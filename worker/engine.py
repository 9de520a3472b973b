"""Files in, distances out: decoding, batching pairs of one size into one forward pass, and the
reference-feature cache. The CLI, the Celery tasks and the embedded mode all go through here."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import torch

from worker import images, tuning, weights
from worker.perceptual import LPIPS, Features
from worker.perceptual.cache import FeatureCache
from worker.science.trained import resolve_heads


@dataclass
class Outcome:
    """One pair's result, or the reason it has none."""

    ref: str
    cand: str
    distance: float | None = None
    layers: list[dict] = field(default_factory=list)
    map: torch.Tensor | None = None  # (H, W)
    error: str | None = None
    decode_ms: float = 0.0
    model_ms: float = 0.0


@dataclass
class _Decoded:
    index: int
    ref: torch.Tensor
    cand: torch.Tensor
    ref_key: str  # reference content and size: the feature-cache key
    pair_key: str  # both sides' content: identical pairs are computed once
    decode_ms: float


NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def emulated_precision(precision: str, device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Why `precision` will be slow here, or None: a CPU without instructions for it (by its
    /proc/cpuinfo flags) has oneDNN emulate it, several times slower than fp32."""
    if device.type != "cpu" or precision not in NATIVE_CPU_FLAGS:
        return None
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return None  # not Linux: unknown, so say nothing
    wanted = NATIVE_CPU_FLAGS[precision]
    if any(flag in flags for flag in wanted):
        return None
    return f"{precision} on this CPU is emulated (no {' or '.join(wanted)}): expect it slower than fp32"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def build_model(settings, *, net: str, version: str = "0.1", precision: str = "fp32", lin: bool = True,
                normalise: str = "l2", reduction: str = "mean", random_weights: bool = False) -> tuple[LPIPS, str]:
    """The metric with provisioned, sha256-checked weights, and the weights version to store with its
    results: the trunk's id, plus `+heads:<sha256[:12]>` when `version` names trained heads.
    `random_weights` (version "random") is for tests whose distances do not matter; no setting reaches it."""
    if random_weights:
        state, trunk_version = None, "random"
    else:
        state, provisioned = weights.load(settings.weights_dir, net)
        trunk_version = provisioned.version
    heads, suffix = resolve_heads(settings.weights_dir, net, version, trunk_version) if lin else (None, "")
    model = LPIPS(net, version, trunk_state=state, heads_state=heads, lin=lin, normalise=normalise,
                  reduction=reduction, precision=precision, random_weights=random_weights)
    return model, trunk_version + suffix


def decode_threads_for(device: torch.device) -> int:
    """A GPU waits on decoding, so every core (up to 16) decodes; on the CPU the network needs the
    cores, and two threads decode the next window while it runs."""
    return min(16, len(os.sched_getaffinity(0))) if device.type == "cuda" else 2


class Engine:
    """Pairs of files in, `Outcome`s out. The constructor changes no process-wide state; `from_settings`,
    the factory every caller uses, applies `tuning.for_device` (fp32 on CUDA without TF32).

    `before_batch`, when set, is called with the candidate paths of each forward pass just before it
    runs; what it raises fails that pass as the network would (the tests inject faults through it)."""

    def __init__(self, model: LPIPS, *, weights_version: str, device: torch.device, max_pixels: int,
                 max_batch: int, cache: FeatureCache | None = None, resize: images.Resize = "none",
                 exposure: float = 0.0, decode_threads: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        images.check_resize(resize)
        self.model = model.to(device)
        self.device, self.weights_version = device, weights_version
        self.max_pixels, self.max_batch, self.resize, self.exposure = max_pixels, max_batch, resize, exposure
        self.cache = cache
        self.min_size = images.MIN_SIZE[model.net]
        self.before_batch: Callable[[list[str]], None] | None = None
        self._pool = ThreadPoolExecutor(decode_threads or decode_threads_for(device), thread_name_prefix="decode")

    @classmethod
    def from_settings(cls, settings, *, net: str | None = None, version: str | None = None,
                      precision: str | None = None, device: str | None = None, resize: images.Resize = "none",
                      exposure: float = 0.0, **options) -> Engine:
        model, version_id = build_model(settings, net=net or settings.net, version=version or settings.version,
                                        precision=precision or settings.precision, **options)
        resolved = resolve_device(device or settings.device)
        tuning.for_device(resolved)
        return cls(model, weights_version=version_id, device=resolved,
                   max_pixels=settings.max_pixels, max_batch=settings.max_batch,
                   cache=FeatureCache(settings.feature_cache_bytes), resize=resize, exposure=exposure)

    @property
    def decode_window(self) -> int:
        """Pairs decoded and computed together: one batch, so the next window decodes while this one
        computes. A pass that fails, fails for a pair of the window being computed."""
        return self.max_batch

    def _decode(self, index: int, ref: Path, cand: Path, refs: _Once[Path, tuple[torch.Tensor, str]]) -> _Decoded:
        start = time.perf_counter()
        ref_image, ref_hash = refs(ref)
        cand_image, cand_hash = self._load(cand)
        a, b = images.match_sizes(ref, cand, ref_image, cand_image, resize=self.resize)
        key = f"{ref_hash}:{tuple(a.shape)}"
        pair_key = f"{key}:{cand_hash}:{tuple(b.shape)}"
        return _Decoded(index, a, b, key, pair_key, (time.perf_counter() - start) * 1e3)

    def _load(self, path: Path) -> tuple[torch.Tensor, str]:
        """Decoded pixels and the sha256 of the file: its identity for the cache and for dedup."""
        image = images.load_image(path, max_pixels=self.max_pixels, min_size=self.min_size, exposure=self.exposure)
        return image, images.content_hash(path)

    def compare_files(self, pairs: Sequence[tuple[Path, Path]], *, with_map: bool = False) -> Iterator[Outcome]:
        """Outcomes in input order; a bad pair gets its error and the rest go on. Decoding of the
        next window overlaps the forward passes of this one."""
        window = self.decode_window
        chunks = [list(range(i, min(i + window, len(pairs)))) for i in range(0, len(pairs), window)]

        def submit(chunk: list[int]) -> list[Future]:
            refs = _Once(self._load)  # a reference shared by pairs of a window is decoded once
            return [self._pool.submit(self._decode, i, Path(pairs[i][0]), Path(pairs[i][1]), refs) for i in chunk]

        pending = submit(chunks[0]) if chunks else []
        computed: dict[str, Outcome] = {}
        for n, chunk in enumerate(chunks):
            futures, pending = pending, submit(chunks[n + 1]) if n + 1 < len(chunks) else []
            outcomes = {i: Outcome(str(pairs[i][0]), str(pairs[i][1])) for i in chunk}
            decoded = []
            for i, future in zip(chunk, futures):
                try:
                    decoded.append(future.result())
                except images.ImageError as exc:
                    outcomes[i].error = str(exc)
            for item in decoded:
                outcomes[item.index].decode_ms = item.decode_ms
            self._run(decoded, outcomes, computed, with_map)
            yield from (outcomes[i] for i in chunk)

    def _run(self, decoded: list[_Decoded], outcomes: dict[int, Outcome], computed: dict[str, Outcome],
             with_map: bool) -> None:
        """Pairs of one size share batches; a pair whose two files were already compared is copied."""
        fresh: list[_Decoded] = []
        repeats: list[_Decoded] = []
        for item in decoded:
            (repeats if item.pair_key in computed else fresh).append(item)
            computed.setdefault(item.pair_key, outcomes[item.index])
        by_shape: dict[tuple, list[_Decoded]] = {}
        for item in fresh:
            by_shape.setdefault(tuple(item.ref.shape), []).append(item)
        for group in by_shape.values():
            for start in range(0, len(group), self.max_batch):
                self._batch(group[start:start + self.max_batch], outcomes, with_map)
        for item in repeats:
            first, outcome = computed[item.pair_key], outcomes[item.index]
            outcome.distance, outcome.layers, outcome.map = first.distance, first.layers, first.map

    def _batch(self, batch: list[_Decoded], outcomes: dict[int, Outcome], with_map: bool) -> None:
        """References not in the cache and all candidates go through the network in one forward pass."""
        if self.before_batch is not None:
            self.before_batch([outcomes[item.index].cand for item in batch])
        start = time.perf_counter()
        keys = dict.fromkeys(b.ref_key for b in batch)
        cached = {k: self.cache.get(k) if self.cache is not None else None for k in keys}
        found = {k: features for k, features in cached.items() if features is not None}
        first = {b.ref_key: b.ref for b in reversed(batch)}
        missing = [k for k in keys if cached[k] is None]
        both = self.model.features(_stack([first[k] for k in missing] + [b.cand for b in batch]).to(self.device))
        computed = both.take(slice(0, len(missing)))
        for row, key in enumerate(missing):
            found[key] = computed.take(slice(row, row + 1))
            if self.cache is not None:
                self.cache.put(key, found[key].clone())
        cands = both.take(slice(len(missing), len(missing) + len(batch)))
        in_order = missing == [b.ref_key for b in batch]  # distinct references, none cached: no regrouping
        refs = computed if in_order else _concat(found[b.ref_key] for b in batch)
        size = (batch[0].ref.shape[-2], batch[0].ref.shape[-1]) if with_map else None
        result = self.model.compare(refs, cands, size=size)
        elapsed = (time.perf_counter() - start) * 1e3 / len(batch)
        for row, item in enumerate(batch):
            outcome = outcomes[item.index]
            outcome.distance = float(result.distance[row])
            outcome.model_ms = elapsed
            outcome.layers = [
                {"index": i, "name": name, "distance": float(result.layers[row, i]),
                 "ref_stats": result.ref_stats[i][row], "cand_stats": result.cand_stats[i][row]}
                for i, name in enumerate(self.model.taps)
            ]
            if result.map is not None:  # with_map asked for it
                outcome.map = result.map[row, 0].cpu()


Key = TypeVar("Key", bound=Hashable)
Value = TypeVar("Value")


class _Once(Generic[Key, Value]):
    """`compute(key)` once per key, however many threads ask at the same time; its error, too."""

    def __init__(self, compute: Callable[[Key], Value]):
        self.compute, self._lock = compute, threading.Lock()
        self._futures: dict[Key, Future[Value]] = {}

    def __call__(self, key: Key) -> Value:
        with self._lock:
            future = self._futures.get(key)
            first = future is None
            if future is None:
                future = self._futures[key] = Future()
        if first:
            try:
                future.set_result(self.compute(key))
            except BaseException as exc:  # noqa: BLE001  (handed to every caller of this key)
                future.set_exception(exc)
        return future.result()


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """One channels_last batch, the layout the network runs in: decoded images already have it, so
    each is one contiguous copy (torch.stack would build NCHW, and the network convert it back)."""
    batch = torch.empty((len(images), *images[0].shape), memory_format=torch.channels_last)
    for row, image in zip(batch, images):
        row.copy_(image)
    return batch


def _concat(parts: Iterable[Features]) -> Features:
    parts = list(parts)
    layers = [torch.cat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))]
    stats = [[s for p in parts for s in p.stats[i]] for i in range(len(parts[0].stats))]
    return Features(layers, stats)
