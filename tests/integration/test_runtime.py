"""The robust runtime, the store-aware processor and the sweeper, in this process, with real weights,
real databases (both dialects where the store is involved) and a private Redis. The Celery worker
process itself is tested in test_worker.py."""

from __future__ import annotations

import base64
import io
import json
import math
import random
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import structlog
from PIL import Image
from sqlalchemy import func, select, update

from gate.runs.executors import load_executor
from gate.runs.queue import make_celery, store_queue_at
from gate.runs.service import run_results
from gate.settings import Settings
from gate.store import make_engine, session_scope
from gate.store import repository as repo
from gate.store.models import Comparison, LayerMetric, Worker, utcnow
from gate.vocabulary import SCORES, STAT_KEYS
from tests.integration.services import PrivateRedis, copy_weights, private_folder, remove, write_pairs
from tests.scenes import render, scene
from tests.support.faults import Faults, injected
from worker.celery_app import SWEEP_LOCK_PREFIX, celery_sweeper, comparison_ids
from worker.engine import Engine
from worker.images import SUPPORTED
from worker.processor import Processor, Store, worker_name
from worker.runtime import Counters, Extractor, Models

POISON = ".poison.png"
ALEX_LAYERS = 5
NO_FAULTS = Faults()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    return copy_weights(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def pairs(image_root) -> list[tuple[str, str]]:
    """Eight 128x128 pairs (a window is max_batch pairs: engine.PACKED_PIXELS); the sixth candidate is the
    poisoned one."""
    return write_pairs(image_root, 8, size=128, poison=(5,), poison_suffix=POISON)


def _settings(weights_dir: Path, image_root: Path, **overrides) -> Settings:
    base = {
        "weights_dir": weights_dir,
        "image_root": image_root,
        "max_batch": 4,
        "retry_tries": 2,
        "retry_base_s": 0.0,
        "device": "cpu",
        "heartbeat_file": image_root / "heartbeat",
    }
    return Settings(**{**base, **overrides})


def _paths(image_root: Path, pairs) -> list[tuple[Path, Path]]:
    return [(image_root / ref, image_root / cand) for ref, cand in pairs]


@pytest.fixture(scope="module")
def expected(weights_dir, image_root, pairs) -> dict[str, list[float]]:
    """Distances from the plain engine, per backbone."""
    plain = _settings(weights_dir, image_root, max_batch=16)
    return {
        net: [o.distance for o in Engine.from_settings(plain, net=net).compare_files(_paths(image_root, pairs))]
        for net in ("alex", "vgg")
    }


def _measure(settings: Settings, paths, *, net: str = "alex", faults: Faults = NO_FAULTS) -> tuple[list, Counters]:
    with injected(faults):
        models = Models(settings)
        measured = list(models.measure(paths, net=net, version="0.1", precision="fp32"))
    return measured, models.counters


# --- runtime ------------------------------------------------------------------------------------


def test_oom_halves_the_batch_until_it_fits_and_only_for_that_call(weights_dir, image_root, pairs, expected):
    settings = _settings(weights_dir, image_root, max_batch=8)
    with injected(Faults(oom_above_batch=2)):
        models = Models(settings)
        good = _paths(image_root, pairs[:5])
        first = list(models.measure(good, net="alex", version="0.1", precision="fp32"))
        assert [m.distance for m in first] == pytest.approx(expected["alex"][:5], abs=1e-6)
        assert models.counters.oom_halvings == 1  # 5 pairs -> a pass of 5 (OOM) -> passes of 2 fit
        extractor = models.get("alex", "0.1", "fp32")
        assert (extractor.engine.max_batch, extractor.engine.packing) == (8, True)  # restored for the next task
        list(models.measure(good, net="alex", version="0.1", precision="fp32"))
        assert (models.counters.oom_halvings, models.counters.retries) == (2, 0)


def test_oom_in_a_packed_pass_halves_that_pass(weights_dir, image_root, tmp_path):
    """64px frames are packed 4 to a max_batch slot: the halving is of the pass that failed, not of max_batch."""
    small = write_pairs(tmp_path, 16, size=64)
    settings = _settings(weights_dir, tmp_path, max_batch=4)
    with injected(Faults(oom_above_batch=8)):
        models = Models(settings)
        measured = list(models.measure(_paths(tmp_path, small), net="alex", version="0.1", precision="fp32"))
    assert [m.error for m in measured] == [None] * 16
    assert (models.counters.oom_halvings, models.counters.retries) == (1, 0)
    assert models.get("alex", "0.1", "fp32").engine.last_pass == 8  # a pass of 16 -> passes of 8


def test_oom_at_batch_one_is_a_transient_failure(weights_dir, image_root, pairs):
    settings = _settings(weights_dir, image_root, max_batch=2)
    measured, counters = _measure(settings, _paths(image_root, pairs[:1]), faults=Faults(oom_above_batch=0))
    reason = (
        "transient failure after 2 tries: OutOfMemoryError: CUDA out of memory (injected: a forward pass "
        "of 1 pairs > fault_oom_above_batch=0)"
    )
    assert [(m.error, m.final) for m in measured] == [(reason, False)]
    assert (counters.oom_halvings, counters.retries) == (0, 1)  # a pass of one pair cannot be halved


def test_a_poisoned_pair_is_isolated_and_handed_back(weights_dir, image_root, pairs, expected):
    settings = _settings(weights_dir, image_root)
    measured, counters = _measure(settings, _paths(image_root, pairs), faults=Faults(poison_suffix=POISON))
    poisoned = measured.pop(5)
    reason = (
        f"transient failure after 2 tries: RuntimeError: injected transient fault: "
        f"{image_root / pairs[5][1]} ends with {POISON!r}"
    )
    assert (poisoned.error, poisoned.final, poisoned.distance) == (reason, False, None)
    assert [m.distance for m in measured] == pytest.approx(expected["alex"][:5] + expected["alex"][6:], abs=1e-6)
    # one retry each: the window [4:8] that failed (the engine decodes and runs one batch, 4 pairs, a
    # window, and [0:4] had already come through), its half [4:6], the pair itself
    assert counters.retries == 3


def test_bad_input_is_final_and_never_retried(weights_dir, image_root, pairs):
    (image_root / "not_an_image.png").write_bytes(b"hello")
    paths = [
        (image_root / pairs[0][0], image_root / "missing.png"),
        (image_root / "not_an_image.png", image_root / pairs[0][1]),
    ]
    measured, counters = _measure(_settings(weights_dir, image_root), paths)
    assert [(m.error, m.final) for m in measured] == [
        (f"{image_root / 'missing.png'}: file not found", True),
        (f"{image_root / 'not_an_image.png'}: not an image file (expected {SUPPORTED})", True),
    ]
    assert counters.retries == 0


def test_a_primary_that_cannot_load_falls_back(weights_dir, image_root, pairs, expected):
    settings = _settings(weights_dir, image_root, net="vgg", fallback_net="alex")
    good = _paths(image_root, pairs[:4])
    measured, counters = _measure(settings, good, net="vgg", faults=Faults(broken_primary=True))
    alex_version = Engine.from_settings(settings, net="alex").weights_version
    assert {(m.net, m.weights_version, m.precision) for m in measured} == {("alex", alex_version, "fp32")}
    assert [m.distance for m in measured] == pytest.approx(expected["alex"][:4], abs=1e-6)
    assert counters.fallbacks == 4


def test_without_a_fallback_a_broken_primary_hands_every_pair_back(weights_dir, image_root, pairs):
    settings = _settings(weights_dir, image_root, net="vgg", fallback_net=None)
    measured, _ = _measure(settings, _paths(image_root, pairs[:2]), net="vgg", faults=Faults(broken_primary=True))
    reason = "no backbone could be loaded: injected: the weights of 'vgg' are unusable (fault_broken_primary)"
    assert [(m.error, m.final) for m in measured] == [(reason, False)] * 2


def test_non_finite_distances_are_recomputed_by_the_fallback(weights_dir, image_root, pairs, expected):
    good = _paths(image_root, pairs[:3])
    settings = _settings(weights_dir, image_root, net="vgg", fallback_net="alex")
    nonfinite = Faults(nonfinite_primary=True)
    measured, counters = _measure(settings, good, net="vgg", faults=nonfinite)
    assert [m.net for m in measured] == ["alex"] * 3
    assert [m.distance for m in measured] == pytest.approx(expected["alex"][:3], abs=1e-6)
    assert counters.fallbacks == 3
    alone, _ = _measure(settings.model_copy(update={"fallback_net": None}), good, net="vgg", faults=nonfinite)
    assert [(m.net, math.isnan(m.distance)) for m in alone] == [("vgg", True)] * 3


def test_backoff_doubles_per_try_with_jitter(weights_dir, image_root):
    engine = Engine.from_settings(_settings(weights_dir, image_root))
    extractor = Extractor(engine, tries=5, base_s=0.5, counters=Counters(), rng=random.Random(7))
    delays = [extractor.backoff(n) for n in (1, 2, 3, 4)]
    assert all(0.5 * 2**i / 2 <= d <= 0.5 * 2**i for i, d in enumerate(delays)), delays
    assert len({round(d / 2**i, 9) for i, d in enumerate(delays)}) == 4  # jittered: no two alike


def test_counters_forward_increments_and_refuse_unknown_names():
    seen = []
    counters = Counters(listener=lambda name, n: seen.append((name, n)))
    counters.add("retries")
    counters.add("fallbacks", 3)
    assert (counters.retries, counters.fallbacks, seen) == (1, 3, [("retries", 1), ("fallbacks", 3)])
    with pytest.raises(ValueError, match="unknown counter 'typo'"):
        counters.add("typo")


# --- the message contract -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((7,), {"comparison_ids": [1]}, "positional arguments are not part of the contract, got 1"),
        ((), {"ids": [1]}, "kwargs must be exactly {'comparison_ids': [...]}, got keys ['ids']"),
        (
            (),
            {"comparison_ids": [1], "x": 1},
            "kwargs must be exactly {'comparison_ids': [...]}, got keys ['comparison_ids', 'x']",
        ),
        ((), {"comparison_ids": "1,2"}, "comparison_ids: expected a non-empty list of ints, got '1,2'"),
        ((), {"comparison_ids": []}, "comparison_ids: expected a non-empty list of ints, got []"),
        ((), {"comparison_ids": [1, True]}, "comparison_ids: expected positive ints, got True"),
        ((), {"comparison_ids": [1, 0]}, "comparison_ids: expected positive ints, got 0"),
        ((), {"comparison_ids": [1.0]}, "comparison_ids: expected positive ints, got 1.0"),
        ((), {"comparison_ids": list(range(1, 1002))}, "comparison_ids: at most 1000 per message, got 1001"),
    ],
)
def test_malformed_messages_are_refused_with_the_reason(args, kwargs, message):
    with pytest.raises(ValueError) as refused:
        comparison_ids(args, kwargs)
    assert str(refused.value) == message


def test_message_ids_keep_their_order_once_each():
    assert comparison_ids((), {"comparison_ids": [3, 1, 3, 2, 1]}) == [3, 1, 2]


# --- the embedded executor (the worker's processor, in this process) ----------------------------


def _new_run(url: str, pairs, *, maps: bool, net: str = "alex", options: dict | None = None) -> list[int]:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            run = repo.create_run(
                session,
                suite_name="runtime",
                pairs=pairs,
                net=net,
                version="0.1",
                precision="fp32",
                options={"maps": maps, **(options or {})},
            )
            return [c.id for c in repo.list_comparisons(session, run_id=run.id)]
    finally:
        engine.dispose()


def _rows(url: str, ids) -> tuple[list[Comparison], int]:
    engine = make_engine(url)
    try:
        with session_scope(engine) as session:
            rows = list(session.scalars(select(Comparison).where(Comparison.id.in_(ids)).order_by(Comparison.id)))
            layers = session.scalar(
                select(func.count()).select_from(LayerMetric).where(LayerMetric.comparison_id.in_(ids))
            )
            return rows, layers
    finally:
        engine.dispose()


def test_embedded_run_records_each_outcome_once(db_url, weights_dir, image_root, pairs, expected, unconfigured_logging):
    settings = _settings(weights_dir, image_root, database_url=db_url, max_attempts=3)
    bad = [("../outside.png", pairs[0][1]), (pairs[0][0], "missing.png")]
    ids = _new_run(db_url, pairs + bad, maps=True)
    poisoned = Faults(poison_suffix=POISON)
    with injected(poisoned):
        load_executor("embedded")(settings, ids)  # through the entry point, as `lpips-gate submit` does
    rows, layers = _rows(db_url, ids)
    done = [r for r in rows if r.status == "done"]
    version = Engine.from_settings(settings).weights_version
    assert [r.distance for r in done] == pytest.approx(expected["alex"][:5] + expected["alex"][6:], abs=1e-6)
    assert {(r.net, r.weights_version, r.precision, r.attempts, r.error) for r in done} == {
        ("alex", version, "fp32", 1, None)
    }
    assert layers == ALEX_LAYERS * len(done) == ALEX_LAYERS * 7
    for row in done:  # the report's pictures: the heatmap on the fixed scale's palette, WebP previews
        with Image.open(io.BytesIO(row.heatmap_png)) as heatmap:
            assert (heatmap.size, heatmap.mode) == ((128, 128), "P")
        for preview in (row.ref_thumb, row.cand_thumb):
            with Image.open(io.BytesIO(preview)) as thumbnail:
                assert (thumbnail.format, thumbnail.size) == ("WEBP", (128, 128))
    failed = {r.ref + " " + r.cand: (r.status, r.attempts, r.error) for r in rows if r.status != "done"}
    gave_up = (
        f"gave up after 3 attempts: transient failure after 2 tries: RuntimeError: injected transient "
        f"fault: {image_root / pairs[5][1]} ends with {POISON!r}"
    )
    assert failed == {
        f"{pairs[5][0]} {pairs[5][1]}": ("error", 3, gave_up),
        f"../outside.png {pairs[0][1]}": ("error", 1, "../outside.png: path escapes the image root"),
        f"{pairs[0][0]} missing.png": ("error", 1, "missing.png: file not found"),
    }
    finished = [(r.id, r.status, r.finished_at) for r in rows]
    with injected(poisoned):
        load_executor("embedded")(settings, ids)  # a repeat finds nothing queued and writes nothing
    again, layers_again = _rows(db_url, ids)
    assert ([(r.id, r.status, r.finished_at) for r in again], layers_again) == (finished, layers)


@pytest.fixture
def unconfigured_logging():
    """structlog as a fresh CLI process has it, and put back that way afterwards."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def test_embedded_without_maps_stores_no_heatmap_and_keeps_stdout_clean(
    pg_url, weights_dir, image_root, pairs, expected, unconfigured_logging, capfd
):
    ids = _new_run(pg_url, pairs[:2], maps=False)
    load_executor("embedded")(_settings(weights_dir, image_root, database_url=pg_url), ids)
    assert capfd.readouterr() == ("", "")  # stdout is the command's answer; info lines are a worker's, not a CLI's
    rows, _ = _rows(pg_url, ids)
    assert [(r.status, r.heatmap_png, r.ref_thumb, r.cand_thumb) for r in rows] == [("done", None, None, None)] * 2
    assert [r.distance for r in rows] == pytest.approx(expected["alex"][:2], abs=1e-6)


def test_embedded_refuses_ids_that_are_not_positive_ints(weights_dir, image_root):
    settings = _settings(weights_dir, image_root)
    with pytest.raises(ValueError, match=r"^comparison_ids: expected positive ints, got '3'$"):
        load_executor("embedded")(settings, [1, "3"])


# --- leftovers and the sweeper ------------------------------------------------------------------


def test_rows_left_running_by_this_process_are_handed_back(db_url, weights_dir, image_root, pairs):
    settings = _settings(weights_dir, image_root, database_url=db_url)
    ids = _new_run(db_url, pairs[:3], maps=False)
    store = Store(db_url, retry_s=0)
    processor = Processor(settings, store=store, models=Models(settings), name=worker_name(), requeue=print)
    store.run(lambda s: repo.claim_comparisons(s, ids=ids, worker=processor.name, max_attempts=3), what="claim")
    processor.held = {ids[0]}  # a task still working on this one
    assert processor.release_leftovers() == ids[1:]
    rows, _ = _rows(db_url, ids)
    reason = f"handed back by {processor.name}: its task ended while the store was unreachable"
    assert [(r.status, r.error) for r in rows] == [("running", None)] + [("queued", reason)] * 2
    store.dispose()


@pytest.fixture(scope="module")
def private_redis():
    folder = private_folder()
    server = PrivateRedis(folder).start()
    yield server
    server.stop()
    remove(folder)


def _queued_messages(server: PrivateRedis, queue: str) -> list[list[int]]:
    """The comparison ids of every message waiting in `queue` (kombu's Redis layout, protocol 2)."""
    import redis

    client = redis.Redis.from_url(server.url)
    messages = [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    assert {m["headers"]["task"] for m in messages} <= {"lpips_gate.compare"}
    return sorted(json.loads(base64.b64decode(m["body"]))[1]["comparison_ids"] for m in messages)


def _age(url: str, ids: list[int], queued_at) -> None:
    engine = make_engine(url)
    with session_scope(engine) as session:
        session.execute(update(Comparison).where(Comparison.id.in_(ids)).values(queued_at=queued_at))
    engine.dispose()


def test_sweeper_resends_orphans_and_lost_messages_once_per_period(
    pg_url, weights_dir, image_root, pairs, private_redis
):
    import redis

    settings = _settings(
        weights_dir, image_root, database_url=pg_url, broker_url=private_redis.url, orphan_after=30, max_batch=2,
        message_batches=1,
    )
    client = redis.Redis.from_url(private_redis.url)
    client.flushdb()
    orphaned = _new_run(pg_url, pairs[:3], maps=False)
    lost = _new_run(pg_url, pairs[3:5], maps=False)
    _new_run(pg_url, pairs[6:8], maps=False)  # just submitted: its messages are on their way, so never re-sent
    engine = make_engine(pg_url)
    long_ago = utcnow() - timedelta(minutes=5)
    with session_scope(engine) as session:
        repo.claim_comparisons(session, ids=orphaned, worker="dead-host:1", max_attempts=3)
        repo.heartbeat(session, worker="dead-host:1", hostname="dead-host", pid=1)
        session.execute(update(Worker).where(Worker.name == "dead-host:1").values(last_seen=long_ago))
        session.execute(
            update(Comparison).where(Comparison.id.in_(orphaned + lost)).values(claimed_at=long_ago, queued_at=long_ago)
        )
    engine.dispose()
    store = Store(pg_url, retry_s=0)
    processor = Processor(settings, store=store, models=Models(settings), name=worker_name(), requeue=print)
    queue = store_queue_at(pg_url)
    sweep = celery_sweeper(settings, app=make_celery(settings, queue=queue), store=store, processor=processor)
    sweep()
    resent = orphaned + lost  # in messages of pairs_per_message ids
    assert _queued_messages(private_redis, queue) == sorted([resent[0:2], resent[2:4], resent[4:5]])
    rows, _ = _rows(pg_url, orphaned)
    assert {(r.status, r.error) for r in rows} == {("queued", "worker dead-host:1 stopped heartbeating")}
    lock = SWEEP_LOCK_PREFIX + store.run(repo.store_key, what="store key")  # per store: others sweep their own
    assert client.exists(lock)
    sweep()  # within the period another sweep (by any worker) is skipped: the lock is held
    assert client.llen(queue) == 3
    client.delete(lock)
    sweep()  # next period: nothing orphaned, and ids still in a message are not sent again
    assert client.llen(queue) == 3
    client.rpop(queue)  # the oldest message is lost (a broker restart), the others still wait
    delivered = client.rpop(queue)  # and the next one is delivered, not yet acknowledged
    client.hset("unacked", mapping={"tag": json.dumps([json.loads(delivered), "", queue]), "junk": b"not json{"})
    _age(pg_url, resent, long_ago)  # orphan_after later
    client.delete(lock)
    sweep()  # a backlog is not lost work: exactly the lost message's ids are sent again
    assert _queued_messages(private_redis, queue) == sorted([resent[0:2], resent[4:5]])
    store.dispose()


# --- scores -------------------------------------------------------------------------------------

MISSING = (100, 60, 48, 48)  # x, y, w, h of the object the damaged candidates lose


@pytest.fixture(scope="module")
def scenes(image_root) -> list[tuple[str, str]]:
    """Renders of one scene under scored/: a good re-render, a missing object (unmasked, masked by a
    rectangle, masked by a mask image), a black frame; and the mask image."""
    folder = image_root / "scored"
    folder.mkdir()
    clean = scene(5)
    good = render(clean, 2)
    missing = good.copy()
    x, y, w, h = MISSING
    missing[y:y + h, x:x + w] = render(np.full((h, w, 3), 90.0), 7)
    mask = np.zeros(good.shape[:2], dtype=np.uint8)
    mask[y:y + h, x:x + w] = 255
    frames = {"ref": render(clean, 1), "good": good, "missing": missing, "rect_missing": missing,
              "image_missing": missing, "black": np.zeros_like(good), "mask": mask}
    for name, pixels in frames.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return [("scored/ref.png", f"scored/{name}.png") for name in ("good", "missing", "rect_missing",
                                                                   "image_missing", "black")]


def test_the_processor_stores_scores_regions_and_layer_statistics(db_url, weights_dir, image_root, scenes):
    settings = _settings(weights_dir, image_root, database_url=db_url)
    masks = [{"glob": "rect_*", "rects": [list(MISSING)], "mask": None},
             {"glob": "image_*", "rects": [], "mask": "scored/mask.png"},
             {"glob": "nowhere_*", "rects": [], "mask": "scored/absent.png"}]  # matches none: never read
    ids = _new_run(db_url, scenes, maps=False, options={"region_px": 32, "area_level": 1.0, "masks": masks})
    store = Store(db_url, retry_s=0)
    Processor(settings, store=store, models=Models(settings), name=worker_name(), requeue=print).process(ids)
    store.dispose()
    engine = make_engine(db_url)
    with session_scope(engine) as session:
        good, missing, rect, image, black = (session.get_one(Comparison, i) for i in ids)
        for row in (good, missing, rect, image, black):
            assert (row.status, list(row.scores)) == ("done", list(SCORES))
        for row in (good, missing, black):
            assert row.scores["mean"] == row.distance  # no mask: the distance itself
        assert set(good.regions) == {"region", "tone", "levels"} and all(len(box) == 4 for box in good.regions.values())
        assert {k: good.scores[k] for k in ("fireflies", "flat", "nonfinite", "outliers")} == dict.fromkeys(
            ("fireflies", "flat", "nonfinite", "outliers"), 0.0)
        x, y, w, h = missing.regions["region"]
        assert x < 148 and 100 < x + w and y < 108 and 60 < y + h  # on the missing object
        assert missing.scores["region"] > 3 * good.scores["region"]
        assert rect.scores == image.scores and rect.regions == image.regions  # one mask, two ways to draw it
        assert rect.distance == missing.distance and rect.scores["region"] < 1.2 * good.scores["region"]
        assert (black.scores["flat"], "flat" in black.regions) == (1.0, False)
        metrics = {(m.comparison_id, m.layer_index): m for m in session.scalars(select(LayerMetric))}
        for index in range(ALEX_LAYERS):
            healthy, blank = metrics[(good.id, index)], metrics[(black.id, index)]
            assert healthy.ref_spatial_std == blank.ref_spatial_std > 0  # one reference
            assert 0.8 < healthy.cand_spatial_std / healthy.ref_spatial_std < 1.25
            assert blank.cand_spatial_std < 0.4 * blank.ref_spatial_std  # not 0: the convolutions' zero padding
            assert 0 <= healthy.cand_dead <= blank.cand_dead <= 1
        results = run_results(session, good.run_id)["comparisons"]
    engine.dispose()
    assert [(r["scores"], r["regions"]) for r in results] == [
        (row.scores, row.regions) for row in (good, missing, rect, image, black)]
    first = results[0]["layers"][0]
    assert (first["index"], first["name"], first["distance"]) == (0, "features.1", metrics[(good.id, 0)].distance)
    assert first["cand_stats"] == {key: getattr(metrics[(good.id, 0)], f"cand_{key}") for key in STAT_KEYS}


def test_a_missing_mask_image_fails_the_pairs_it_applies_to(db_url, weights_dir, image_root, scenes):
    settings = _settings(weights_dir, image_root, database_url=db_url)
    masks = [{"glob": "rect_*", "rects": [], "mask": "scored/absent.png"}]
    ids = _new_run(db_url, scenes[1:3], maps=False, options={"masks": masks})
    store = Store(db_url, retry_s=0)
    Processor(settings, store=store, models=Models(settings), name=worker_name(), requeue=print).process(ids)
    store.dispose()
    rows, _ = _rows(db_url, ids)
    assert [(r.cand, r.status, r.error) for r in rows] == [
        ("scored/missing.png", "done", None),
        ("scored/rect_missing.png", "error", "scored/absent.png: file not found"),
    ]
