"""In-process regression tests for the defects the reliability scenarios found, fast enough to
pin each one down exactly (the scenarios show the same through real workers).

- A soft time limit was taken for a transient failure of the forward pass and retried, so the task
  ran on until the hard limit killed its pool process.
- Handed back after an interruption, a batch went back as one message, so its good pairs failed
  with the slow one until max_attempts ended them all.
- Celery crashed (or reconnected forever) on a message whose envelope it cannot read."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from billiard.exceptions import SoftTimeLimitExceeded

from gate.settings import Settings
from gate.store import repository as repo
from gate.store import session_scope
from tests.integration.services import write_pairs
from tests.support.faults import Faults, injected
from worker.celery_app import TIME_UP, envelope_error
from worker.processor import Processor, Store
from worker.runtime import Counters, Models

SLOW = ".slow.png"
INTERRUPTED = "interrupted: SoftTimeLimitExceeded: SoftTimeLimitExceeded()"


@contextmanager
def soft_time_limit(seconds: float):
    """What billiard does in a pool process: SIGALRM-like delivery of SoftTimeLimitExceeded."""

    def raise_limit(_signum, _frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, raise_limit)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def slow_settings(tmp_path) -> Iterator[Settings]:
    """Random weights (distances do not matter here) and a pair that sleeps far past any limit."""
    with injected(Faults(random_weights=True, slow_suffix=SLOW, slow_s=30)):
        yield Settings(device="cpu", image_root=tmp_path, max_batch=4, retry_tries=3, retry_base_s=0.0)


def test_a_soft_time_limit_is_not_retried_as_a_transient_failure(tmp_path, slow_settings):
    (pair,) = write_pairs(tmp_path, 1, poison=(0,), poison_suffix=SLOW)
    counters = Counters()
    models = Models(slow_settings, counters=counters, time_up=TIME_UP)
    models.preload()
    with pytest.raises(SoftTimeLimitExceeded), soft_time_limit(0.3):
        list(models.measure([(tmp_path / pair[0], tmp_path / pair[1])], net="alex", version="0.1", precision="fp32"))
    assert counters.retries == 0


def test_an_interrupted_batch_goes_back_one_pair_per_message(tmp_path, slow_settings, sqlite_url):
    pairs = write_pairs(tmp_path, 3) + write_pairs(
        tmp_path, 1, prefix="s", first_seed=9, poison=(0,), poison_suffix=SLOW
    )
    store = Store(sqlite_url, retry_s=0)
    with session_scope(store.engine) as session:
        run = repo.create_run(session, suite_name="s", pairs=pairs, net="alex", version="0.1", precision="fp32")
        ids = [c.id for c in repo.list_comparisons(session, run_id=run.id)]
    sent: list[tuple[list[int], float]] = []
    processor = Processor(
        slow_settings.model_copy(update={"database_url": sqlite_url}),
        store=store,
        models=Models(slow_settings, time_up=TIME_UP),
        name="test:1",
        requeue=lambda chunk, delay_s: sent.append((chunk, delay_s)),
    )
    processor.models.preload()
    # the limit lands in the slow pair's 30 s forward pass, well after the claim even on a loaded machine
    with pytest.raises(SoftTimeLimitExceeded), soft_time_limit(3.0):
        processor.process(ids)
    with session_scope(store.engine) as session:
        rows = repo.list_comparisons(session, run_id=run.id)
    assert {r.id: (r.status, r.attempts, r.error) for r in rows} == {i: ("queued", 1, INTERRUPTED) for i in ids}
    assert sent == [([i], processor.requeue_delay_s) for i in ids]
    store.dispose()


BODY = [[], {"comparison_ids": [1]}, {}]


@pytest.mark.parametrize(
    ("headers", "body", "error"),
    [
        ({"id": "t"}, BODY, None),
        ({"id": "t", "timelimit": [None, None]}, [[], {}, None], None),
        ({"id": "t", "timelimit": [60, 30.5]}, BODY, None),
        ({}, BODY, "headers: id must be a string, got None"),
        ({"id": 7}, BODY, "headers: id must be a string, got 7"),
        (None, BODY, "headers: id must be a string, got None"),
        ({"id": "t", "timelimit": "x"}, BODY, "headers: timelimit must be [hard, soft] seconds or null, got 'x'"),
        (
            {"id": "t", "timelimit": [1, 2, 3]},
            BODY,
            "headers: timelimit must be [hard, soft] seconds or null, got [1, 2, 3]",
        ),
        (
            {"id": "t", "timelimit": [-1, None]},
            BODY,
            "headers: timelimit must be [hard, soft] seconds or null, got [-1, None]",
        ),
        ({"id": "t"}, "a string", "body must be [args, kwargs, embed], got 'a string'"),
        ({"id": "t"}, None, "body must be [args, kwargs, embed], got None"),
        ({"id": "t"}, [1, 2], "body must be [args, kwargs, embed], got [1, 2]"),
        ({"id": "t"}, {"x": 1}, "body must be [args, kwargs, embed], got {'x': 1}"),
        ({"id": "t"}, [[], [1], {}], "body must be [args, kwargs, embed], got [[], [1], {}]"),
        ({"id": "t"}, [[], {}, "x"], "body must be [args, kwargs, embed], got [[], {}, 'x']"),
        ({"id": "t"}, [{}, {}, {}], "body must be [args, kwargs, embed], got [{}, {}, {}]"),
        ({"id": "t"}, "x" * 100, f"body must be [args, kwargs, embed], got '{'x' * 76}..."),
    ],
)
def test_envelopes_celery_cannot_read_are_named(headers, body, error):
    assert envelope_error(headers, body) == error
