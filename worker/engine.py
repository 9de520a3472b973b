"""Files in, distances out: decoding, batching pairs of one size into one forward pass, and the
reference-feature cache. The CLI, the Celery tasks and the embedded mode all go through here."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch

from gate.scoring import MASK_MARGIN_PX
from gate.vocabulary import SCORES
from worker import decoding, guards, images, masks, pixels, tuning, weights
from worker.masks import Scoring
from worker.perceptual import LPIPS, Features
from worker.perceptual.cache import FeatureCache
from worker.perceptual.spatial import grid_ignored, spatial_scores
from worker.science.trained import resolve_heads
from worker.tone import levels_lost, tone_shifts

Box = list[int]
Loaded = tuple[torch.Tensor, str]  # pixels (3, H, W) and the file's sha256
DEFAULT_SCORING = Scoring()


@dataclass
class Outcome:
    """One pair's result, or the reason it has none. `scores` holds every score of gate.vocabulary.SCORES,
    `regions` the [x, y, width, height] (candidate pixels) of those with a location."""

    ref: str
    cand: str
    distance: float | None = None
    layers: list[dict] = field(default_factory=list)
    map: torch.Tensor | None = None  # (H, W)
    error: str | None = None
    decode_ms: float = 0.0
    model_ms: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)
    regions: dict[str, Box] = field(default_factory=dict)
    ref_sha256: str | None = None  # the files as decoded: what a later approval checks they still are
    cand_sha256: str | None = None


@dataclass
class _Decoded:
    index: int
    ref: torch.Tensor
    cand: torch.Tensor
    ref_key: str  # reference content and size: the feature-cache key
    pair_key: str  # both sides' content (and what the candidate ignores): identical pairs are computed once
    decode_ms: float
    cand_size: tuple[int, int]  # (H, W) as decoded: boxes are reported in these pixels
    ignored: np.ndarray | None  # (H, W) at the compared size, True = ignored
    nonfinite: tuple[int, Box | None]  # the candidate's non-finite pixels, set to 0 before the network
    ref_hash: str  # sha256 of each file as read
    cand_hash: str


NATIVE_CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def emulated_precision(precision: str, device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Why `precision` will be slow here, or None: a CPU without instructions for it (by its
    /proc/cpuinfo flags) has oneDNN emulate it, several times slower than fp32; so does a GPU older than
    Ampere for bf16."""
    if (device.type == "cuda" and precision == "bf16" and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        return "bf16 on this GPU is emulated (it needs compute capability 8.0 or newer): expect it slower than fp32"
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


# Bytes of activations per pixel of one image through the trunk, normalisation and distances (fp32,
# with headroom): what `Engine.batch_limit` sizes CUDA batches by.
ACTIVATION_BYTES_PER_PIXEL = {"alex": 256, "vgg": 2400, "squeeze": 600}


PACKED_PIXELS = 128 * 128  # on the CPU, frames below this many pixels share passes by pixels, not by count


def pair_bytes(net: str, shape: tuple[int, ...]) -> int:
    """Device memory one pair of images of `shape` (C, H, W) takes in a forward pass, both sides."""
    return 2 * shape[-2] * shape[-1] * ACTIVATION_BYTES_PER_PIXEL[net]


def decode_threads_for(device: torch.device) -> int:
    """A GPU waits on decoding, so every core (up to 16) decodes; on the CPU the network needs the
    cores, and two threads decode the next window while it runs."""
    return min(16, len(os.sched_getaffinity(0))) if device.type == "cuda" else 2


class Engine:
    """Pairs of files in, `Outcome`s out. The constructor changes no process-wide state; `from_settings`,
    the factory every caller uses, applies `tuning.for_device` (fp32 on CUDA without TF32).

    `before_batch`, when set, is called with the candidate paths of each forward pass just before it
    runs; what it raises fails that pass as the network would (the tests inject faults through it).
    `with_scores` False skips the spatial scores and pixel guards: the bench measures their cost with it."""

    def __init__(self, model: LPIPS, *, weights_version: str, device: torch.device, max_pixels: int,
                 max_batch: int, cache: FeatureCache | None = None, resize: images.Resize = "none",
                 exposure: float = 0.0, decode_threads: int | None = None, decode_processes: int = 0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        images.check_resize(resize)
        self.model = model.to(device)
        self.device, self.weights_version = device, weights_version
        self.max_pixels, self.max_batch, self.resize, self.exposure = max_pixels, max_batch, resize, exposure
        self.cache = cache
        self.min_size = images.MIN_SIZE[model.net]
        self.before_batch: Callable[[list[str]], None] | None = None
        self.with_scores = True
        self.packing = True  # small frames share CPU passes by pixels (batch_limit); off after an out-of-memory
        self.last_pass = 0  # pairs in the latest forward pass: what an out-of-memory error halves
        self._pool = ThreadPoolExecutor(decode_threads or decode_threads_for(device), thread_name_prefix="decode")
        self.decode_processes = decode_processes  # 0: decode in the threads; else a shared worker.decoding pool

    @classmethod
    def from_settings(cls, settings, *, net: str | None = None, version: str | None = None,
                      precision: str | None = None, device: str | None = None, resize: images.Resize = "none",
                      exposure: float = 0.0, **options) -> Engine:
        model, version_id = build_model(settings, net=net or settings.net, version=version or settings.version,
                                        precision=precision or settings.precision, **options)
        resolved = resolve_device(device or settings.device)
        tuning.for_device(resolved)
        processes = settings.decode_processes
        return cls(model, weights_version=version_id, device=resolved, max_pixels=settings.max_pixels,
                   max_batch=settings.cuda_max_batch if resolved.type == "cuda" else settings.max_batch,
                   cache=FeatureCache(settings.feature_cache_bytes), resize=resize, exposure=exposure,
                   decode_processes=decoding.default_processes(resolved.type) if processes is None else processes)

    def window_at(self, pairs: Sequence[tuple[Path, Path]], start: int) -> int:
        """Pairs from `start` decoded and computed together: one batch for the size its first reference's
        header gives, so the next window decodes while this one computes. A pass that fails, fails for a
        pair of the window being computed. A header that cannot be read (OpenEXR, a bad file: decoding
        reports it) counts as a full-size frame."""
        if self.device.type == "cuda":
            return self.max_batch
        size = pixels.frame_size(pairs[start][0])
        return self.max_batch if size is None else self.batch_limit((3, size[1], size[0]))

    def _decode(self, index: int, ref: Path, cand: Path, load: Callable[[Path, bool], Loaded],
                mask_images: _Once[Path, np.ndarray], scoring: Scoring) -> _Decoded:
        """A candidate's non-finite pixels are counted (outside what it ignores) and set to 0 before the
        sizes are matched: resizing would smear them."""
        start = time.perf_counter()
        exposure = self.exposure if scoring.exposure is None else scoring.exposure
        ref_image, ref_hash = load(ref, False)
        cand_image, cand_hash = load(cand, True)
        cand_size = (cand_image.shape[-2], cand_image.shape[-1])
        ignore = scoring.ignore.get(cand)
        ignored = None if ignore is None else masks.rasterise(ignore, cand_size, mask_images)
        nonfinite = guards.take_nonfinite(cand_image, ignored)
        a, b = images.match_sizes(ref, cand, ref_image, cand_image,
                                  resize=self.resize if scoring.resize is None else scoring.resize)
        if ignored is not None:
            ignored = masks.resized(ignored, (b.shape[-2], b.shape[-1]))
        key = f"{ref_hash}:{exposure:+g}:{tuple(a.shape)}"  # an EXR's pixels depend on the exposure
        pair_key = f"{key}:{cand_hash}:{tuple(b.shape)}:{ignore}"
        return _Decoded(index, a, b, key, pair_key, (time.perf_counter() - start) * 1e3, cand_size, ignored, nonfinite,
                        ref_hash, cand_hash)

    def _load(self, path: Path, *, exposure: float, keep_nonfinite: bool = False) -> Loaded:
        """Decoded pixels and the sha256 of the file: its identity for the cache and for dedup."""
        return images.load_hashed(path, max_pixels=self.max_pixels, min_size=self.min_size, exposure=exposure,
                                  keep_nonfinite=keep_nonfinite)

    def _loader(self, pairs: list[tuple[Path, Path]], exposure: float) -> Callable[[Path, bool], Loaded]:
        """How one window's files are decoded: each distinct file once, in the decode pool's processes
        when there is one (OpenEXR still here: its tone map runs in torch), else in the calling thread."""
        if not self.decode_processes:
            # a reference shared by pairs of a window is decoded once
            refs: _Once[Path, Loaded] = _Once(lambda path: self._load(path, exposure=exposure))
            return lambda path, keep_nonfinite: (self._load(path, exposure=exposure, keep_nonfinite=True)
                                                 if keep_nonfinite else refs(path))
        files = [(ref, False) for ref, _ in pairs] + [(cand, True) for _, cand in pairs]
        futures = decoding.shared_pool(self.decode_processes).decode(files, max_pixels=self.max_pixels,
                                                                     min_size=self.min_size)
        shared = {file for file, uses in Counter(files).items() if file[1] and uses > 1}

        def pooled(path: Path, keep_nonfinite: bool) -> Loaded:
            decoded = futures[(path, keep_nonfinite)].result()
            if decoded is None:
                return self._load(path, exposure=exposure, keep_nonfinite=keep_nonfinite)
            pixels, digest = decoded
            if (path, keep_nonfinite) in shared:  # each use zeroes its non-finite pixels in place: its own copy
                pixels = pixels.copy()
            return images.pixels_tensor(pixels), digest
        return pooled

    def compare_files(self, pairs: Sequence[tuple[Path, Path]], *, with_map: bool = False,
                      scoring: Scoring = DEFAULT_SCORING) -> Iterator[Outcome]:
        """Outcomes in input order; a bad pair gets its error and the rest go on. Decoding of the
        next window overlaps the forward passes of this one."""
        chunks = _windows(lambda start: self.window_at(pairs, start), len(pairs))
        mask_images: _Once[Path, np.ndarray] = _Once(lambda path: masks.load_mask(path, max_pixels=self.max_pixels))

        def submit(chunk: list[int]) -> list[Future]:
            window_pairs = [(Path(pairs[i][0]), Path(pairs[i][1])) for i in chunk]
            load = self._loader(window_pairs, self.exposure if scoring.exposure is None else scoring.exposure)
            return [self._pool.submit(self._decode, i, ref, cand, load, mask_images, scoring)
                    for i, (ref, cand) in zip(chunk, window_pairs)]

        chunk = next(chunks, None)
        pending = submit(chunk) if chunk else []
        computed: dict[str, Outcome] = {}
        while chunk:
            following = next(chunks, None)
            futures, pending = pending, submit(following) if following else []
            outcomes = {i: Outcome(str(pairs[i][0]), str(pairs[i][1])) for i in chunk}
            decoded = []
            for i, future in zip(chunk, futures):
                try:
                    decoded.append(future.result())
                except images.ImageError as exc:
                    outcomes[i].error = str(exc)
            for item in decoded:
                outcome = outcomes[item.index]
                outcome.decode_ms = item.decode_ms
                outcome.ref_sha256, outcome.cand_sha256 = item.ref_hash, item.cand_hash
            self._run(decoded, outcomes, computed, with_map, scoring)
            yield from (outcomes[i] for i in chunk)
            chunk = following

    def _run(self, decoded: list[_Decoded], outcomes: dict[int, Outcome], computed: dict[str, Outcome],
             with_map: bool, scoring: Scoring) -> None:
        """Pairs of one size share batches; a pair whose two files were already compared is copied."""
        fresh: list[_Decoded] = []
        repeats: list[_Decoded] = []
        for item in decoded:
            (repeats if item.pair_key in computed else fresh).append(item)
            computed.setdefault(item.pair_key, outcomes[item.index])
        by_shape: dict[tuple, list[_Decoded]] = {}
        for item in fresh:
            by_shape.setdefault(tuple(item.ref.shape), []).append(item)
        for shape, group in by_shape.items():
            limit = self.batch_limit(shape)
            for start in range(0, len(group), limit):
                self._batch(group[start:start + limit], outcomes, with_map, scoring)
        for item in repeats:
            first, outcome = computed[item.pair_key], outcomes[item.index]
            outcome.distance, outcome.layers, outcome.map = first.distance, first.layers, first.map
            outcome.scores, outcome.regions = first.scores, first.regions

    def batch_limit(self, shape: tuple[int, ...]) -> int:
        """Pairs per forward pass for images of `shape`. On the CPU `max_batch`, and with `packing` frames
        smaller than PACKED_PIXELS as many more as keep the pass at max_batch frames of that size: a pass
        has a fixed cost that small frames do not amortise. On CUDA as many as half the device's free
        memory holds, at most `max_batch`. An out-of-memory error halves the pass (worker.runtime)."""
        if self.device.type != "cuda":
            return self.max_batch * (max(1, PACKED_PIXELS // (shape[-2] * shape[-1])) if self.packing else 1)
        free, _total = torch.cuda.mem_get_info(self.device)
        return max(1, min(self.max_batch, free // 2 // pair_bytes(self.model.net, shape)))

    def _on_device(self, images: list[torch.Tensor]) -> torch.Tensor:
        """One channels_last batch on the device; on CUDA through pinned memory, copied without waiting."""
        if self.device.type != "cuda":
            return _stack(images)
        return _stack(images, pinned=True).to(self.device, non_blocking=True)

    def _batch(self, batch: list[_Decoded], outcomes: dict[int, Outcome], with_map: bool, scoring: Scoring) -> None:
        """References not in the cache and all candidates go through the network in one forward pass."""
        self.last_pass = len(batch)
        if self.before_batch is not None:
            self.before_batch([outcomes[item.index].cand for item in batch])
        start = time.perf_counter()
        first = _first_rows(batch)
        cached = {k: self.cache.get(k) if self.cache is not None else None for k in first}
        found = {k: features for k, features in cached.items() if features is not None}
        missing = [k for k in first if cached[k] is None]
        pixels = self._on_device([batch[first[k]].ref for k in missing] + [b.cand for b in batch])
        both = self.model.features(pixels)
        computed = both.take(slice(0, len(missing)))
        for row, key in enumerate(missing):
            found[key] = computed.take(slice(row, row + 1))
            if self.cache is not None:
                self.cache.put(key, found[key].clone())
        cands = both.take(slice(len(missing), len(missing) + len(batch)))
        in_order = missing == [b.ref_key for b in batch]  # distinct references, none cached: no regrouping
        refs = computed if in_order else _concat(found[b.ref_key] for b in batch)
        size = (batch[0].ref.shape[-2], batch[0].ref.shape[-1]) if with_map else None
        result = self.model.compare(refs, cands, size=size, spatial=self.with_scores)
        if result.fine is not None:  # with_scores
            ref_pixels = pixels[:len(batch)] if in_order else self._on_device([b.ref for b in batch])
            self._score(batch, outcomes, ref_pixels, pixels[len(missing):], result.fine, result.distance, scoring)
        distances, layers = result.distance.tolist(), result.layers.tolist()  # one copy each from the device
        elapsed = (time.perf_counter() - start) * 1e3 / len(batch)
        for row, item in enumerate(batch):
            outcome = outcomes[item.index]
            outcome.distance = distances[row]
            outcome.model_ms = elapsed
            outcome.layers = [
                {"index": i, "name": name, "distance": layers[row][i],
                 "ref_stats": result.ref_stats[i][row], "cand_stats": result.cand_stats[i][row]}
                for i, name in enumerate(self.model.taps)
            ]
            if result.map is not None:  # with_map asked for it
                outcome.map = result.map[row, 0].cpu()

    def _score(self, batch: list[_Decoded], outcomes: dict[int, Outcome], refs: torch.Tensor, cands: torch.Tensor,
               fine: torch.Tensor, distance: torch.Tensor, scoring: Scoring) -> None:
        """The spatial scores from the map at the first tap's resolution (`fine`) and the pixel guards,
        both without the candidates' ignored pixels; `mean` is the distance itself where none are."""
        size = (cands.shape[-2], cands.shape[-1])
        ignored = None
        if any(item.ignored is not None for item in batch):
            ignored = torch.stack([torch.zeros(size, dtype=torch.bool) if item.ignored is None
                                   else torch.from_numpy(item.ignored) for item in batch])[:, None].to(self.device)
        grid = (fine.shape[-2], fine.shape[-1])
        spatial = spatial_scores(fine, image_size=size, region_px=scoring.region_px, area_level=scoring.area_level,
                                 ignored=None if ignored is None else grid_ignored(ignored, grid, MASK_MARGIN_PX))
        guarded = guards.pixel_guards(refs, cands, ignored)
        toned = tone_shifts(refs, cands, scoring.region_px, ignored)
        distinct, ref_of = _distinct_refs(batch, refs)
        quantised = levels_lost(distinct, cands, scoring.region_px, ignored, ref_of)
        for row, (item, (local, local_boxes), (guard, guard_boxes), (tone, tone_box), (lost, lost_box)) in enumerate(
                zip(batch, spatial, guarded, toned, quantised)):
            count, box = item.nonfinite
            scores = {**local, **guard, "nonfinite": float(count), "tone": tone, "levels": lost}
            if item.ignored is None and self.model.reduction == "mean":
                scores["mean"] = float(distance[row])
            found = {**local_boxes, **guard_boxes, "tone": tone_box, "levels": lost_box}
            boxes = {name: _in_pixels(found[name], size, item.cand_size) for name in found}
            if box:  # counted on the candidate as decoded: already in its pixels
                boxes["nonfinite"] = box
            outcome = outcomes[item.index]
            outcome.scores = {name: scores[name] for name in SCORES}
            outcome.regions = {name: boxes[name] for name in SCORES if name in boxes}


def _first_rows(batch: list[_Decoded]) -> dict[str, int]:
    """Each distinct reference of a pass, in order of appearance, with the row of its first pair."""
    rows: dict[str, int] = {}
    for row, item in enumerate(batch):
        rows.setdefault(item.ref_key, row)
    return rows


def _distinct_refs(batch: list[_Decoded], refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each distinct reference of a pass once, and the row of each pair's reference among them (None
    where no reference repeats): one reference against many counts its levels once."""
    first = _first_rows(batch)
    if len(first) == len(batch):
        return refs, None
    order = {key: position for position, key in enumerate(first)}
    ref_of = torch.tensor([order[item.ref_key] for item in batch], device=refs.device)
    return refs[list(first.values())], ref_of


def _in_pixels(box: Box, compared: tuple[int, int], cand: tuple[int, int]) -> Box:
    """A box found at the compared size in the candidate's own pixels (they differ only when resized)."""
    if compared == cand:
        return box
    (height, width), (cand_height, cand_width) = compared, cand
    x0, y0 = box[0] * cand_width // width, box[1] * cand_height // height
    x1 = -(-(box[0] + box[2]) * cand_width // width)
    y1 = -(-(box[1] + box[3]) * cand_height // height)
    return [x0, y0, x1 - x0, y1 - y0]


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


def _windows(size_at: Callable[[int], int], total: int) -> Iterator[list[int]]:
    """Consecutive windows of indices, each as long as `size_at(its start)` says."""
    start = 0
    while start < total:
        end = min(total, start + size_at(start))
        yield list(range(start, end))
        start = end


def _stack(images: list[torch.Tensor], *, pinned: bool = False) -> torch.Tensor:
    """One channels_last batch, the layout the network runs in: decoded images already have it, so
    each is one contiguous copy (torch.stack would build NCHW, and the network convert it back).
    `pinned`: in page-locked memory (torch caches it), so the copy to CUDA runs without waiting."""
    batch = torch.empty((len(images), *images[0].shape), memory_format=torch.channels_last, pin_memory=pinned)
    for row, image in zip(batch, images):
        row.copy_(image)
    return batch


def _concat(parts: Iterable[Features]) -> Features:
    parts = list(parts)
    layers = [torch.cat([p.layers[i] for p in parts]) for i in range(len(parts[0].layers))]
    stats = [[s for p in parts for s in p.stats[i]] for i in range(len(parts[0].stats))]
    return Features(layers, stats)
