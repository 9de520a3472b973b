"""Hostile input through a real worker: every case of tests/corpus.py, escapes from the image root,
and malformed messages sent straight to the broker. A pair with a comparison row ends as a recorded
error with its exact reason; a message without one is rejected and logged; the worker survives all
of it, in the same pool process, and computes a good run sent afterwards."""

from __future__ import annotations

import errno
import os
import pickle

from gate.runs.queue import TASK_COMPARE, enqueue, store_queue_at
from tests.cluster import (
    StoreView,
    base_settings,
    publish_raw,
    wait_for,
    worker_env,
)
from tests.corpus import make_corpus, truncated_error
from tests.integration.services import PrivateRedis, producer, write_pairs

DONE = (
    "alias.png",
    "cmyk.jpg",
    "float.tif",
    "good_cand.png",
    "good_ref.png",
    "gray.png",
    "gray16.png",
    "gray16.tif",
    "image.bmp",
    "lossless.webp",
    "nan.tif",  # a candidate's NaN pixels are counted (its `nonfinite` score), not refused
    "palette.png",
    "premultiplied.tif",
    "rgb16.png",
    "rgb16.tif",
    "rgba.png",
    "sub/nested.png",
)
LONG_NAME = "n" * 300 + ".png"
TRUNCATED = ("truncated.jpg", "truncated.png")  # their errors end in the decoder's words: matched, not pinned
BOMB = "more than max_pixels=64000000; refusing to decode a possible decompression bomb"


def expected_outcomes(root, outside) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(ref, cand) -> (status, error), but for TRUNCATED. Errors found while reading name the resolved file."""
    against_ref = {
        "bomb.png": f"{root}/bomb.png: image is 50000x50000 (2500000000 pixels), {BOMB}",
        "bomb.webp": f"{root}/bomb.webp: image is 16383x16383 (268402689 pixels), {BOMB}",
        "empty.png": f"{root}/empty.png: empty file",
        "escape.png": "escape.png: path escapes the image root",
        "loop_a.png": "loop_a.png: symlink loop",
        "loop_b.png": "loop_b.png: symlink loop",
        "mismatch_cand.png": (
            f"{root}/good_ref.png (64x64) and {root}/mismatch_cand.png (32x32): sizes differ; "
            "pass --resize ref|cand to resize"
        ),
        "mismatch_ref.png": (
            f"{root}/good_ref.png (64x64) and {root}/mismatch_ref.png (64x48): sizes differ; "
            "pass --resize ref|cand to resize"
        ),
        "not_image.png": f"{root}/not_image.png: not an image file (expected PNG, JPEG, WebP, TIFF, BMP or OpenEXR)",
        "tiny_1x1.png": f"{root}/tiny_1x1.png: image is 1x1; the network needs at least 31x31",
        "tiny_8x8.png": f"{root}/tiny_8x8.png: image is 8x8; the network needs at least 31x31",
        "../outside/secret.png": "../outside/secret.png: path escapes the image root",
        "sub/../../outside/secret.png": "sub/../../outside/secret.png: path escapes the image root",
        f"{outside}/secret.png": f"{outside}/secret.png: absolute path; task paths are relative to the image root",
        "missing.png": "missing.png: file not found",
        "sub": f"{root}/sub: not a regular file",
        "fifo.png": f"{root}/fifo.png: not a regular file",
        "zero.png": "zero.png: path escapes the image root",
        LONG_NAME: f"{LONG_NAME}: cannot resolve path ({os.strerror(errno.ENAMETOOLONG)})",
    }
    outcomes = {("good_ref.png", cand): ("error", error) for cand, error in against_ref.items()}
    outcomes |= {("good_ref.png", cand): ("done", None) for cand in DONE}
    outcomes[("escape.png", "good_cand.png")] = ("error", "escape.png: path escapes the image root")
    nan_ref = f"{root}/nan.tif: float image contains NaN or infinite pixel values"
    outcomes[("nan.tif", "good_cand.png")] = ("error", nan_ref)
    both_mismatched = (
        f"{root}/mismatch_ref.png (64x48) and {root}/mismatch_cand.png (32x32): sizes differ; "
        "pass --resize ref|cand to resize"
    )
    outcomes[("mismatch_ref.png", "mismatch_cand.png")] = ("error", both_mismatched)
    return outcomes


class Planted:
    """Unpickling this runs a shell command: proof, if its marker file appears, that pickle was read."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# (task id, kwargs, args, the rejection logged), sent through Celery's own client: a valid envelope, arguments off
# the contract.
MALFORMED_ARGUMENTS = [
    ("missing-kwargs", {}, (), "kwargs must be exactly {'comparison_ids': [...]}, got keys []"),
    ("wrong-key", {"ids": [1]}, (), "kwargs must be exactly {'comparison_ids': [...]}, got keys ['ids']"),
    (
        "extra-kwarg",
        {"comparison_ids": [1], "net": "vgg"},
        (),
        "kwargs must be exactly {'comparison_ids': [...]}, got keys ['comparison_ids', 'net']",
    ),
    ("extra-args", {"comparison_ids": [1]}, (1,), "positional arguments are not part of the contract, got 1"),
    ("ids-a-string", {"comparison_ids": "1"}, (), "comparison_ids: expected a non-empty list of ints, got '1'"),
    ("ids-a-dict", {"comparison_ids": {"1": 1}}, (), "comparison_ids: expected a non-empty list of ints, got {'1': 1}"),
    ("ids-empty", {"comparison_ids": []}, (), "comparison_ids: expected a non-empty list of ints, got []"),
    ("id-a-float", {"comparison_ids": [1.5]}, (), "comparison_ids: expected positive ints, got 1.5"),
    ("id-a-bool", {"comparison_ids": [True]}, (), "comparison_ids: expected positive ints, got True"),
    ("id-null", {"comparison_ids": [1, None]}, (), "comparison_ids: expected positive ints, got None"),
    ("id-negative", {"comparison_ids": [-1]}, (), "comparison_ids: expected positive ints, got -1"),
    ("id-zero", {"comparison_ids": [0]}, (), "comparison_ids: expected positive ints, got 0"),
    (
        "100k-ids",
        {"comparison_ids": list(range(1, 100_001))},
        (),
        "comparison_ids: at most 1000 per message, got 100000",
    ),
    (
        "4MB-kwarg",
        {"comparison_ids": [1], "padding": "x" * 4_000_000},
        (),
        "kwargs must be exactly {'comparison_ids': [...]}, got keys ['comparison_ids', 'padding']",
    ),
    (
        "3MB-id",
        {"comparison_ids": ["9" * 3_000_000]},
        (),
        f"comparison_ids: expected positive ints, got '{'9' * 76}...",
    ),
]


def send_malformed(broker_url: str, database_url: str, marker) -> None:
    """Envelopes first (straight onto the queue, as Celery's protocol 2 frames them), then arguments."""
    pickled = pickle.dumps(((), {"comparison_ids": [1]}, {"planted": Planted(marker)}))
    queue = store_queue_at(database_url)
    publish_raw(broker_url, queue, b"not json{", task_id="not-json")
    publish_raw(broker_url, queue, pickled, task_id="pickle",
                content_type="application/x-python-serialize", content_encoding="binary")
    publish_raw(broker_url, queue, b'"a string"', task_id="body-a-string")
    publish_raw(broker_url, queue, b"[[], {}]", task_id="body-two-items")
    publish_raw(broker_url, queue, b'{"comparison_ids": [1]}', task_id="body-an-object")
    publish_raw(broker_url, queue, b'[[], {"comparison_ids": [1]}, {}]', task_id=None)
    for task_id, limits in (("timelimit-a-string", "x"), ("timelimit-of-strings", ["a", "b"])):
        body = b'[[], {"comparison_ids": [1]}, {}]'
        publish_raw(broker_url, queue, body, task_id=task_id, extra_headers={"timelimit": limits})
    publish_raw(broker_url, queue, b'[[], {"comparison_ids": [1]}, {}]', task_id="t", task_name="lpips_gate.evil")
    app = producer(broker_url, database_url)
    for task_id, kwargs, args, _ in MALFORMED_ARGUMENTS:
        app.send_task(TASK_COMPARE, args=args, kwargs=kwargs, queue=queue, task_id=task_id)


ENVELOPE_REJECTIONS = [
    ("body-a-string", "body must be [args, kwargs, embed], got 'a string'"),
    ("body-two-items", "body must be [args, kwargs, embed], got [[], {}]"),
    ("body-an-object", "body must be [args, kwargs, embed], got {'comparison_ids': [1]}"),
    (None, "headers: id must be a string, got None"),
    ("timelimit-a-string", "headers: timelimit must be [hard, soft] seconds or null, got 'x'"),
    ("timelimit-of-strings", "headers: timelimit must be [hard, soft] seconds or null, got ['a', 'b']"),
]
REFUSED_BY_CELERY = ("not-json", "pickle", "t")  # before our code sees them: not JSON, pickle, an unknown task name


def consumer_refusals(worker) -> list[dict]:
    """The messages Celery's consumer refused, as its log lines: their words are Celery's, so only the
    lines themselves are counted."""
    return [e for e in worker.lines()
            if e.get("logger") == "celery.worker.consumer.consumer" and e["level"] in ("error", "critical")]


def test_bad_input_ends_as_recorded_errors_or_rejections(pg_url, weights_dir, tmp_path, servers, workers):
    redis = servers(PrivateRedis)
    corpus = make_corpus(tmp_path / "corpus")
    root, outside = corpus["root"].resolve(), corpus["outside"].resolve()
    os.mkfifo(root / "fifo.png")
    (root / "zero.png").symlink_to("/dev/zero")
    marker = tmp_path / "unpickled"
    store = StoreView(pg_url)
    worker = workers(worker_env(base_settings(pg_url, redis.url, weights_dir, root)), "worker")
    wait_for(worker.ready, "the pool process to load its model", worker)

    send_malformed(redis.url, pg_url, marker)
    expected = expected_outcomes(root, outside)
    run_id, ids = store.create_run(list(expected) + [("good_ref.png", cand) for cand in TRUNCATED], suite="corpus")
    enqueue(producer(redis.url, pg_url), ids, per_message=4)
    good_run, good_ids = store.create_run(write_pairs(root, 4, prefix="after"), suite="after")
    enqueue(producer(redis.url, pg_url), good_ids, per_message=4)
    wait_for(lambda: store.finished(run_id, good_run), "both runs to finish", worker)

    outcomes = {(r.ref, r.cand): (r.status, r.error) for r in store.rows(run_id)}
    truncated = {cand: outcomes.pop(("good_ref.png", cand)) for cand in TRUNCATED}
    assert outcomes == expected
    assert {cand: (status, bool(truncated_error(root / cand).fullmatch(error)))
            for cand, (status, error) in truncated.items()} == dict.fromkeys(TRUNCATED, ("error", True))
    assert {r.id: r.attempts for r in store.rows(run_id)} == dict.fromkeys(ids, 1)  # bad input is final at once
    assert [(r.status, r.attempts) for r in store.rows(good_run)] == [("done", 1)] * 4
    rejected = [(e["task_id"], e["error"]) for e in worker.events("malformed message rejected")]
    assert rejected == ENVELOPE_REJECTIONS + [(task_id, error) for task_id, _, _, error in MALFORMED_ARGUMENTS]
    assert len(consumer_refusals(worker)) == len(REFUSED_BY_CELERY) + len(ENVELOPE_REJECTIONS)
    assert not marker.exists()  # the pickle was never read
    assert worker.alive and len(worker.pool_names()) == 1  # no crash, no replaced pool process
    store.dispose()
