"""The engine made robust for a service: transient failures are retried with backoff and jitter,
CUDA out-of-memory halves the batch, a pair that keeps failing is isolated from its batch, and a
backbone that cannot load (or yields non-finite distances) is replaced by `settings.fallback_net`.

Bad input (`ImageError`) is never retried: the engine reports it per pair and it is final. Every
`Measurement` names the backbone, weights version and precision that produced it."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gate.logs import get_logger
from worker import weights
from worker.engine import DEFAULT_SCORING, Engine, Outcome, emulated_precision
from worker.masks import Scoring

Pair = tuple[Path, Path]
TimeUp = tuple[type[BaseException], ...]
RELOAD_AFTER_S = 60.0  # a backbone that failed to load is tried again after this long
COUNTERS = ("retries", "oom_halvings", "fallbacks")

log = get_logger("lpips_gate.worker")


@dataclass
class Counters:
    """Process-wide event counts; `listener(name, n)` forwards each increment (to metrics)."""

    retries: int = 0
    oom_halvings: int = 0
    fallbacks: int = 0
    listener: Callable[[str, int], None] | None = None

    def add(self, name: str, n: int = 1) -> None:
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}; one of {COUNTERS}")
        setattr(self, name, getattr(self, name) + n)
        if self.listener is not None:
            self.listener(name, n)


@dataclass
class Measurement(Outcome):
    """One pair's outcome and what produced it (backbone, weights version, precision). `final` errors
    are bad input, the others may succeed on a later attempt."""

    final: bool = True
    net: str | None = None
    weights_version: str | None = None
    precision: str | None = None

    @classmethod
    def of(cls, outcome: Outcome, *, net: str, weights_version: str, precision: str) -> Measurement:
        """The outcome's fields, by name, with the engine's provenance."""
        copied = {f.name: getattr(outcome, f.name) for f in fields(Outcome)}
        return cls(**copied, net=net, weights_version=weights_version, precision=precision)

    @property
    def finite(self) -> bool:
        return self.distance is not None and math.isfinite(self.distance)


def transient_error(pair: Pair, reason: str) -> Measurement:
    return Measurement(ref=str(pair[0]), cand=str(pair[1]), error=reason, final=False)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class Extractor:
    """One engine, robust: `measure` yields a Measurement per pair, in input order, whatever fails.
    `time_up`: the exception types that say the task's time is up (a soft time limit); they pass
    through untouched, never retried as a failure of the pass."""

    def __init__(
        self,
        engine: Engine,
        *,
        tries: int,
        base_s: float,
        counters: Counters,
        time_up: TimeUp = (),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        if tries < 1:
            raise ValueError(f"tries must be >= 1, got {tries}")
        if base_s < 0:
            raise ValueError(f"base_s must be >= 0, got {base_s}")
        self.engine, self.tries, self.base_s, self.counters = engine, tries, base_s, counters
        self.time_up = time_up
        self._sleep, self._rng = sleep, rng or random.Random()

    @property
    def net(self) -> str:
        return self.engine.model.net

    def measure(self, pairs: Sequence[Pair], *, with_map: bool = False,
                scoring: Scoring = DEFAULT_SCORING) -> Iterator[Measurement]:
        """OOM halvings last for this call only: the next call starts at the configured batch again."""
        configured = self.engine.max_batch
        try:
            yield from self._measure(list(pairs), with_map, scoring)
        finally:
            self.engine.max_batch, self.engine.packing = configured, True

    def _measure(self, pairs: list[Pair], with_map: bool, scoring: Scoring) -> Iterator[Measurement]:
        done, tries = 0, 0
        while done < len(pairs):
            rest = pairs[done:]
            try:
                for outcome in self.engine.compare_files(rest, with_map=with_map, scoring=scoring):
                    done, tries = done + 1, 0
                    yield self._measurement(outcome)
            except self.time_up:
                raise  # the task's time is up, not a failure of this pass: its caller hands the pairs back
            except Exception as exc:  # noqa: BLE001  (bad input never gets here: the engine reports it per pair)
                if is_oom(exc) and self.engine.last_pass > 1:
                    self._halve()
                    continue
                tries += 1
                if tries < self.tries:
                    self.counters.add("retries")
                    self._sleep(self.backoff(tries))
                    continue
                window = rest[: self.engine.window_at(rest, 0)]  # the failure is in the window being computed
                yield from self._isolate(window, with_map, scoring, f"{type(exc).__name__}: {exc}")
                done, tries = done + len(window), 0

    def _isolate(self, window: list[Pair], with_map: bool, scoring: Scoring, reason: str) -> Iterator[Measurement]:
        """Bisect a failing window so its good pairs still succeed and only the bad ones are handed back."""
        if len(window) == 1:
            yield transient_error(window[0], f"transient failure after {self.tries} tries: {reason}")
            return
        half = len(window) // 2
        yield from self._measure(window[:half], with_map, scoring)
        yield from self._measure(window[half:], with_map, scoring)

    def _halve(self) -> None:
        """Passes of at most half the one that failed, small frames no longer packed."""
        self.engine.max_batch = max(1, self.engine.last_pass // 2)
        self.engine.packing = False
        self.counters.add("oom_halvings")
        if self.engine.device.type == "cuda":
            torch.cuda.empty_cache()

    def backoff(self, tries: int) -> float:
        """Exponential in the number of tries so far, jittered to between half and all of it."""
        return self.base_s * 2 ** (tries - 1) * (0.5 + 0.5 * self._rng.random())

    def _measurement(self, outcome: Outcome) -> Measurement:
        model = self.engine.model
        return Measurement.of(
            outcome, net=model.net, weights_version=self.engine.weights_version, precision=model.precision
        )


EngineFactory = Callable[..., Engine]
_engine_factory: EngineFactory = Engine.from_settings


def use_engine_factory(factory: EngineFactory) -> EngineFactory:
    """Have every `Models` of this process (and the pool processes it forks) build its engines with
    `factory`, called as `Engine.from_settings` is: (settings, *, net, version, precision, device).
    The seam for wrapping or instrumenting the engine (the tests' fault injection); returns the
    factory it replaces, so a caller can put it back."""
    global _engine_factory
    previous, _engine_factory = _engine_factory, factory
    return previous


def build_engine(settings, **options) -> Engine:
    """An engine from this process's factory (`Engine.from_settings` unless replaced)."""
    return _engine_factory(settings, **options)


class Models:
    """Extractors per (net, version, precision), loaded once per process; `measure` falls back to
    `settings.fallback_net` when the asked backbone cannot load or gives a non-finite distance.
    `time_up` goes to every extractor."""

    def __init__(
        self,
        settings,
        *,
        counters: Counters | None = None,
        device: str | None = None,
        precision: str | None = None,
        time_up: TimeUp = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings, self.counters = settings, counters or Counters()
        self.device, self.precision = device, precision  # None: settings' device, the run's precision
        self._loaded: dict[tuple[str, str, str], Extractor] = {}
        self._failed: dict[tuple[str, str, str], tuple[float, Exception]] = {}
        self._clock = clock
        self.time_up = time_up

    def preload(self) -> Extractor:
        """The primary backbone, or the fallback where the primary cannot load."""
        return self.primary_or_fallback(self.settings.net, self.settings.version, self.settings.precision)[0]

    def get(self, net: str, version: str, precision: str) -> Extractor:
        """A loaded extractor, or the (remembered, for a while) reason it cannot load."""
        key = (net, version, self.precision or precision)
        if key in self._loaded:
            return self._loaded[key]
        failed = self._failed.get(key)
        if failed and self._clock() - failed[0] < RELOAD_AFTER_S:
            raise failed[1]
        try:
            self._loaded[key] = self._load(*key)
        except (weights.WeightsError, ValueError, OSError) as exc:
            self._failed[key] = (self._clock(), exc)
            raise
        return self._loaded[key]

    def _load(self, net: str, version: str, precision: str) -> Extractor:
        engine = build_engine(self.settings, net=net, version=version, precision=precision, device=self.device)
        slow = emulated_precision(precision, engine.device)
        if slow:
            log.warning("slow precision", reason=slow)
        return Extractor(
            engine,
            tries=self.settings.retry_tries,
            base_s=self.settings.retry_base_s,
            counters=self.counters,
            time_up=self.time_up,
        )

    def primary_or_fallback(self, net: str, version: str, precision: str) -> tuple[Extractor, _Lazy | None]:
        """(the extractor to use, the fallback for non-finite results or None)."""
        fallback_net = self.settings.fallback_net
        try:
            primary = self.get(net, version, precision)
        except (weights.WeightsError, ValueError, OSError) as exc:
            if fallback_net is None or fallback_net == net:
                raise
            try:
                return self.get(fallback_net, version, precision), None
            except (weights.WeightsError, ValueError, OSError) as second:
                raise weights.WeightsError(f"{net}: {exc}; fallback {fallback_net}: {second}") from second
        return primary, (None if fallback_net in (None, net) else _Lazy(self, fallback_net, version, precision))

    def measure(
        self, pairs: Sequence[Pair], *, net: str, version: str, precision: str, with_map: bool = False,
        scoring: Scoring = DEFAULT_SCORING,
    ) -> Iterator[Measurement]:
        """A Measurement per pair in input order; without any usable backbone every pair gets a
        non-final error (the weights may be provisioned before the next attempt)."""
        try:
            extractor, fallback = self.primary_or_fallback(net, version, precision)
        except (weights.WeightsError, ValueError, OSError) as exc:
            yield from (transient_error(pair, f"no backbone could be loaded: {exc}") for pair in pairs)
            return
        if extractor.net != net:
            self.counters.add("fallbacks", len(pairs))
        for pair, measurement in zip(pairs, extractor.measure(pairs, with_map=with_map, scoring=scoring)):
            if measurement.error is None and not measurement.finite and fallback is not None:
                measurement = fallback.redo(pair, with_map, scoring) or measurement
            yield measurement


@dataclass
class _Lazy:
    """The fallback backbone, loaded only when a non-finite distance asks for it."""

    models: Models
    net: str
    version: str
    precision: str

    def redo(self, pair: Pair, with_map: bool, scoring: Scoring) -> Measurement | None:
        """The fallback's finite result for `pair`, or None (keep the primary's)."""
        try:
            extractor = self.models.get(self.net, self.version, self.precision)
        except (weights.WeightsError, ValueError, OSError):
            return None
        again = next(iter(extractor.measure([pair], with_map=with_map, scoring=scoring)))
        if again.error is not None or not again.finite:
            return None
        self.models.counters.add("fallbacks")
        return again
