"""A byte-bounded LRU of reference features: one reference compared with many candidates runs
the backbone once for it."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from worker.perceptual.metric import Features


class FeatureCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, Features] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Features | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, features: Features) -> None:
        size = features.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = features
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)
