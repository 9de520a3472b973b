"""Fault injection for the tests, through production's engine seam: `worker.runtime.use_engine_factory`
installs `Faults.build_engine`, which builds the real engine and hooks its forward passes
(`Engine.before_batch`). Workers started as subprocesses get theirs from FAULTS_ENV (see faulty_worker)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine is imported where a fault needs it: gate's unit tests load this module, torch-free
    from worker.engine import Engine

FAULTS_ENV = "LPIPS_TEST_FAULTS"  # JSON of a Faults; deliberately outside LPIPS_GATE_*: no setting reads it


@dataclass(frozen=True)
class Faults:
    """What goes wrong; the primary backbone is the settings' `net`."""

    oom_above_batch: int | None = None  # a forward pass of more pairs than this raises CUDA OOM
    broken_primary: bool = False  # loading the primary backbone fails as if its weights were bad
    poison_suffix: str | None = None  # a pair whose cand ends with this fails transiently, every time
    nonfinite_primary: bool = False  # the primary backbone's distances come out NaN
    slow_suffix: str | None = None  # a forward pass holding a cand that ends with this sleeps slow_s first
    slow_s: float = 5.0
    random_weights: bool = False  # untrained backbones: for tests whose distances do not matter

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults | None:
        text = environ.get(FAULTS_ENV)
        return None if text is None else cls(**json.loads(text))

    def build_engine(self, settings, **options) -> Engine:
        """`Engine.from_settings` with these faults: the engine factory for `use_engine_factory`."""
        from worker import weights
        from worker.engine import Engine

        net = options.get("net") or settings.net
        primary = net == settings.net
        if self.broken_primary and primary:
            raise weights.WeightsError(f"injected: the weights of {net!r} are unusable (fault_broken_primary)")
        engine = Engine.from_settings(settings, random_weights=self.random_weights, **options)
        engine.before_batch = self.check_batch
        if self.nonfinite_primary and primary and engine.model.heads is not None:
            for parameter in engine.model.heads.parameters():
                parameter.fill_(math.nan)  # every layer's weighted difference, so every distance, is NaN
        return engine

    def check_batch(self, cands: list[str]) -> None:
        if self.oom_above_batch is not None and len(cands) > self.oom_above_batch:
            import torch

            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected: a forward pass of {len(cands)} pairs > "
                f"fault_oom_above_batch={self.oom_above_batch})"
            )
        if self.slow_suffix and any(c.endswith(self.slow_suffix) for c in cands):
            time.sleep(self.slow_s)
        poisoned = [c for c in cands if self.poison_suffix and c.endswith(self.poison_suffix)]
        if poisoned:
            raise RuntimeError(f"injected transient fault: {poisoned[0]} ends with {self.poison_suffix!r}")


@contextmanager
def injected(faults: Faults) -> Iterator[None]:
    """Every engine this process builds meanwhile has `faults`; the previous factory is put back after."""
    from worker import runtime

    previous = runtime.use_engine_factory(faults.build_engine)
    try:
        yield
    finally:
        runtime.use_engine_factory(previous)
