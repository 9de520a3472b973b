"""What keeps a fleet of workers honest, whatever the broker: a `Keeper` thread per process writes the
heartbeat (store and `settings.heartbeat_file`) and runs the `Sweeper`: comparisons of workers that
stopped heartbeating go back to the queue, and queued comparisons whose message was lost (a broker
restart) are sent again, so no work waits for the broker's visibility timeout. Duplicate messages are
harmless: claiming is atomic. The broker's side (sending, what is in a message, a fleet-wide lock)
comes in as callables from the adapter (worker/celery_app.py)."""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from gate.logs import get_logger
from gate.settings import Settings
from gate.store import repository as repo
from worker.processor import Processor, Store

STALE_BATCH = 10_000  # queued comparisons re-sent per sweep at most

log = get_logger("lpips_gate.worker")


class Keeper:
    """A daemon thread: `beat` every `interval_s`, `sweep` at start and every `sweep_every_s`.
    A failing call is logged and tried again on the next turn; it never stops the thread."""

    def __init__(
        self,
        *,
        interval_s: float,
        beat: Callable[[], None],
        sweep: Callable[[], None] | None = None,
        sweep_every_s: float | None = None,
    ):
        self.interval_s, self.beat, self.sweep, self.sweep_every_s = interval_s, beat, sweep, sweep_every_s
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the ids bound so far (the worker's name) label its log lines
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="lpips-keeper", daemon=True)

    def start(self) -> Keeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        next_sweep = time.monotonic()
        while True:
            self._safely(self.beat, "heartbeat")
            if self.sweep is not None and time.monotonic() >= next_sweep:
                self._safely(self.sweep, "sweep")
                assert self.sweep_every_s is not None, "a sweep needs sweep_every_s"
                next_sweep = time.monotonic() + self.sweep_every_s
            if self._stop.wait(self.interval_s):
                return

    @staticmethod
    def _safely(call: Callable[[], None], what: str) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001  (a store or broker outage; next turn tries again)
            log.warning(f"{what} failed", error=f"{type(exc).__name__}: {exc}")


def heartbeat_interval_s(settings: Settings) -> float:
    """Several beats per `orphan_after`, so one late beat never makes a live worker look dead."""
    return max(0.5, min(5.0, settings.orphan_after / 6))


def sweep_period_s(settings: Settings) -> float:
    """Twice per `orphan_after`: an orphan waits at most that long and a half to be re-sent."""
    return max(1.0, settings.orphan_after / 2)


def beat(store: Store, name: str, heartbeat_file: Path | None = None) -> Callable[[], None]:
    def once() -> None:
        if heartbeat_file is not None:  # liveness: this process's loop runs, whatever the store does
            heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
            heartbeat_file.touch()
        store.run(
            lambda session: repo.heartbeat(session, worker=name, hostname=socket.gethostname(), pid=os.getpid()),
            what="heartbeat",
            retry=False,
        )

    return once


class Sweeper:
    """Re-sends work that would otherwise wait: orphans of dead workers, leftovers of this process, and
    queued comparisons whose message is gone. `send(ids)` puts ids on the queue; `in_flight()` names the
    ids already in a message (None where the broker cannot tell: then every long-queued one is re-sent,
    as duplicates are harmless); `lock()` says whether this sweeper has the period to itself across the
    fleet, since every one of them would send the same ids."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        processor: Processor,
        send: Callable[[list[int]], None],
        in_flight: Callable[[], set[int]] | None = None,
        lock: Callable[[], bool] = lambda: True,
    ):
        self.settings, self.store, self.processor = settings, store, processor
        self.send, self.in_flight, self.lock = send, in_flight, lock

    def __call__(self) -> None:
        if not self.lock():
            return
        older_than = timedelta(seconds=self.settings.orphan_after)
        orphans = self.store.run(
            lambda session: repo.requeue_orphans(session, older_than=older_than), what="requeue_orphans", retry=False
        )
        resend = orphans + self.processor.release_leftovers()
        stale = self.store.run(
            lambda session: repo.stale_queued(session, older_than=older_than, limit=STALE_BATCH),
            what="stale_queued",
            retry=False,
        )
        if self.in_flight is not None:  # a long backlog is not lost work: only ids in no message are
            stale = sorted(set(stale) - self.in_flight())
        resend = sorted(set(resend) | set(stale))
        if resend:
            self.send(resend)
            log.info("re-sent comparisons", orphans=len(orphans), total=len(resend))
