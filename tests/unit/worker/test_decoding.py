"""The decode pool: the same pixels, hashes and errors as decoding in-process, whatever the format; a
killed decode process is replaced and its files decoded again; nothing is left running after shutdown;
the engine gives the same outcomes with and without it."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gate.settings import Settings
from tests.corpus import make_corpus
from worker import decoding
from worker.engine import Engine
from worker.images import SAFE_MIN_SIZE, ImageError, content_hash, load_image

MAX_PIXELS = 64_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    files = make_corpus(tmp_path_factory.mktemp("corpus"))
    root = files["root"]
    exr = __import__("OpenEXR")
    linear = np.random.default_rng(3).random((40, 48, 3), dtype=np.float32)
    exr.File({"compression": exr.ZIP_COMPRESSION, "type": exr.scanlineimage},
             {c: np.ascontiguousarray(linear[..., i]) for i, c in enumerate("RGB")}).write(str(root / "linear.exr"))
    jpeg = root / "photo.jpg"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(jpeg, quality=90)
    return {**files, "exr": root / "linear.exr", "jpeg": jpeg, "missing": root / "missing.png", "folder": root / "sub"}


@pytest.fixture
def pool():
    pool = decoding.DecodePool(2)
    yield pool
    pool.close()


def in_process(path: Path, keep_nonfinite: bool):
    """What the engine's in-process path makes of a file: (pixels (H, W, 3), sha256), or the error."""
    try:
        image = load_image(path, max_pixels=MAX_PIXELS, min_size=SAFE_MIN_SIZE, keep_nonfinite=keep_nonfinite)
        return image.permute(1, 2, 0).numpy(), content_hash(path)
    except ImageError as exc:
        return exc


def pooled(future: Future, path: Path, keep_nonfinite: bool):
    try:
        decoded = future.result()
    except ImageError as exc:
        return exc
    assert decoded is not None or path.suffix == ".exr"  # OpenEXR is tone-mapped in the parent, in torch
    return in_process(path, keep_nonfinite) if decoded is None else decoded


def test_every_file_decodes_to_the_same_pixels_hash_or_error(corpus, pool):
    names = [name for name, path in corpus.items() if name not in ("root", "outside")]
    files = [(corpus[name], keep) for name in names for keep in (False, True)]
    futures = pool.decode(files, max_pixels=MAX_PIXELS, min_size=SAFE_MIN_SIZE)
    reasons = {}
    for path, keep in files:
        expected, got = in_process(path, keep), pooled(futures[(path, keep)], path, keep)
        if isinstance(expected, ImageError):
            assert (type(got), got.reason, str(got)) == (type(expected), expected.reason, str(expected))
            reasons[path.name] = got.reason
        else:
            assert np.array_equal(got[0], expected[0], equal_nan=True) and got[0].dtype == np.float32
            assert got[1] == expected[1]
    assert reasons["truncated.png"] == "truncated" and reasons["not_image.png"] == "not_an_image"
    assert reasons["missing.png"] == "missing" and reasons["sub"] == "not_a_file"
    assert reasons["tiny_8x8.png"] == "too_small" and reasons["bomb.png"] == "bomb"


def test_the_decode_processes_never_import_torch():
    loaded = decoding.decode_process_imports()
    assert "PIL.Image" in loaded and "numpy" in loaded
    assert not [name for name in loaded if name == "torch" or name.startswith("torch.")]


def write_pngs(folder: Path, n: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_a_killed_decode_process_is_replaced_and_its_files_decoded_again(tmp_path, pool):
    paths = write_pngs(tmp_path, 24, 512)
    victim = pool.pids()[0]
    futures = pool.decode([(p, False) for p in paths], max_pixels=MAX_PIXELS, min_size=SAFE_MIN_SIZE)
    os.kill(victim, signal.SIGKILL)  # before, during or after its task: every file still comes back right
    for path in paths:
        pixels, digest = futures[(path, False)].result(timeout=120)
        assert np.array_equal(pixels, load_image(path, max_pixels=MAX_PIXELS).permute(1, 2, 0).numpy())
        assert digest == content_hash(path)
    again = pool.decode([(paths[0], False)] * 4 + [(paths[1], False)], max_pixels=MAX_PIXELS, min_size=SAFE_MIN_SIZE)
    assert len(again) == 2 and all(f.result(timeout=60) is not None for f in again.values())
    assert victim not in pool.pids() and len(pool.pids()) == 2


def test_a_task_whose_process_dies_is_tried_again_file_by_file_then_that_file_is_an_error(tmp_path):
    paths = write_pngs(tmp_path, 2, 64)
    pool = decoding.DecodePool(1, tries=2)
    try:
        task = decoding._Task([(p, False) for p in paths], [Future(), Future()], MAX_PIXELS, SAFE_MIN_SIZE)
        dead = decoding._Child.start()
        dead.process.kill()
        pool._died(task, dead)  # first death: each file goes back alone, and decodes
        assert [f.result(timeout=60)[1] for f in task.futures] == [content_hash(p) for p in paths]
        alone = decoding._Task([(paths[0], False)], [Future()], MAX_PIXELS, SAFE_MIN_SIZE, tries=1)
        pool._died(alone, dead)  # its second death: the file's error
        error = alone.futures[0].exception()
        assert (error.reason, str(error)) == (
            "kills_decoder", f"{paths[0]}: the decode process died on it 2 times (signal {signal.SIGKILL})")
        dead.stop()
    finally:
        pool.close()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_shutdown_leaves_no_decode_process_behind(tmp_path):
    before = set(children_of(os.getpid()))
    pool = decoding.shared_pool(3)
    assert decoding.shared_pool(3) is pool and len(pool.pids()) == 3
    futures = pool.decode([(p, False) for p in write_pngs(tmp_path, 6, 64)], max_pixels=MAX_PIXELS,
                          min_size=SAFE_MIN_SIZE)
    assert all(f.result(timeout=60) is not None for f in futures.values())
    pids = pool.pids()
    assert set(pids) <= set(children_of(os.getpid()))
    decoding.shutdown()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert set(children_of(os.getpid())) <= before
    with pytest.raises(RuntimeError, match="closed"):
        pool.decode([], max_pixels=MAX_PIXELS, min_size=SAFE_MIN_SIZE)


def test_the_engine_gives_the_same_outcomes_with_the_pool(corpus, tmp_path):
    refs = write_pngs(tmp_path, 3, 64)
    cands = [tmp_path / f"c{i}.png" for i in range(5)]
    for i, cand in enumerate(cands):
        noise = np.random.default_rng(i).integers(-9, 9, (64, 64, 3))
        noisy = np.asarray(Image.open(refs[i % 3])).astype(np.int16) + noise
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(cand)
    pairs = [(refs[i % 3], cands[i]) for i in range(5)] + [
        (refs[0], cands[0]),  # a repeat: copied, not computed
        (corpus["truncated_png"], cands[1]), (refs[1], corpus["not_image"]), (refs[2], corpus["missing"]),
        (corpus["exr"], corpus["exr"]), (corpus["gray16_png"], corpus["nan_tiff"])]
    runs = []
    for processes in (0, 2):
        engine = Engine.from_settings(Settings(max_batch=4, decode_processes=processes), net="alex", device="cpu")
        runs.append([(o.distance, o.error, o.layers, o.scores, o.regions) for o in engine.compare_files(pairs)])
        runs[-1].append((engine.cache.hits, engine.cache.misses))
    decoding.shutdown()
    assert runs[0] == runs[1]
    errors = [error for _, error, *_ in runs[1][:-1]]
    assert [e is None for e in errors] == [True] * 6 + [False, False, False, True, True]
    assert "truncated or corrupt image" in errors[6] and "file not found" in errors[8]


ORPHANED = """
import os, signal
from worker import decoding
print(*decoding.shared_pool(2).pids(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no shutdown: as a worker process killed outright
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_decode_processes_end_when_their_parent_is_killed():
    done = subprocess.run([sys.executable, "-c", ORPHANED], capture_output=True, text=True)
    pids = [int(pid) for pid in done.stdout.split()]
    assert done.returncode == -signal.SIGKILL and len(pids) == 2
    deadline = time.monotonic() + 60
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if running(pid)]  # the end of their socket told them to exit


@pytest.mark.parametrize(("device", "cores", "processes"), [
    ("cpu", 1, 1), ("cpu", 2, 2), ("cpu", 3, 2), ("cpu", 4, 2), ("cpu", 8, 4),
    ("cuda", 1, 1), ("cuda", 2, 1), ("cuda", 16, 15), ("cuda", 64, 16)])
def test_the_default_pool_size_follows_the_device_and_its_cores(device, cores, processes):
    """Two decode processes on two CPU cores (the decode bench's runs), half the cores above that; on CUDA
    every core but the one that feeds the GPU, at most 16."""
    assert decoding.default_processes(device, cores) == processes
