"""The engine: input order kept across size groups, one forward pass per batch, the reference
cache running the backbone once per distinct reference, results equal to the bare metric."""

import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gate.settings import Settings
from worker.engine import Engine, emulated_precision
from worker.images import load_image


def write(path, seed, size):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def engine():
    return Engine.from_settings(Settings(max_batch=8), net="alex", device="cpu")


def test_unknown_resize_mode_is_refused_before_reading():
    with pytest.raises(ValueError) as caught:
        Engine.from_settings(Settings(), net="alex", device="cpu", resize="both")
    assert str(caught.value) == "resize must be one of ('none', 'ref', 'cand'), got 'both'"


def count_images(engine):
    seen = []
    engine.model.trunk.features[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    return seen


def test_one_reference_runs_the_backbone_once(engine, tmp_path):
    ref = write(tmp_path / "ref.png", 0, (128, 128))  # PACKED_PIXELS: a pass is max_batch pairs
    pairs = [(ref, write(tmp_path / f"c{i}.png", i + 1, (128, 128))) for i in range(20)]
    seen = count_images(engine)
    outcomes = list(engine.compare_files(pairs))
    assert seen == [1 + 8, 8, 4]  # ref + 8 candidates in one pass, then candidates only
    assert (engine.cache.hits, engine.cache.misses, len(engine.cache)) == (2, 1, 1)
    x = load_image(ref, max_pixels=10**6)[None]
    for (_, cand), outcome in zip(pairs, outcomes):
        expected = engine.model(x, load_image(cand, max_pixels=10**6)[None]).item()
        assert outcome.distance == pytest.approx(expected, abs=1e-6)
        assert outcome.error is None and len(outcome.layers) == 5


def test_sizes_are_grouped_but_order_is_kept(engine, tmp_path):
    sizes = [(64, 64), (48, 80), (64, 64), (48, 80), (40, 40)]
    pairs = [(write(tmp_path / f"r{i}.png", i, s), write(tmp_path / f"c{i}.png", 100 + i, s))
             for i, s in enumerate(sizes)]
    pairs.insert(2, (tmp_path / "missing.png", pairs[0][1]))
    seen = count_images(engine)
    outcomes = list(engine.compare_files(pairs))
    assert [o.cand for o in outcomes] == [str(c) for _, c in pairs]
    assert outcomes[2].error == f"{tmp_path / 'missing.png'}: file not found"
    assert sorted(seen) == [2, 4, 4]  # one forward pass per size: 64x64 (2 pairs), 48x80 (2), 40x40 (1)
    alone = [list(engine.compare_files([p]))[0].distance for p in pairs if p[0].exists()]
    assert [o.distance for o in outcomes if o.error is None] == pytest.approx(alone, abs=1e-6)


def test_identical_pairs_are_computed_once(engine, tmp_path):
    ref = write(tmp_path / "ref.png", 0, (64, 64))
    cand = write(tmp_path / "cand.png", 1, (64, 64))
    twin = tmp_path / "twin.png"
    twin.write_bytes(cand.read_bytes())
    seen = count_images(engine)
    outcomes = list(engine.compare_files([(ref, cand), (ref, twin), (ref, cand)]))
    assert seen == [2]  # the reference and one candidate: the other two pairs have the same bytes
    assert outcomes[0].distance == outcomes[1].distance == outcomes[2].distance > 0
    assert [o.cand for o in outcomes] == [str(cand), str(twin), str(cand)]


def test_a_precision_the_cpu_lacks_instructions_for_is_named_as_emulated(tmp_path):
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor : 0\nflags : fpu sse2 avx2 fma\n")
    sapphire = tmp_path / "sapphire"
    sapphire.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16\n")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert emulated_precision("bf16", cpu, avx2) == (
        "bf16 on this CPU is emulated (no avx512_bf16 or amx_bf16): expect it slower than fp32"
    )
    assert emulated_precision("fp16", cpu, avx2) == (
        "fp16 on this CPU is emulated (no avx512_fp16 or amx_fp16): expect it slower than fp32"
    )
    assert [emulated_precision(p, cpu, sapphire) for p in ("bf16", "fp16", "fp32")] == [None, None, None]
    assert emulated_precision("bf16", cuda, avx2) is None
    assert emulated_precision("bf16", cpu, tmp_path / "missing") is None


def test_a_reference_shared_by_a_window_is_decoded_once(tmp_path, monkeypatch):
    """In-process decoding (the decode pool decodes each distinct file of a window once: test_decoding)."""
    from worker import images

    engine = Engine.from_settings(Settings(max_batch=8, decode_processes=0), net="alex", device="cpu")

    ref = write(tmp_path / "ref.png", 0, (128, 128))  # PACKED_PIXELS: a window is max_batch pairs
    missing = tmp_path / "missing.png"
    pairs = [(ref, write(tmp_path / f"c{i}.png", i + 1, (128, 128))) for i in range(20)]
    pairs += [(missing, pairs[0][1]), (missing, pairs[1][1])]
    loaded = []
    real = images.load_hashed
    monkeypatch.setattr(images, "load_hashed", lambda path, **kw: loaded.append(path) or real(path, **kw))
    outcomes = list(engine.compare_files(pairs))
    assert loaded.count(ref) == 3  # windows of max_batch 8: pairs 0-7, 8-15, 16-21
    assert loaded.count(missing) == 1  # its error is handed to both pairs
    assert [o.error for o in outcomes[-2:]] == [f"{missing}: file not found"] * 2
    assert all(o.error is None for o in outcomes[:-2])


FAULTS_PER_BATCH = """
import ctypes, resource, sys, torch
assert ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) == 0  # PR_SET_THP_DISABLE: count 4 KiB pages on any host
from worker.tuning import SWITCH_INTERVAL_S, keep_freed_memory, tune_process
from worker.perceptual import LPIPS
mode, images, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "keep":
    assert keep_freed_memory()
    tune_process()
    assert sys.getswitchinterval() == SWITCH_INTERVAL_S
model = LPIPS("alex", trunk_state=None, random_weights=True)
x = torch.rand(images, 3, 256, 256) * 2 - 1
model.features(x), model.features(x)
for _ in range(batches):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.features(x)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_per_batch(mode: str, images: int, batches: int, **env: str) -> list[int]:
    """Page faults of each batch after two that warm up, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode, str(images), str(batches)],
                          capture_output=True, text=True, check=True, env={**os.environ, **env})
    return [int(line) for line in done.stdout.split()]


def test_keep_freed_memory_stops_every_batch_faulting_its_buffers_in_again():
    """Fresh processes that differ only by the call. glibc's threshold is pinned at its initial 128 KiB,
    because the threshold it moves by itself made the count without the call vary from host to host
    (1,200 to 15,000 a batch). With the call, a batch now and then still grows the heap (glibc's free
    chunks no longer fit a buffer: 1 batch in 10 to 15 here), so the typical batch is what is asserted."""
    pinned = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}
    assert min(faults_per_batch("default", 16, 3, **pinned)) > 20_000  # the batch's buffers, page by page
    assert statistics.median(faults_per_batch("keep", 16, 7, **pinned)) < 50


def test_keep_freed_memory_keeps_buffers_beyond_the_largest_mmap_threshold():
    """48 images: the input and the first layer exceed 32 MiB, which glibc always maps and unmaps."""
    assert min(faults_per_batch("default", 48, 3)) > 20_000
    assert statistics.median(faults_per_batch("keep", 48, 7)) < 50


def test_fp32_on_cuda_runs_without_tf32(monkeypatch):
    """`Engine.from_settings` applies this to its device: cuDNN's TF32 (on by default) off on CUDA only."""
    from worker.tuning import for_device

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    for_device(torch.device("cpu"))
    assert torch.backends.cudnn.allow_tf32 is True
    for_device(torch.device("cuda"))
    assert torch.backends.cudnn.allow_tf32 is False


def test_cuda_batches_are_sized_from_free_device_memory(monkeypatch):
    """As many pairs as half the free memory holds, capped by max_batch; the CPU's batch is max_batch."""
    from types import SimpleNamespace

    from worker.engine import pair_bytes

    free = 40 * 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
    on = SimpleNamespace(device=torch.device("cuda"), max_batch=256, packing=True, model=SimpleNamespace(net="vgg"))
    assert pair_bytes("vgg", (3, 1024, 1024)) == 2 * 1024 * 1024 * 2400
    assert Engine.batch_limit(on, (3, 1024, 1024)) == free // 2 // pair_bytes("vgg", (3, 1024, 1024)) == 4
    assert Engine.batch_limit(on, (3, 256, 256)) == 68
    on.model.net = "alex"
    assert Engine.batch_limit(on, (3, 256, 256)) == 256
    free = 2**20
    assert Engine.batch_limit(on, (3, 1024, 1024)) == 1
    on.device = torch.device("cpu")
    assert Engine.batch_limit(on, (3, 1024, 1024)) == 256


def test_small_frames_share_cpu_passes_by_pixels(tmp_path, monkeypatch):
    """On the CPU frames below 128x128 are packed: max_batch frames' worth of 128x128 pixels a pass, and a
    window is the batch for its first reference's size, read from the header (full size when unreadable)."""
    engine = Engine.from_settings(Settings(max_batch=4, decode_processes=0), net="alex", device="cpu")
    assert [engine.batch_limit((3, side, side)) for side in (32, 64, 100, 128, 1080)] == [64, 16, 4, 4, 4]
    small = [(write(tmp_path / f"r{i}.png", i, (64, 64)), write(tmp_path / f"c{i}.png", 50 + i, (64, 64)))
             for i in range(20)]
    large = [(write(tmp_path / f"R{i}.png", i, (128, 128)), write(tmp_path / f"C{i}.png", 50 + i, (128, 128)))
             for i in range(5)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    pairs = small + large + [(broken, large[0][1])] + small[:3]
    assert [engine.window_at(pairs, start) for start in (0, 20, 25, 26)] == [16, 4, 4, 16]
    batches = []
    monkeypatch.setattr(engine, "before_batch", lambda cands: batches.append(len(cands)))
    outcomes = list(engine.compare_files(pairs))
    # windows 0-15 and 16-28; in the second the 64px pairs are one pass, the 128px ones two (4 + 1), and
    # the last three repeat pairs 0-2: copied, not computed
    assert batches == [16, 4, 4, 1]
    assert [o.error is None for o in outcomes] == [True] * 25 + [False] + [True] * 3
    assert outcomes[26].distance == outcomes[0].distance
